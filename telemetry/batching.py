"""Batch commits: many ``telemetry.ingest`` messages written in one bulk round trip.

With ``BATCH_SIZE`` > 1 the task's execution strategy (Celery's per-task
message handler in the worker's consumer) holds fresh messages in a buffer
instead of starting a task for each. When the buffer holds ``BATCH_SIZE``
messages, or its oldest has waited ``FLUSH_INTERVAL_MS``, the batch goes to
the pool as one job: validate every point, upsert the GPUs that need it in
one unordered bulk write, insert the points in another. Then, per message:

* stored or duplicate → a ``task-succeeded`` event (Flower shows it like any
  task) and the ack of that message alone, after the write returned;
* anything else — an invalid point, a per-document write error, or a batch
  whose write failed as a whole — goes back through Celery's own per-task
  path, which records rejections, retries with backoff and dead-letters
  exactly as with ``BATCH_SIZE=1``. Writes are idempotent, so a point a
  failed batch did store is counted as a duplicate there.

Retry copies (they carry an ETA) and messages of any other shape take the
per-task path from the start. Messages still buffered when the connection
drops, or when the worker stops, were never acked: RabbitMQ redelivers them.
Batched messages skip Celery's revoke and ``expires`` checks, which this
collector does not use.

Why a strategy and not a group commit in the task body: a task per message
costs Celery's whole per-task machinery (request, trace, pool hand-off),
which alone caps a worker near 1,000 tasks/s here, whatever the database
does. The job runs on the worker's pool, so it works with threads and
prefork alike; the README has the measurements.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery.worker.strategy import default as default_strategy

from telemetry import metrics, runtime
from telemetry.errors import InvalidMessage, TelemetryError
from telemetry.gpucache import GpuCache
from telemetry.ingest import split_arguments
from telemetry.models import GpuMetadata, Point, parse_message
from telemetry.stats import STATS, Stats
from telemetry.storage import GpuUpdate, MongoTelemetryStore, point_document
from telemetry.taskevents import BatchEvents

logger = logging.getLogger("telemetry.batching")

# One message of a batch as the pool job sees it: task id, args, kwargs. Plain
# data, so a prefork child can receive it.
BatchItem = tuple[str, Any, Any]
# Per item: the task result text, or None for "take the per-task path".
BatchResult = list[str | None]


@dataclass
class Pending:
    """A message held in the buffer, with what is needed to settle it later."""

    message: Any
    body: Any
    ack: Any
    reject: Any
    callbacks: Any
    task_id: str
    args: Any
    kwargs: Any
    received: float
    received_at: float  # wall clock, for the task-received event

    def received_event(self, name: str) -> dict[str, Any]:
        """The ``task-received`` event fields Celery's own handler would send."""
        headers = self.message.headers
        return {
            "timestamp": self.received_at,
            "uuid": self.task_id,
            "name": name,
            "args": headers.get("argsrepr", ""),
            "kwargs": headers.get("kwargsrepr", ""),
            "root_id": headers.get("root_id"),
            "parent_id": headers.get("parent_id"),
            "retries": 0,
            "eta": None,
            "expires": None,
        }

    def succeeded_event(self, result: str, runtime_s: float) -> dict[str, Any]:
        """The ``task-succeeded`` event fields; the result reads as in the per-task path."""
        return {"uuid": self.task_id, "result": repr(result), "runtime": runtime_s}


def write_batch(items: Sequence[BatchItem]) -> BatchResult:
    """The pool job: store a batch; never raises (a failure means the per-task path)."""
    try:
        return store_batch(runtime.store(), STATS, items, runtime.gpu_cache())
    except Exception:  # any surprise: the per-task path handles each message
        logger.exception("Batch of %d failed unexpectedly; each message goes on alone", len(items))
        return [None] * len(items)


