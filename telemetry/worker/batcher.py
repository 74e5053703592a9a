"""The batch path of one consumer: hold messages, hand batches to the pool, settle each message.

:class:`Batcher` is what ``telemetry.ingest``'s strategy builds for a consumer
(:mod:`telemetry.worker.batching` says why and how batches go). It only talks
to Celery through a :class:`~telemetry.worker.celery.strategy.ConsumerPort`,
so a test can drive it with a fake port and a fake pool job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from telemetry.config import Settings
from telemetry.worker.batch_timer import BatchTimer
from telemetry.worker.buffer import BatchBuffer, HeldMessage
from telemetry.worker.celery.message import MessageHandler, OfferedMessage
from telemetry.worker.celery.strategy import ConsumerPort
from telemetry.worker.ingest import DecodedMessage
from telemetry.worker.quarantine import Quarantine
from telemetry.worker.recorder import Recorder

logger = logging.getLogger("telemetry.batching")

# Per message of a batch: the task result text, or None for "take the per-task path".
# Plain data, so a pool process can send it back.
BatchResult = list[str | None]
BatchJob = Callable[[Sequence[DecodedMessage]], BatchResult]
"""The pool job: the one write path over a batch, never raising."""


@dataclass(frozen=True)
class BatchOptions:
    """How a consumer batches: ``BATCH_SIZE``, ``FLUSH_INTERVAL_MS`` and ``TASK_EVENTS``."""

    size: int
    flush_interval_s: float
    # TASK_EVENTS=failures: what a batch settles sends none; the per-task path
    # (retries, failures, redeliveries) keeps Celery's events, so Flower shows those.
    send_events: bool

    @classmethod
    def of(cls, settings: Settings) -> BatchOptions:
        """``BATCH_SIZE``, ``FLUSH_INTERVAL_MS`` and ``TASK_EVENTS`` from the worker's settings."""
        return cls(
            size=settings.batch_size,
            flush_interval_s=settings.flush_interval_ms / 1000,
            send_events=settings.task_events == "all",
        )


