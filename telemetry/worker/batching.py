"""Batch commits: many ``telemetry.ingest`` messages written in one bulk round trip.

With ``BATCH_SIZE`` > 1 the task's execution strategy holds fresh messages in
a buffer instead of starting a task for each. When the buffer holds
``BATCH_SIZE`` messages, or its oldest has waited ``FLUSH_INTERVAL_MS``, the
batch goes to the pool as one job, which runs the one write path
(:func:`telemetry.worker.ingest.ingest`) on all of it. Then, per message:

* stored, duplicate or rejected → the ack of that message alone, after the
  write returned, and a ``task-received`` plus a ``task-succeeded`` event
  (Flower shows it like any task, with the same result text);
* failed (storage trouble for this message or the whole batch) → Celery's
  own per-task path, which retries with backoff and dead-letters exactly as
  with ``BATCH_SIZE=1``. Writes are idempotent, so a point a failed batch
  did store is counted as a duplicate there.

Retry copies (they carry a retry count) take the per-task path from the
start. Redelivered messages (their last holder died or lost the broker
before settling them) are suspects: one of them may be a poison message
that kills the worker. They wait in a :class:`Quarantine` and are written
one at a time (a batch of one), the least delivered first, so a poison message
is handled while as few others as possible are held: innocents held
with it in one crash are settled in the next round, and the poison alone
reaches the queue's delivery limit and is dead-lettered (quorum queues).

Messages still buffered when the connection drops, or when
the worker stops, were never acked: RabbitMQ redelivers them. Batched
messages skip Celery's revoke and ``expires`` checks, which this collector
does not use.

Why a strategy and not a group commit in the task body: a task per message
costs Celery's whole per-task machinery (request, trace, pool hand-off),
which alone caps a worker near 1,000 tasks/s here, whatever the database
does. The job runs on the worker's pool, so it works with threads and
processes alike; docs/batch-commits.md has the measurements.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from telemetry.observe import metrics
from telemetry.observe.stats import STATS
from telemetry.worker import runtime
from telemetry.worker.celery.delivered import Delivered
from telemetry.worker.celery.events import SettledTask, result_text
from telemetry.worker.celery.message import MessageHandler
from telemetry.worker.celery.strategy import Cancellable, ConsumerPort, make_strategy
from telemetry.worker.ingest import Delivery, ingest

logger = logging.getLogger("telemetry.batching")

# Per message of a batch: the task result text, or None for "take the per-task path".
# Plain data, so a pool process can send it back.
BatchResult = list[str | None]


@dataclass(slots=True)
class Pending:
    """A message held in the buffer, with what is needed to settle it later."""

    delivered: Delivered
    delivery: Delivery
    received: float  # monotonic, for the flush interval
    received_at: float  # wall clock, for the task-received event


def write_batch(deliveries: Sequence[Delivery]) -> BatchResult:
    """The pool job: the one write path over a batch; never raises.

    An unexpected error sends every message down the per-task path, which
    reports it the way Celery reports any task error.
    """
    try:
        outcomes = ingest(runtime.store(), STATS, deliveries, runtime.gpu_cache())
    except Exception:  # any surprise: the per-task path handles each message
        logger.exception("Batch of %d failed unexpectedly; each goes on alone", len(deliveries))
        return [None] * len(deliveries)
    return [outcome.describe() if outcome.settled else None for outcome in outcomes]


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

    def due_in(self) -> float | None:
        """Seconds until the oldest buffered message has waited the interval; None if empty."""
        with self._lock:
            if not self._buffer:
                return None
            return max(self._buffer[0].received + self.flush_interval_s - self._clock(), 0.0)

    def discard(self) -> int:
        """Forget the buffer, unsettled; return how many were in it."""
        with self._lock:
            dropped, self._buffer = len(self._buffer), []
        return dropped

    def __len__(self) -> int:
        with self._lock:
            return len(self._buffer)

    def _take(self) -> list[Pending]:
        batch, self._buffer = self._buffer[: self.size], self._buffer[self.size :]
        return batch


class Quarantine:
    """Redelivered messages, handed on one at a time; thread-safe.

    Each waits ``hold_s`` after it arrives, so the whole burst of a
    redelivery is in before one is picked. The pick is the lowest delivery
    count: a message held through fewer crashes is less likely the poison.
    Among equal counts the order alternates with the count's parity, oldest
    first on odd counts and newest first on even ones: whichever side of the
    poison an innocent stood on in one round, it is handled before the poison
    in the next, so none reaches the delivery limit with it.
    """

    def __init__(self, hold_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._hold_s = hold_s
        self._clock = clock
        self._waiting: list[tuple[int, int, Pending]] = []  # (delivery count, arrival, message)
        self._arrivals = 0
        self._current: Pending | None = None
        self._lock = threading.Lock()

    def add(self, pending: Pending, delivery_count: int) -> None:
        """Hold a redelivered message until its turn."""
        with self._lock:
            self._arrivals += 1
            self._waiting.append((delivery_count, self._arrivals, pending))

    def next_due(self) -> Pending | None:
        """The message whose turn it is, once the one before it is settled; else None."""
        with self._lock:
            if self._current is not None and not self._current.delivered.acknowledged:
                return None
            self._current = None
            now = self._clock()
            ready = [entry for entry in self._waiting if now - entry[2].received >= self._hold_s]
            if not ready:
                return None
            lowest = min(count for count, _, _ in ready)
            candidates = [entry for entry in ready if entry[0] == lowest]
            pick = min(candidates, key=lambda entry: entry[1] if lowest % 2 else -entry[1])
            self._waiting.remove(pick)
            self._current = pick[2]
            return self._current

    def discard(self) -> int:
        """Forget every held message, unsettled; return how many there were."""
        with self._lock:
            dropped = len(self._waiting) + (self._current is not None)
            self._waiting, self._current = [], None
        return dropped

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)


class Wakeups:
    """The consumer's timer for held messages, set only while messages are held.

    A timer that ticked every 20 ms whether or not anything was held kept an
    idle worker waking 50 times a second. This one is set when a message is
    held and nothing is set yet, for when the first held message is due; when
    it fires it does its work and sets itself again only if messages are still
    held. Only the consumer's thread calls it, as it does all timer work.
    (The old tick also had the loop see a shutdown request within 20 ms; a
    signal now wakes the loop itself, see ``celery_internals.SignalWakeup``.)
    """

    def __init__(
        self,
        later: Callable[[float, Callable[[], None]], Cancellable],
        due_in: Callable[[], float | None],
        on_wake: Callable[[], None],
        retry_s: float,
    ) -> None:
        self._later = later
        self._due_in = due_in
        self._on_wake = on_wake
        self._retry_s = retry_s
        self._entry: Cancellable | None = None

    @property
    def pending(self) -> bool:
        """Whether a wake-up is set."""
        return self._entry is not None

    def arm(self, at_least_s: float = 0.0) -> None:
        """Set a wake-up for when the first held message is due, unless one is set."""
        if self._entry is not None:
            return
        delay = self._due_in()
        if delay is not None:
            self._entry = self._later(max(delay, at_least_s), self._wake)

    def cancel(self) -> None:
        """Drop the pending wake-up, if any."""
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    def _wake(self) -> None:
        self._entry = None
        try:
            self._on_wake()
        except Exception:
            # The timer logs it. Come back no sooner than ``retry_s``: an error that
            # repeats with a message overdue would otherwise spin.
            self.arm(at_least_s=self._retry_s)
            raise
        self.arm()


@dataclass
class ConsumerState:
    """What one consumer's handler keeps between messages, found again after a reconnect."""

    batcher: Batcher | None
    quarantine: Quarantine
    timer: Wakeups | None = None

    def discard(self) -> int:
        """Stop the timer and forget every held message; return how many there were."""
        if self.timer is not None:
            self.timer.cancel()
        held = self.quarantine.discard()
        if self.batcher is not None:
            held += self.batcher.discard()
        return held