def store_batch(
    store: MongoTelemetryStore,
    stats: Stats,
    items: Sequence[BatchItem],
    gpu_cache: GpuCache | None = None,
) -> BatchResult:
    """Validate and store a batch in two bulk writes; see the module docstring."""
    results: BatchResult = [None] * len(items)
    valid: list[tuple[int, Point, GpuMetadata]] = []
    for index, (_task_id, args, kwargs) in enumerate(items):
        try:
            point, metadata = parse_message(*split_arguments(args, kwargs))
        except InvalidMessage:
            continue  # recorded and counted by the per-task path
        valid.append((index, point, metadata))
    if not valid:
        return results

    now = datetime.now(UTC)
    to_write = [
        (point, metadata)
        for _, point, metadata in valid
        if gpu_cache is None or gpu_cache.needs_write(point, metadata)
    ]
    documents = [point_document(point, metadata, now) for _, point, metadata in valid]
    try:
        with metrics.db_write_timer(batch_size=len(valid)):
            # GPUs first, as in the per-point path: a retried point then repeats
            # only idempotent upserts.
            updates = merge_gpu_updates(to_write)
            store.upsert_gpus(updates, now)
            stats.incr("gpus_stored", by=len(updates))
            if gpu_cache is not None:
                for point, metadata in to_write:
                    gpu_cache.remember(point, metadata)
            outcomes = store.insert_points(documents)
    except TelemetryError as exc:
        logger.warning("Batch write of %d points failed, each goes on alone: %s", len(valid), exc)
        return results

    stored = duplicates = 0
    for (index, point, _), outcome in zip(valid, outcomes, strict=True):
        if outcome == "failed":
            continue
        results[index] = outcome
        if outcome == "stored":
            stored += 1
            metrics.observe_latency(metrics.seconds_since(point.timestamp))
        else:
            duplicates += 1
    stats.incr("queue_delivered", "messages_processed", by=stored + duplicates)
    stats.incr("telemetry_stored", by=stored)
    stats.incr("duplicates", by=duplicates)
    return results


def merge_gpu_updates(points: Sequence[tuple[Point, GpuMetadata]]) -> list[GpuUpdate]:
    """One upsert per GPU: the latest metadata and the span of its point times."""
    merged: dict[str, GpuUpdate] = {}
    for point, metadata in points:
        update = GpuUpdate.of(point, metadata)
        known = merged.get(point.gpu_uuid)
        merged[point.gpu_uuid] = update if known is None else known.merged(update)
    return list(merged.values())


