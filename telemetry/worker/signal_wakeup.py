"""Waking the worker's event loop on signals, so a shutdown request is seen at once."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Protocol


class ReaderHub(Protocol):
    """An event loop that polls descriptors (kombu's hub)."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...


class SignalWakeup:
    """Wakes the consumer's event loop whenever the process gets a signal.

    Celery's shutdown signals only set a flag, which its loop reads between
    polls; a poll waits for a message or the next timer. With nothing held
    for a batch, the next timer can be a second or two away, and the worker
    would wait that long before it stops. Python writes a byte to the
    wake-up descriptor for every signal, before any handler runs; the loop
    polls the other end of a socket pair and returns at once. Only the main
    thread can set it, and only if nothing else in the process has set one.
    Once set, it stays for the life of the process.
    """

    def __init__(self) -> None:
        self._receiver: int | None = None  # the descriptor the event loop polls

    def register(self, hub: ReaderHub) -> None:
        """Have ``hub`` poll for signals (again after a reconnect); install on first use."""
        if self._receiver is None:
            self._receiver = self._installed()
        if self._receiver is not None:
            hub.add_reader(self._receiver, self.drain)

    @staticmethod
    def _installed() -> int | None:
        """The receiving end of a socket pair whose other end signals write to; None if
        this thread may not set the wake-up descriptor or someone else has."""
        if threading.current_thread() is not threading.main_thread():
            return None
        receiver, sender = socket.socketpair()
        receiver.setblocking(False)
        sender.setblocking(False)
        previous = signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
        if previous != -1:  # someone else's: leave it theirs
            signal.set_wakeup_fd(previous)
            receiver.close()
            sender.close()
            return None
        # The process keeps both ends open as plain descriptors for as long as it runs.
        sender.detach()
        return receiver.detach()

    def drain(self) -> None:
        """Read the bytes the signals wrote; the flags they set are read by the loop."""
        if self._receiver is None:
            return
        with suppress(BlockingIOError, InterruptedError):
            while os.read(self._receiver, 512):
                pass


SIGNAL_WAKEUP = SignalWakeup()
"""The worker process's one :class:`SignalWakeup`: a process has one wake-up descriptor."""
