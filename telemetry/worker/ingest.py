"""The one write path: validate a batch of task messages and store it. Knows nothing of Celery.

A single message is a batch of one. :func:`ingest` takes the decoded
messages and returns one :class:`Outcome` per message, in order:

* ``stored`` or ``duplicate``: the point is durable (a redelivery of a stored
  point is a duplicate, counted, never stored twice);
* ``rejected``: the message is invalid; it was recorded in ``rejected`` and
  counted, and retrying cannot help;
* ``failed``: storage failed, with the error. A :class:`StorageUnavailable`
  is worth a retry, a :class:`StorageRejected` is not. Nothing is counted
  for it: whoever retries the message counts its final outcome.

It counts nothing itself: it returns the outcomes with what the write did
(:class:`Ingested`: GPU upserts, the write's time, the stored points'
latencies), and the caller hands that to the worker's recorder
(:class:`telemetry.worker.recorder.Recorder`), so the per-task path, the
batch path and the demo count alike.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from telemetry.errors import (
    InvalidMessage,
    RejectionKind,
    StorageRejected,
    StorageUnavailable,
)
from telemetry.models import GpuMetadata, Point, parse_task_arguments
from telemetry.observe.metrics import seconds_since
from telemetry.store.gpucache import GpuCache
from telemetry.store.mongo import GpuUpdate, RejectedMessage, point_document
from telemetry.store.port import TelemetryWrites

logger = logging.getLogger("telemetry.ingest")

StorageError = StorageUnavailable | StorageRejected


class DecodedMessage(NamedTuple):
    """One task message, decoded: its id and its arguments (stage 3, see
    :mod:`telemetry.worker.celery`).

    A named tuple, the cheapest record to build: the consumer makes one per
    message (docs/performance.md).
    """

    message_id: str | None
    args: Sequence[Any]
    kwargs: Mapping[str, Any]


class OutcomeKind(enum.StrEnum):
    """What became of one message."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """What became of one message; ``reason`` and ``rejection`` say why it was rejected."""

    kind: OutcomeKind
    reason: str | None = None
    rejection: RejectionKind | None = None
    error: StorageError | None = None

    @property
    def settled(self) -> bool:
        """Whether the message reached a final outcome and may be acked."""
        return self.kind is not OutcomeKind.FAILED

    def describe(self) -> str:
        """A short text for task results (what Flower shows)."""
        kind = self.kind.value
        return kind if self.reason is None else f"{kind}: {self.reason}"


STORED = Outcome(OutcomeKind.STORED)
DUPLICATE = Outcome(OutcomeKind.DUPLICATE)


@dataclass
class Ingested:
    """What one call of :func:`ingest` did: an outcome per message, and its writes' facts."""

    outcomes: list[Outcome]
    gpus_written: int = 0  # GPU upserts the database acknowledged
    write_s: float | None = None  # the points' write, when it succeeded
    points_written: int = 0  # how many points that write carried
    latencies_s: list[float] = field(default_factory=list)  # of the points newly stored


def ingest(
    store: TelemetryWrites,
    messages: Sequence[DecodedMessage],
    gpu_cache: GpuCache,
) -> Ingested:
    """Validate and store ``messages``; one outcome each, in order. Never raises for storage.

    Invalid messages are recorded in one write; the GPUs that need it are
    upserted in one unordered bulk write (GPUs first, so a retried point
    repeats only idempotent upserts); then the points go in one unordered
    insert. GPU upserts that ``gpu_cache`` knows would change nothing are
    skipped.
    """
    outcomes: list[Outcome | None] = [None] * len(messages)
    valid: list[tuple[int, Point, GpuMetadata]] = []
    invalid: list[tuple[int, InvalidMessage, DecodedMessage]] = []
    for index, message in enumerate(messages):
        try:
            point, metadata = parse_task_arguments(message.args, message.kwargs)
        except InvalidMessage as exc:
            invalid.append((index, exc, message))
            continue
        valid.append((index, point, metadata))

    if invalid:
        rejections = [
            RejectedMessage(
                exc.reason,
                exc.kind.value,
                message.message_id,
                {"args": message.args, "kwargs": message.kwargs},
            )
            for _, exc, message in invalid
        ]
        for (index, _, _), outcome in zip(
            invalid, record_rejections(store, rejections), strict=True
        ):
            outcomes[index] = outcome
    result = Ingested([])
    if valid:
        result = store_points(store, [(point, meta) for _, point, meta in valid], gpu_cache)
        for (index, _, _), outcome in zip(valid, result.outcomes, strict=True):
            outcomes[index] = outcome
    result.outcomes = [outcome for outcome in outcomes if outcome is not None]
    return result


def store_points(
    store: TelemetryWrites,
    points: Sequence[tuple[Point, GpuMetadata]],
    gpu_cache: GpuCache,
) -> Ingested:
    """Upsert the points' GPUs, then insert the points; one outcome per point."""
    now = datetime.now(UTC)
    updates = GpuUpdate.merge(points)
    updates = [update for update in updates if gpu_cache.needs_write(update)]
    documents = [point_document(point, metadata, now) for point, metadata in points]
    gpus_written = 0
    try:
        started = time.perf_counter()
        store.upsert_gpus(updates, now)
        gpus_written = len(updates)
        for update in updates:
            gpu_cache.remember(update)
        results = store.insert_points(documents)
        write_s = time.perf_counter() - started
    except (StorageUnavailable, StorageRejected) as exc:
        logger.warning("Writing %d points failed: %s", len(points), exc)
        return Ingested([failed(exc)] * len(points), gpus_written)

    written = datetime.now(UTC)  # one clock reading for the batch's latencies
    latencies: list[float] = []
    outcomes: list[Outcome] = []
    for (point, _), result in zip(points, results, strict=True):
        if result == "stored":
            latencies.append(seconds_since(point.timestamp, written))
            outcomes.append(STORED)
        elif result == "duplicate":
            outcomes.append(DUPLICATE)
        else:
            outcomes.append(failed(result))
    return Ingested(outcomes, gpus_written, write_s, len(points), latencies)


def failed(error: StorageError) -> Outcome:
    """The outcome of a message whose write failed with ``error``."""
    return Outcome(OutcomeKind.FAILED, error=error)


def record_rejections(
    store: TelemetryWrites, rejections: Sequence[RejectedMessage]
) -> list[Outcome]:
    """Record and log invalid messages; all ``failed`` if the record cannot be written."""
    try:
        store.record_rejected(rejections)
    except (StorageUnavailable, StorageRejected) as exc:
        logger.warning("Could not record %d invalid messages: %s", len(rejections), exc)
        return [failed(exc)] * len(rejections)
    outcomes = []
    for rejection in rejections:
        logger.warning("Rejected invalid message %s: %s", rejection.message_id, rejection.reason)
        outcomes.append(
            Outcome(OutcomeKind.REJECTED, rejection.reason, RejectionKind(rejection.kind))
        )
    return outcomes


def reject_undecodable(
    store: TelemetryWrites,
    reason: str,
    kind: RejectionKind,
    message_id: str | None,
    raw: Any,
) -> Ingested:
    """Record a message that never became a task (bad body, bad shape) like any invalid one."""
    return Ingested(
        record_rejections(store, [RejectedMessage(reason, kind.value, message_id, raw)])
    )
