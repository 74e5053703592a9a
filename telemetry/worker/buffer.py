"""The batch buffer: fresh messages held until a batch is full or its oldest is due."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from telemetry.worker.celery.message import OfferedMessage
from telemetry.worker.ingest import DecodedMessage


@dataclass(slots=True)
class HeldMessage:
    """A message held for a batch or as a suspect (stage 4, see :mod:`telemetry.worker.celery`):
    the offered message to settle it by, its decoded form to write."""

    offered: OfferedMessage
    decoded: DecodedMessage
    received: float  # monotonic, for the flush interval
    received_at: float  # wall clock, for the task-received event


class BatchBuffer:
    """The buffer between the consumer and the pool; thread-safe.

    It hands a batch to ``submit`` as soon as it holds ``size`` messages, and
    on :meth:`flush_due` once its oldest has waited ``flush_interval_s``.
    """

    def __init__(
        self,
        size: int,
        flush_interval_s: float,
        submit: Callable[[list[HeldMessage]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.flush_interval_s = flush_interval_s
        self._submit = submit
        self._clock = clock
        self._buffer: list[HeldMessage] = []
        self._lock = threading.Lock()

    def add(self, held: HeldMessage) -> None:
        """Buffer one message; hand a full batch to the pool."""
        with self._lock:
            self._buffer.append(held)
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

    def _take(self) -> list[HeldMessage]:
        batch, self._buffer = self._buffer[: self.size], self._buffer[self.size :]
        return batch
