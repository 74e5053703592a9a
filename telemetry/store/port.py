"""The storage port: what the worker, the read API, health and the demo need from storage.

Each caller depends on one of these Protocols, never on the MongoDB classes
that implement them (``MongoTelemetryStore``, ``MongoTelemetryReader``), so a
test or another backend can stand in. Every method raises only the
collector's own errors: :class:`~telemetry.errors.StorageUnavailable` (a
retry may work) or :class:`~telemetry.errors.StorageRejected` (it will not).
``tests/contract/`` holds the one suite every implementation passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

from telemetry.store.mongo import GpuUpdate, InsertOutcome, RejectedMessage

Aggregation = Literal["avg", "min", "max", "last"]
GpuDocument = dict[str, Any]
"""A ``gpus`` record as docs/storage.md describes it, ``mig_instances`` keyed by instance id."""


class PointWindow(NamedTuple):
    """Which points of one GPU a read selects; both ends of the time window included."""

    gpu_uuid: str
    metric_names: tuple[str, ...] = ()
    gpu_instance: str | None = None
    start: datetime | None = None
    end: datetime | None = None


class PageAfter(NamedTuple):
    """The key a page continues strictly after; ``gpu_instance`` is ``""`` for the whole GPU."""

    timestamp: datetime
    metric_name: str
    gpu_instance: str


class StoredPoint(NamedTuple):
    """One point as a page of raw points returns it."""

    metric_name: str
    gpu_instance: str | None
    value: float
    timestamp: datetime
    labels: Any


class Bucket(NamedTuple):
    """One series' summary of ``points`` over ``[start_ms, start_ms + step)``, ms since epoch."""

    metric_name: str
    gpu_instance: str | None
    start_ms: int
    value: float
    points: int


class LatestValue(NamedTuple):
    """The newest value of one series (a metric of the whole GPU or of one MIG instance)."""

    metric_name: str
    gpu_instance: str | None
    value: float
    timestamp: datetime


class StorageProbe(Protocol):
    """What a readiness check needs: an answer now, or the reason why not."""

    def ping(self) -> None:
        """Return when the database answers; raise StorageUnavailable saying why not."""

    def close(self) -> None:
        """Release the connections."""


class TelemetryWrites(Protocol):
    """What the worker's one write path needs: its collections, and three bulk writes."""

    def ensure_indexes(self) -> None:
        """Create collections and indexes if missing; safe to repeat from any worker."""

    def upsert_gpus(self, updates: Sequence[GpuUpdate], now: datetime) -> None:
        """Apply GPU upserts: fields set, ``first_seen``/``last_seen`` only widened."""

    def insert_points(self, documents: Sequence[dict[str, Any]]) -> list[InsertOutcome]:
        """Insert point documents; one outcome each, a point already stored is a duplicate."""

    def record_rejected(self, rejections: Sequence[RejectedMessage]) -> None:
        """Keep invalid messages where an operator can see them."""

    def close(self) -> None:
        """Release the connections."""


class TelemetryReads(StorageProbe, Protocol):
    """What the read API and the demo's summary need: pages, counts and latest values."""

    def gpu_page(
        self, hostname: str | None, model_name: str | None, after: str | None, limit: int
    ) -> list[GpuDocument]:
        """Up to ``limit`` GPUs by UUID, strictly after ``after``, matching the filters."""

    def count_gpus(self, hostname: str | None, model_name: str | None) -> int:
        """How many GPUs match the filters."""

    def find_gpu(self, uuid: str) -> GpuDocument | None:
        """One GPU's record, or None."""

    def gpu_exists(self, uuid: str) -> bool:
        """Whether a GPU's record exists, reading no more than its key."""

    def latest_values(self, uuid: str) -> list[LatestValue]:
        """The newest value of each series of a GPU, by metric then instance (whole GPU first)."""

    def point_page(
        self, window: PointWindow, after: PageAfter | None, limit: int
    ) -> list[StoredPoint]:
        """Up to ``limit`` points in (timestamp, metric_name, gpu_instance) order."""

    def bucket_page(
        self,
        window: PointWindow,
        step_ms: int,
        agg: Aggregation,
        after: PageAfter | None,
        limit: int,
    ) -> list[Bucket]:
        """Up to ``limit`` buckets of ``step_ms``, in (start, metric_name, gpu_instance) order."""

    def count_points_since(self, ingested_since: datetime) -> int:
        """How many points were written at or after ``ingested_since``."""
