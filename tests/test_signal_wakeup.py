"""A signal wakes the worker's event loop at once (telemetry/worker/signal_wakeup.py)."""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from telemetry.worker.signal_wakeup import SignalWakeup


class RecordingHub:
    """Records the descriptors an event loop was asked to poll, and their callbacks."""

    def __init__(self) -> None:
        self.readers: dict[int, Callable[[], None]] = {}

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback


def readable(fd: int, timeout_s: float = 0.5) -> bool:
    return bool(select.select([fd], [], [], timeout_s)[0])


@pytest.fixture
def hub() -> Iterator[RecordingHub]:
    """A hub; afterwards the process's wake-up descriptor is unset and both ends closed."""
    recording = RecordingHub()
    try:
        yield recording
    finally:
        sender = signal.set_wakeup_fd(-1)
        if sender != -1:
            os.close(sender)
        for receiver in recording.readers:
            os.close(receiver)


def test_a_signal_wakes_the_event_loop_at_once(hub: RecordingHub) -> None:
    # given: a wake-up registered with the loop, and a signal whose handler does nothing
    wakeup = SignalWakeup()
    previous_handler = signal.signal(signal.SIGUSR1, lambda number, frame: None)
    try:
        wakeup.register(hub)
        [(fd, callback)] = hub.readers.items()
        assert callback == wakeup.drain
        assert not readable(fd)
        # when: a signal, as Celery's warm shutdown gets
        os.kill(os.getpid(), signal.SIGUSR1)
        # then: what the loop polls is readable, until the reader drains it
        assert readable(fd)
        wakeup.drain()
        assert not readable(fd, timeout_s=0)
        # and after a reconnect the same descriptor is registered again
        again = RecordingHub()
        wakeup.register(again)
        assert list(again.readers) == [fd]
    finally:
        signal.signal(signal.SIGUSR1, previous_handler)


def test_the_signal_wakeup_leaves_a_descriptor_set_by_someone_else() -> None:
    theirs_receiver, theirs = socket.socketpair()
    theirs.setblocking(False)
    signal.set_wakeup_fd(theirs.fileno())
    try:
        hub = RecordingHub()
        SignalWakeup().register(hub)
        assert hub.readers == {}
        assert signal.set_wakeup_fd(theirs.fileno()) == theirs.fileno()
    finally:
        signal.set_wakeup_fd(-1)
        theirs_receiver.close()
        theirs.close()
    # and a worker run in another thread (the demo) cannot set one at all
    hub = RecordingHub()
    elsewhere = threading.Thread(target=SignalWakeup().register, args=(hub,))
    elsewhere.start()
    elsewhere.join()
    assert hub.readers == {}
