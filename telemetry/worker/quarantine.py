"""The quarantine: redelivered messages (suspects of poison) written one at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from telemetry.worker.buffer import HeldMessage


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
        self._waiting: list[tuple[int, int, HeldMessage]] = []  # (delivery count, arrival, message)
        self._arrivals = 0
        self._current: HeldMessage | None = None
        self._lock = threading.Lock()

    def add(self, held: HeldMessage, delivery_count: int) -> None:
        """Hold a redelivered message until its turn."""
        with self._lock:
            self._arrivals += 1
            self._waiting.append((delivery_count, self._arrivals, held))

    def next_due(self) -> HeldMessage | None:
        """The message whose turn it is, once the one before it is settled; else None."""
        with self._lock:
            if self._current is not None and not self._current.offered.acknowledged:
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
