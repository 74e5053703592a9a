"""Ingest logic: validate one message and store it. Knows nothing of Celery.

Counting happens here, so the task, the embedded demo and the tests all see
the same numbers for the same outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from telemetry import metrics
from telemetry.errors import InvalidMessage
from telemetry.gpucache import GpuCache
from telemetry.models import parse_message
from telemetry.stats import Stats
from telemetry.storage import MongoTelemetryStore

logger = logging.getLogger("telemetry.ingest")

OutcomeKind = Literal["stored", "duplicate", "rejected"]


@dataclass(frozen=True)
class Outcome:
    """What became of one message; ``reason`` says why it was rejected."""

    kind: OutcomeKind
    reason: str | None = None

    def describe(self) -> str:
        """A short text for task results (what Flower shows)."""
        return self.kind if self.reason is None else f"{self.kind}: {self.reason}"


def split_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    """Take ``point`` and ``metadata`` from a task's arguments, by keyword or position."""
    unknown = set(kwargs) - {"point", "metadata"}
    if unknown:
        raise InvalidMessage(f"unexpected task arguments: {sorted(unknown)}")
    if len(args) > 2:
        raise InvalidMessage(f"expected at most 2 positional arguments, got {len(args)}")
    values = dict(zip(("point", "metadata"), args, strict=False))
    overlap = set(values) & set(kwargs)
    if overlap:
        raise InvalidMessage(f"arguments given twice: {sorted(overlap)}")
    values.update(kwargs)
    if "point" not in values:
        raise InvalidMessage("point: is required")
    return values["point"], values.get("metadata")


def ingest_message(
    store: MongoTelemetryStore,
    stats: Stats,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    message_id: str | None,
    gpu_cache: GpuCache | None = None,
) -> Outcome:
    """Validate and store one message.

    Raises :class:`~telemetry.errors.StorageUnavailable` or
    :class:`~telemetry.errors.StorageRejected` when storage fails; the caller
    decides between retry and dead letter. Invalid messages are not raised:
    they are recorded, counted and returned as ``rejected``. With a
    ``gpu_cache``, GPU upserts that would change nothing are skipped.
    """
    try:
        point_raw, metadata_raw = split_arguments(args, kwargs)
        point, metadata = parse_message(point_raw, metadata_raw)
    except InvalidMessage as exc:
        reject_message(store, stats, str(exc), message_id, {"args": args, "kwargs": kwargs})
        return Outcome("rejected", str(exc))

    now = datetime.now(UTC)
    # GPU first: if the point insert then fails, the retry repeats only an
    # idempotent upsert, and a later duplicate count means a real redelivery.
    with metrics.db_write_timer(batch_size=1):
        if gpu_cache is None or gpu_cache.needs_write(point, metadata):
            store.upsert_gpu(point, metadata, now)
            stats.incr("gpus_stored")
            if gpu_cache is not None:
                gpu_cache.remember(point, metadata)
        inserted = store.insert_point(point, metadata, now)
    if inserted:
        metrics.observe_latency(metrics.seconds_since(point.timestamp))
        stats.incr("telemetry_stored", "messages_processed")
        return Outcome("stored")
    stats.incr("duplicates", "messages_processed")
    return Outcome("duplicate")


def reject_message(
    store: MongoTelemetryStore, stats: Stats, reason: str, message_id: str | None, raw: Any
) -> None:
    """Record, count and log one invalid message (raises only if storage fails)."""
    store.record_rejected(reason, message_id, raw)
    stats.incr("messages_errors", "messages_processed")
    metrics.count_error(reason)
    logger.warning("Rejected invalid message %s: %s", message_id, reason)