def build_handler(task: Any, per_task: MessageHandler, port: ConsumerPort) -> MessageHandler:
    """The ``telemetry.ingest`` message handler: Celery's own, or batching in front of it."""
    settings = runtime.current_settings()
    events = port.events()
    # TASK_EVENTS=failures: what a batch settles sends none; the per-task path
    # (retries, failures, redeliveries) keeps Celery's events, so Flower shows those.
    batch_events = settings.task_events == "all"

    def alone(pending: Pending) -> None:
        """Celery's per-task path for one message, on the consumer's thread like all its calls."""
        try:
            pending.delivered.hand_to(per_task)
        except Exception:
            logger.exception(
                "Message %s could not take the task path; requeued", pending.delivery.message_id
            )
            if not pending.delivered.acknowledged:
                pending.delivered.requeue()

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
        port.ack_together([pending.delivered for pending, _ in done])
        for pending, result in paired:
            if result is None:
                port.call_soon(alone, pending)
        metrics.count_batched(len(done))
        if len(state.quarantine):
            # After the acks above (the consumer runs its calls in order), so the next
            # suspect is only ever held beside settled ones.
            port.call_soon(next_suspect)
        # Events only for messages settled here: the per-task path sends its own,
        # so a message never shows as received twice.
        if not batch_events:
            return
        runtime_s = time.monotonic() - started
        # A batch has a few distinct results ("stored", "duplicate"): render each once.
        shown = {result: result_text(result) for result in {result for _, result in done}}
        events.send_settled(
            task.name,
            [
                SettledTask(
                    pending.delivery.message_id or "",
                    pending.delivered.headers,
                    pending.received_at,
                    shown[result],
                )
                for pending, result in done
            ],
            runtime_s,
        )

    def submit(batch: list[Pending]) -> None:
        # A buffer only ever holds deliveries of one channel (see below). Once it
        # closed they cannot be acked any more, and RabbitMQ redelivers them.
        if not batch[0].delivered.channel_open:
            metrics.in_flight_dec(len(batch))
            logger.info("Dropped %d buffered messages of a lost connection", len(batch))
            return
        started = time.monotonic()
        try:
            port.run_in_pool(
                write_batch,
                ([pending.delivery for pending in batch],),
                on_result=lambda results: settle(batch, results, started),
                on_error=lambda exc: settle(batch, exc, started),
            )
        except Exception:
            # Never strand a batch: each message goes on alone.
            logger.exception("Could not hand a batch of %d to the pool", len(batch))
            settle(batch, None, started)

    flush_interval_s = settings.flush_interval_ms / 1000
    batcher = (
        Batcher(settings.batch_size, flush_interval_s, submit) if settings.batch_size > 1 else None
    )
    state = ConsumerState(batcher, Quarantine(hold_s=flush_interval_s))
    # The previous strategy's buffers hold deliveries of a lost channel only:
    # RabbitMQ redelivers them.
    previous: ConsumerState | None = port.swap_slot(state)
    if previous is not None:
        metrics.in_flight_dec(previous.discard())

    def next_suspect() -> None:
        """Write the next redelivered message on its own, once the one before is settled."""
        suspect = state.quarantine.next_due()
        if suspect is not None:
            submit([suspect])

    def wake() -> None:
        if batcher is not None:
            batcher.flush_due()
        next_suspect()

    # Redelivered messages wait for their hold and for the suspect before them to
    # be settled (settling one also asks for the next): checked this often.
    suspect_check_s = min(flush_interval_s / 4, 0.02)

    def due_in() -> float | None:
        """Seconds until held messages need the timer; None when none are held."""
        waits = [suspect_check_s] if len(state.quarantine) else []
        if batcher is not None and (batch_due := batcher.due_in()) is not None:
            waits.append(batch_due)
        return min(waits, default=None)

    wakeups = state.timer = Wakeups(port.later, due_in, wake, retry_s=suspect_check_s)
    if batcher is not None:
        logger.info(
            "Batch commits: up to %d points per write, flushed after %d ms",
            settings.batch_size,
            settings.flush_interval_ms,
        )

    def take(delivered: Delivered) -> bool:
        """Hold a fresh or redelivered message for a batch; False leaves it to the per-task path."""
        headers = delivered.headers
        if headers.get("eta") or headers.get("retries"):
            return False
        suspect = delivered.delivery_count
        if not suspect and batcher is None:
            return False
        # The consumer checked the body's shape before any handler sees it.
        args, kwargs = delivered.decode()
        pending = Pending(
            delivered, Delivery(str(headers["id"]), args, kwargs), time.monotonic(), time.time()
        )
        metrics.in_flight_inc()
        if suspect:
            state.quarantine.add(pending, suspect)
        elif batcher is not None:
            batcher.add(pending)
        wakeups.arm()
        return True

    # Messages are offered to `take` before Celery's handler. Those it declines reach
    # this strategy through Celery's handler, where `take` (headers only) declines them
    # again; with a consumer that offers nothing first, the strategy is the only way in.
    port.take_first(task.name, take)

    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any) -> Any:
        delivered = port.delivered(message, body, ack, reject, callbacks)
        if take(delivered):
            return None
        return delivered.hand_to(per_task)

    return handle


batch_strategy = make_strategy(build_handler)
"""The ``Strategy`` of the ingest task (``IngestTask.Strategy`` names it)."""