class Batcher:
    """The buffer between the consumer and the pool; thread-safe."""

    def __init__(
        self,
        size: int,
        flush_interval_s: float,
        submit: Callable[[list[Pending]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.flush_interval_s = flush_interval_s
        self._submit = submit
        self._clock = clock
        self._buffer: list[Pending] = []
        self._lock = threading.Lock()
        self.timer: Any = None  # the timer entry that calls flush_due

    def add(self, pending: Pending) -> None:
        """Buffer one message; hand a full batch to the pool."""
        with self._lock:
            self._buffer.append(pending)
            batch = self._take() if len(self._buffer) >= self.size else None
        if batch:
            self._submit(batch)

    def flush_due(self) -> None:
        """Hand over the buffer if its oldest message has waited the flush interval."""
        with self._lock:
            due = bool(self._buffer) and (
                self._clock() - self._buffer[0].received >= self.flush_interval_s
            )
            batch = self._take() if due else None
        if batch:
            self._submit(batch)

    def flush(self) -> None:
        """Hand over whatever is buffered."""
        with self._lock:
            batch = self._take()
        if batch:
            self._submit(batch)

    def discard(self) -> int:
        """Stop the timer and forget the buffer, unsettled; return how many were in it."""
        if self.timer is not None:
            self.timer.cancel()
        with self._lock:
            dropped, self._buffer = len(self._buffer), []
        return dropped

    def __len__(self) -> int:
        with self._lock:
            return len(self._buffer)

    def _take(self) -> list[Pending]:
        batch, self._buffer = self._buffer[: self.size], self._buffer[self.size :]
        return batch


def batch_strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Callable[..., Any]:
    """The ``telemetry.ingest`` message handler: Celery's own, or batching in front of it."""
    per_task: Callable[..., Any] = default_strategy(task, app, consumer, **options)
    settings = runtime.current_settings()
    if settings.batch_size <= 1:
        return per_task

    events = BatchEvents(consumer.event_dispatcher)

    def alone(pending: Pending) -> None:
        """Celery's per-task path for one message, on the consumer's thread like all its calls."""
        try:
            per_task(pending.message, pending.body, pending.ack, pending.reject, pending.callbacks)
        except Exception:
            logger.exception("Message %s could not take the task path; requeued", pending.task_id)
            if not pending.message.acknowledged:
                pending.reject(logger, consumer.connection_errors, requeue=True)

    def settle(batch: list[Pending], results: Any, started: float) -> None:
        if not isinstance(results, list) or len(results) != len(batch):
            # The job died (a lost pool process, say): each message goes on alone.
            logger.error("Batch of %d ended without results: %r", len(batch), results)
            results = [None] * len(batch)
        # In flight from buffering until here; a message handed to the per-task
        # path is counted there again, by the worker's task signals.
        metrics.in_flight_dec(len(batch))
        paired = list(zip(batch, results, strict=True))
        done = [(pending, result) for pending, result in paired if result is not None]
        for pending, _ in done:
            pending.ack(logger, consumer.connection_errors)
        for pending, result in paired:
            if result is None:
                consumer.call_soon(alone, pending)
        # Events only for messages settled here: the per-task path sends its own,
        # so a message never shows as received twice.
        runtime_s = time.monotonic() - started
        events.send(
            [("task-received", pending.received_event(task.name)) for pending, _ in done]
            + [("task-succeeded", pending.succeeded_event(r, runtime_s)) for pending, r in done]
        )

    def submit(batch: list[Pending]) -> None:
        # A buffer only ever holds deliveries of one channel (see below). Once it
        # closed they cannot be acked any more, and RabbitMQ redelivers them.
        if not getattr(batch[0].message.channel, "is_open", True):
            metrics.in_flight_dec(len(batch))
            logger.info("Dropped %d buffered messages of a lost connection", len(batch))
            return
        items = [(pending.task_id, pending.args, pending.kwargs) for pending in batch]
        started = time.monotonic()
        try:
            consumer.pool.apply_async(
                write_batch,
                args=(items,),
                callback=lambda results: settle(batch, results, started),
                error_callback=lambda exc: settle(batch, exc, started),
            )
        except Exception:
            # Never strand a batch: each message goes on alone.
            logger.exception("Could not hand a batch of %d to the pool", len(batch))
            settle(batch, None, started)

    # Celery makes strategies anew after every reconnect. The previous buffer
    # holds deliveries of the lost channel only: RabbitMQ redelivers them.
    previous: Batcher | None = getattr(consumer, "telemetry_batcher", None)
    if previous is not None:
        metrics.in_flight_dec(previous.discard())
    batcher = Batcher(settings.batch_size, settings.flush_interval_ms / 1000, submit)
    # Checked often, so a point waits at most FLUSH_INTERVAL_MS plus one tick.
    batcher.timer = consumer.timer.call_repeatedly(
        min(batcher.flush_interval_s / 4, 0.02), batcher.flush_due
    )
    consumer.telemetry_batcher = batcher
    logger.info(
        "Batch commits: up to %d points per write, flushed after %d ms",
        settings.batch_size,
        settings.flush_interval_ms,
    )

    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any) -> Any:
        headers = message.headers
        if headers.get("eta") or headers.get("retries"):
            return per_task(message, body, ack, reject, callbacks)
        try:
            args, kwargs, _embed = message.decode()
            task_id = str(headers["id"])
        except Exception:  # Celery's own path reports a bad message best
            return per_task(message, body, ack, reject, callbacks)
        metrics.in_flight_inc()
        batcher.add(
            Pending(
                message,
                body,
                ack,
                reject,
                callbacks,
                task_id,
                args,
                kwargs,
                time.monotonic(),
                time.time(),
            )
        )
        return None

    return handle
