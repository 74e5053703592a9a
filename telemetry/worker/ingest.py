"""The one write path: validate a batch of task messages and store it. Knows nothing of Celery.

A single message is a batch of one. :func:`ingest` takes the decoded
messages and returns one :class:`Outcome` per message, in order:

* ``stored`` or ``duplicate``: the point is durable (a redelivery of a stored
  point is a duplicate, counted, never stored twice);
* ``rejected``: the message is invalid; it was recorded in ``rejected`` and
  counted, and retrying cannot help;
* ``failed``: storage failed, with the error. A :class:`StorageUnavailable`
  is worth a retry, a :class:`StorageRejected` is not. Nothing is counted
  for it here: whoever retries the message counts its final outcome.

Every outcome counter (processed, stored, duplicates, errors, GPU upserts),
the write timer and the ingest latency are recorded here and nowhere else,
so the per-task path, the batch path and the demo count alike. Messages
taken from the queue are counted where they arrive (the consumer), retries
and dead letters where Celery decides them (the task).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from telemetry.errors import (
    InvalidMessage,
    RejectionKind,
    StorageRejected,
    StorageUnavailable,
)
from telemetry.models import GpuMetadata, Point, parse_task_arguments
from telemetry.observe import metrics
from telemetry.observe.stats import Stats
from telemetry.store.gpucache import GpuCache
from telemetry.store.mongo import GpuUpdate, RejectedMessage, point_document
from telemetry.store.port import TelemetryWrites

logger = logging.getLogger("telemetry.ingest")

OutcomeKind = Literal["stored", "duplicate", "rejected", "failed"]
StorageError = StorageUnavailable | StorageRejected


class Delivery(NamedTuple):
    """One task message, decoded: its id and its arguments.

    A named tuple: the consumer makes one per message, and a frozen dataclass
    costs twice as much to build (6,200 against 3,200 instructions).
    """

    message_id: str | None
    args: Sequence[Any]
    kwargs: Mapping[str, Any]


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
        return self.kind != "failed"

    def describe(self) -> str:
        """A short text for task results (what Flower shows)."""
        return self.kind if self.reason is None else f"{self.kind}: {self.reason}"


STORED = Outcome("stored")
DUPLICATE = Outcome("duplicate")


def ingest(
    store: TelemetryWrites,
    stats: Stats,
    deliveries: Sequence[Delivery],
    gpu_cache: GpuCache | None = None,
) -> list[Outcome]:
    """Validate and store ``deliveries``; one outcome each, in order. Never raises for storage.

    Invalid messages are recorded in one write; the GPUs that need it are
    upserted in one unordered bulk write (GPUs first, so a retried point
    repeats only idempotent upserts); then the points go in one unordered
    insert. With a ``gpu_cache``, GPU upserts that would change nothing are
    skipped.
    """
    outcomes: list[Outcome | None] = [None] * len(deliveries)
    valid: list[tuple[int, Point, GpuMetadata]] = []
    invalid: list[tuple[int, InvalidMessage, Delivery]] = []
    for index, delivery in enumerate(deliveries):
        try:
            point, metadata = parse_task_arguments(delivery.args, delivery.kwargs)
        except InvalidMessage as exc:
            invalid.append((index, exc, delivery))
            continue
        valid.append((index, point, metadata))

    if invalid:
        rejections = [
            RejectedMessage(
                exc.reason,
                exc.kind.value,
                delivery.message_id,
                {"args": delivery.args, "kwargs": delivery.kwargs},
            )
            for _, exc, delivery in invalid
        ]
        for (index, _, _), outcome in zip(
            invalid, record_rejections(store, stats, rejections), strict=True
        ):
            outcomes[index] = outcome
    if valid:
        stored = store_points(store, stats, [(point, meta) for _, point, meta in valid], gpu_cache)
        for (index, _, _), outcome in zip(valid, stored, strict=True):
            outcomes[index] = outcome
    return [outcome for outcome in outcomes if outcome is not None]


def store_points(
    store: TelemetryWrites,
    stats: Stats,
    points: Sequence[tuple[Point, GpuMetadata]],
    gpu_cache: GpuCache | None,
) -> list[Outcome]:
    """Upsert the points' GPUs, then insert the points; one outcome per point."""
    now = datetime.now(UTC)
    updates = GpuUpdate.merge(points)
    if gpu_cache is not None:
        updates = [update for update in updates if gpu_cache.needs_write(update)]
    documents = [point_document(point, metadata, now) for point, metadata in points]
    try:
        with metrics.db_write_timer(batch_size=len(points)):
            store.upsert_gpus(updates, now)
            stats.incr("gpus_stored", by=len(updates))
            if gpu_cache is not None:
                for update in updates:
                    gpu_cache.remember(update)
            results = store.insert_points(documents)
    except (StorageUnavailable, StorageRejected) as exc:
        logger.warning("Writing %d points failed: %s", len(points), exc)
        return [Outcome("failed", error=exc)] * len(points)

    written = datetime.now(UTC)  # one clock reading for the batch's latencies
    latencies: list[float] = []
    outcomes: list[Outcome] = []
    for (point, _), result in zip(points, results, strict=True):
        if result == "stored":
            latencies.append(metrics.seconds_since(point.timestamp, written))
            outcomes.append(STORED)
        elif result == "duplicate":
            outcomes.append(DUPLICATE)
        else:
            outcomes.append(Outcome("failed", error=result))
    metrics.observe_latencies(latencies)
    stored = sum(outcome is STORED for outcome in outcomes)
    duplicates = sum(outcome is DUPLICATE for outcome in outcomes)
    stats.incr("messages_processed", by=stored + duplicates)
    stats.incr("telemetry_stored", by=stored)
    stats.incr("duplicates", by=duplicates)
    return outcomes


def record_rejections(
    store: TelemetryWrites, stats: Stats, rejections: Sequence[RejectedMessage]
) -> list[Outcome]:
    """Record, count and log invalid messages; all ``failed`` if the record cannot be written."""
    try:
        store.record_rejected(rejections)
    except (StorageUnavailable, StorageRejected) as exc:
        logger.warning("Could not record %d invalid messages: %s", len(rejections), exc)
        return [Outcome("failed", error=exc)] * len(rejections)
    outcomes = []
    for rejection in rejections:
        kind = RejectionKind(rejection.kind)
        metrics.count_error(kind)
        logger.warning("Rejected invalid message %s: %s", rejection.message_id, rejection.reason)
        outcomes.append(Outcome("rejected", rejection.reason, kind))
    stats.incr("messages_errors", "messages_processed", by=len(rejections))
    return outcomes


def reject_undecodable(
    store: TelemetryWrites,
    stats: Stats,
    reason: str,
    kind: RejectionKind,
    message_id: str | None,
    raw: Any,
) -> Outcome:
    """Record a message that never became a task (bad body, bad shape) like any invalid one."""
    [outcome] = record_rejections(
        store, stats, [RejectedMessage(reason, kind.value, message_id, raw)]
    )
    return outcome
