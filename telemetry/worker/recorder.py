"""The one place outcomes are counted: statistics, Prometheus metrics and a batch's task events.

The write path (:func:`telemetry.worker.ingest.ingest`), the batch path, the
consumer and the task only say what happened; a :class:`Recorder` turns it
into the statistics counters, the metrics that mirror them, and the task
events Flower shows for messages a batch settled. The per-task path's
events are Celery's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from telemetry.errors import RejectionKind
from telemetry.observe.metrics import CollectorMetrics
from telemetry.observe.stats import Count, Stats
from telemetry.worker.buffer import HeldMessage
from telemetry.worker.celery.events import SettledMessage, TaskEventSender, result_text
from telemetry.worker.ingest import DUPLICATE, STORED, Ingested, OutcomeKind


class Recorder:
    """Counts what a worker process did, in its :class:`Stats` and its :class:`CollectorMetrics`."""

    def __init__(self, stats: Stats, metrics: CollectorMetrics) -> None:
        self.stats = stats
        self.metrics = metrics

    @classmethod
    def fresh(cls) -> Recorder:
        """Counters and metrics at zero."""
        return cls(Stats(), CollectorMetrics.fresh())

    def renew_metrics(self) -> None:
        """Make the metrics anew, after :func:`telemetry.observe.metrics.enable_multiprocess`:
        metrics made before it keep their values where no scrape reads them."""
        self.metrics = CollectorMetrics.fresh()

    def ingested(self, result: Ingested) -> None:
        """Count the outcomes of one write and record its timing and latencies."""
        stored = duplicates = 0
        rejected: list[RejectionKind] = []
        for outcome in result.outcomes:
            if outcome is STORED:
                stored += 1
            elif outcome is DUPLICATE:
                duplicates += 1
            elif outcome.kind is OutcomeKind.REJECTED and outcome.rejection is not None:
                rejected.append(outcome.rejection)
        counts = {
            Count.MESSAGES_PROCESSED: stored + duplicates + len(rejected),
            Count.TELEMETRY_STORED: stored,
            Count.DUPLICATES: duplicates,
            Count.MESSAGES_ERRORS: len(rejected),
            Count.GPUS_STORED: result.gpus_written,
        }
        self.stats.add(counts)
        metrics = self.metrics
        for name, by in counts.items():
            if by:
                metrics.count(name, by)
        for kind in rejected:
            metrics.count_error(kind)
        if result.write_s is not None:
            metrics.observe_db_write(result.write_s, result.points_written)
        metrics.observe_latencies(result.latencies_s)

    def arrived(self) -> None:
        """One message was taken from the queue."""
        self.stats.incr(Count.QUEUE_DELIVERED)
        self.metrics.count(Count.QUEUE_DELIVERED)

    def retried(self) -> None:
        """A retry was scheduled after a storage failure."""
        self.stats.incr(Count.RETRIES)
        self.metrics.count(Count.RETRIES)

    def dead_lettered(self) -> None:
        """A message was rejected to the dead-letter queue."""
        self.stats.incr(Count.DEAD_LETTERED)
        self.metrics.count(Count.DEAD_LETTERED)

    def unknown_task(self) -> None:
        """A message named a task this worker does not run; it is dead-lettered."""
        self.metrics.count_error(RejectionKind.UNKNOWN_TASK)
        self.dead_lettered()

    def in_flight_inc(self) -> None:
        """One more message is being processed (a task running, or held for a batch)."""
        self.metrics.in_flight.inc()

    def in_flight_dec(self, n: int = 1) -> None:
        """``n`` messages are done with (a batch's messages count again if they become tasks)."""
        self.metrics.in_flight.dec(n)

    def batch_settled(
        self,
        done: Sequence[tuple[HeldMessage, str]],
        events: TaskEventSender | None,
        task_name: str,
        runtime_s: float,
    ) -> None:
        """Count the messages a batch settled; with ``events``, send their two task events each.

        Only for messages settled by the batch: the per-task path sends its own,
        so a message never shows as received twice.
        """
        self.metrics.batched.inc(len(done))
        if events is None:
            return
        # A batch has a few distinct results ("stored", "duplicate"): render each once.
        shown = {result: result_text(result) for result in {result for _, result in done}}
        events.send_settled(
            task_name,
            [
                SettledMessage(
                    held.decoded.message_id or "",
                    held.offered.headers,
                    held.received_at,
                    shown[result],
                )
                for held, result in done
            ],
            runtime_s,
        )
