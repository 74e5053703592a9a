"""The batcher's timer: one wake-up on the consumer's timer, set only while messages are held."""

from __future__ import annotations

from collections.abc import Callable

from telemetry.worker.celery.strategy import Cancellable


class BatchTimer:
    """Wakes the batcher when its first held message is due, and only while any are held.

    An idle worker should not wake up at all: a periodic tick would cost CPU
    on every worker with nothing to do. So one wake-up is set when a message
    is held and none is set yet, for when the first held message is due; when
    it fires it does its work and sets itself again only if messages are
    still held. Only the consumer's thread calls it, as it does all timer
    work. A shutdown request does not wait for it: signals wake the event
    loop themselves (:class:`telemetry.worker.signal_wakeup.SignalWakeup`).
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

    def arm(self, at_least_s: float = 0.0) -> None:
        """Set a wake-up for when the first held message is due, unless one is set."""
        if self._entry is not None:
            return
        delay = self._due_in()
        if delay is not None:
            self._entry = self._later(max(delay, at_least_s), self._wake)

    def cancel(self) -> None:
        """Drop the wake-up that is set, if any."""
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
