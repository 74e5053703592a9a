"""The socket fast path: the consumer's socket read in runs, a chunk at a time."""

from __future__ import annotations

import errno
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from amqp.exceptions import RecoverableConnectionError
from amqp.transport import TCPTransport


class DrainingReader:
    """Reads up to :attr:`LIMIT` messages each time the event loop finds the socket readable.

    kombu's reader takes one message per turn of Celery's event loop and
    schedules itself again; each turn polls the socket, checks the timers
    and makes a promise. This one takes messages while the socket has them,
    up to a bound, so timers, acks and shutdown still come between runs of
    messages. During a run a :class:`ReadAhead` reads the socket a chunk at
    a time. Errors pass on as from kombu's reader, and Celery reconnects on them.

    It does for each frame what py-amqp's ``drain_events`` does (read a frame,
    hand it to the connection's frame handler, count a method once whole),
    without the three calls and the timeout context ``drain_events`` wraps
    around every frame. docs/performance.md has what each of these saves.
    """

    LIMIT = 64

    def __init__(self, read_ahead: ReadAhead | None) -> None:
        self._read_ahead = read_ahead

    def __call__(self, connection: Any, loop: Any) -> None:
        """Read a run of messages from py-amqp's ``connection``; ``loop`` is kombu's hub."""
        if not connection.connected:
            raise RecoverableConnectionError("Socket was disconnected")
        read_frame = connection.transport.read_frame
        on_frame = connection.on_inbound_frame
        # Non-blocking for the run: py-amqp would set a timeout of 0 and restore it
        # around every frame, two system calls a frame. Writes during a run are rare
        # and small (a bad message's ack, a control reply); one that met a full send
        # buffer would fail as a connection error, and Celery reconnects.
        sock = connection.sock
        blocking = sock.gettimeout()
        sock.settimeout(0)
        read_ahead = self._read_ahead
        if read_ahead is not None:
            read_ahead.start()
        try:
            methods = 0
            while methods < self.LIMIT:
                try:
                    # Raises a timeout when not even a frame's header has come: py-amqp
                    # keeps any part of it, and the rest wakes the poll.
                    frame = read_frame()
                except TimeoutError:
                    return
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EINTR):
                        return
                    raise
                if on_frame(frame):
                    methods += 1
        finally:
            if read_ahead is not None:
                read_ahead.stop()
            with suppress(OSError):  # closed meanwhile: nothing to restore
                sock.settimeout(blocking)
        # Run again before the next poll: the socket may hold more, and py-amqp's buffer too.
        loop.call_soon(self, connection, loop)


class ReadAhead:
    """py-amqp's socket reads, at least :attr:`CHUNK` bytes at a time during a
    :class:`DrainingReader` run.

    py-amqp reads each frame with three exact ``recv`` calls (header, payload,
    end octet): nine system calls a message. It keeps whatever a read returns
    beyond what it asked for and serves its next reads from that
    (``TCPTransport._read``), so during a run its reads ask the socket for a
    chunk; outside runs they are exact, as before.

    Nothing read waits unparsed while the event loop polls the socket. A run
    ends at its limit, and runs again before the next poll; or when a read
    finds the socket empty. py-amqp reads the socket only when what it holds
    falls short of the part it is reading, and gives up only on a frame's
    header (for the rest of a frame whose header is in, it waits in the
    read). So it then holds less than a header, and the rest of that frame
    will wake the poll.

    The chunk is a middle size: each slice of py-amqp's buffer copies the
    rest of it, so a larger chunk costs copies, and a smaller one reads
    (docs/performance.md).
    """

    CHUNK = 8192

    def __init__(self, transport: Any) -> None:  # py-amqp's TCPTransport
        self._transport = transport
        exact: Callable[[int], bytes] = transport._quick_recv
        chunk = self.CHUNK
        self._exact = exact
        self._chunked: Callable[[int], bytes] = lambda wanted: exact(max(wanted, chunk))

    @classmethod
    def of(cls, transport: object) -> ReadAhead | None:
        """One for a plain-TCP py-amqp transport; None for others (TLS reads its own way)."""
        return cls(transport) if isinstance(transport, TCPTransport) else None

    def start(self) -> None:
        """Read a chunk whenever py-amqp reads the socket."""
        self._transport._quick_recv = self._chunked

    def stop(self) -> None:
        """Read exactly what py-amqp asks for, as py-amqp does on its own."""
        self._transport._quick_recv = self._exact