class Batcher:
    """The ``telemetry.ingest`` message handler of one consumer, with batching in front.

    Fresh messages wait in a :class:`BatchBuffer` (only when ``size`` > 1),
    redelivered ones in a :class:`Quarantine`; retry copies and the rest go
    to Celery's per-task handler ``per_task``. Every call from the consumer
    and every settlement happens on the consumer's thread (``port.call_soon``).
    """

    def __init__(
        self,
        task_name: str,
        per_task: MessageHandler,
        port: ConsumerPort,
        job: BatchJob,
        options: BatchOptions,
        recorder: Recorder,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.task_name = task_name
        self._per_task = per_task
        self._port = port
        self._job = job
        self._recorder = recorder
        self._events = port.events() if options.send_events else None
        self._clock = clock
        flush_interval_s = options.flush_interval_s
        self.buffer = (
            BatchBuffer(options.size, flush_interval_s, self.submit, clock)
            if options.size > 1
            else None
        )
        self.quarantine = Quarantine(hold_s=flush_interval_s, clock=clock)
        # Redelivered messages wait for their hold and for the suspect before them to
        # be settled (settling one also asks for the next): checked this often.
        self._suspect_check_s = min(flush_interval_s / 4, 0.02)
        self.timer = BatchTimer(port.later, self.due_in, self.wake, retry_s=self._suspect_check_s)

    def start(self) -> MessageHandler:
        """Take over the consumer's ``telemetry.ingest`` messages; return the strategy's handler.

        A previous batcher of this consumer (Celery builds strategies anew after
        every reconnect) holds deliveries of a lost channel only: they are
        forgotten, and RabbitMQ redelivers them.
        """
        previous: Batcher | None = self._port.swap_slot(self)
        if previous is not None:
            self._recorder.in_flight_dec(previous.discard())
        if self.buffer is not None:
            logger.info(
                "Batch commits: up to %d points per write, flushed after %d ms",
                self.buffer.size,
                round(self.buffer.flush_interval_s * 1000),
            )
        # Messages are offered to `take` before Celery's handler. Those it declines reach
        # the strategy through Celery's handler, where `take` (headers only) declines them
        # again; with a consumer that offers nothing first, the strategy is the only way in.
        self._port.take_first(self.task_name, self.take)
        return self.handle

    def handle(
        self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any
    ) -> Any:
        """The strategy's message handler: hold the message, or hand it to Celery's."""
        offered = self._port.offered(message, body, ack, reject, callbacks)
        if self.take(offered):
            return None
        return offered.hand_to(self._per_task)

    def take(self, offered: OfferedMessage) -> bool:
        """Hold a fresh or redelivered message for a batch; False leaves it to the per-task path."""
        headers = offered.headers
        if headers.get("eta") or headers.get("retries"):
            return False
        suspect = offered.delivery_count
        buffer = self.buffer
        if not suspect and buffer is None:
            return False
        # The consumer checked the body's shape before any handler sees it.
        args, kwargs = offered.decode()
        held = HeldMessage(
            offered, DecodedMessage(str(headers["id"]), args, kwargs), self._clock(), time.time()
        )
        self._recorder.in_flight_inc()
        if suspect:
            self.quarantine.add(held, suspect)
        elif buffer is not None:
            buffer.add(held)
        self.timer.arm()
        return True

    def submit(self, batch: list[HeldMessage]) -> None:
        """Hand ``batch`` to the pool as one job; :meth:`settle` runs when it is done."""
        # A buffer only ever holds deliveries of one channel (a reconnect brings a new
        # batcher). Once it closed they cannot be acked any more: RabbitMQ redelivers them.
        if not batch[0].offered.channel_open:
            self._recorder.in_flight_dec(len(batch))
            logger.info("Dropped %d buffered messages of a lost connection", len(batch))
            return
        started = time.monotonic()
        try:
            self._port.run_in_pool(
                self._job,
                ([held.decoded for held in batch],),
                on_result=lambda results: self.settle(batch, results, started),
                on_error=lambda exc: self.settle(batch, exc, started),
            )
        except Exception:
            # Never strand a batch: each message goes on alone.
            logger.exception("Could not hand a batch of %d to the pool", len(batch))
            self.settle(batch, None, started)

    def settle(self, batch: list[HeldMessage], results: Any, started: float) -> None:
        """Ack what the write settled, send the rest on alone, and report the settled."""
        if not isinstance(results, list) or len(results) != len(batch):
            # The job died (a lost pool process, say): each message goes on alone.
            logger.error("Batch of %d ended without results: %r", len(batch), results)
            results = [None] * len(batch)
        # In flight from buffering until here; a message handed to the per-task
        # path is counted there again, by the worker's task signals.
        self._recorder.in_flight_dec(len(batch))
        paired = list(zip(batch, results, strict=True))
        done = [(held, result) for held, result in paired if result is not None]
        port = self._port
        port.ack_together([held.offered for held, _ in done])
        for held, result in paired:
            if result is None:
                port.call_soon(self.alone, held)
        if len(self.quarantine):
            # After the acks above (the consumer runs its calls in order), so the next
            # suspect is only ever held beside settled ones.
            port.call_soon(self.next_suspect)
        self._recorder.batch_settled(done, self._events, self.task_name, time.monotonic() - started)

    def alone(self, held: HeldMessage) -> None:
        """Celery's per-task path for one message, on the consumer's thread like all its calls."""
        try:
            held.offered.hand_to(self._per_task)
        except Exception:
            logger.exception(
                "Message %s could not take the task path; requeued", held.decoded.message_id
            )
            if not held.offered.acknowledged:
                held.offered.requeue()

    def next_suspect(self) -> None:
        """Write the next redelivered message on its own, once the one before is settled."""
        suspect = self.quarantine.next_due()
        if suspect is not None:
            self.submit([suspect])

    def wake(self) -> None:
        """The timer's call: flush a due batch, start the next suspect."""
        if self.buffer is not None:
            self.buffer.flush_due()
        self.next_suspect()

    def due_in(self) -> float | None:
        """Seconds until held messages need the timer; None when none are held."""
        waits = [self._suspect_check_s] if len(self.quarantine) else []
        if self.buffer is not None and (batch_due := self.buffer.due_in()) is not None:
            waits.append(batch_due)
        return min(waits, default=None)

    def discard(self) -> int:
        """Stop the timer and forget every held message, unsettled; return how many."""
        self.timer.cancel()
        held = self.quarantine.discard()
        if self.buffer is not None:
            held += self.buffer.discard()
        return held
