"""The socket fast path (telemetry/worker/celery/reader.py): runs of messages, read in chunks."""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from telemetry.worker.celery.reader import DrainingReader, ReadAhead


class FakeSocket:
    """Records the timeouts it is given; blocking (None) to begin with, as py-amqp leaves it."""

    def __init__(self) -> None:
        self.timeout: float | None = None
        self.settings: list[float | None] = []

    def gettimeout(self) -> float | None:
        return self.timeout

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.settings.append(timeout)


class FakeAmqpConnection:
    """Has ``messages`` waiting on its socket, three frames each (method, header, body),
    as py-amqp's transport and frame handler see them; then reading fails as ``then`` says.
    """

    def __init__(self, messages: int, then: BaseException) -> None:
        self.connected = True
        self.sock = FakeSocket()
        self.transport = SimpleNamespace(read_frame=self.read_frame)
        self.frames_waiting = 3 * messages
        self.frames_handled = 0
        self.read = 0  # messages handed on whole
        self.then = then

    def read_frame(self) -> tuple[int, int, bytes]:
        # Never blocks the event loop; the socket is non-blocking already, so py-amqp
        # need not set and restore its timeout around each frame.
        assert self.sock.timeout == 0
        if not self.frames_waiting:
            raise self.then
        self.frames_waiting -= 1
        return (1 + self.frames_handled % 3, 1, b"")

    def on_inbound_frame(self, frame: tuple[int, int, bytes]) -> bool:
        """True once a message's last frame is in, as py-amqp's frame handler says."""
        self.frames_handled += 1
        if frame[0] == 3:
            self.read += 1
            return True
        return False


class FakeLoop:
    def __init__(self) -> None:
        self.scheduled: list[tuple[Any, ...]] = []

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.scheduled.append((callback, *args))


def test_the_draining_reader_reads_while_messages_wait_then_leaves_the_rest_to_the_poll() -> None:
    reader = DrainingReader(None)
    connection, loop = FakeAmqpConnection(5, TimeoutError()), FakeLoop()
    reader(connection, loop)
    assert connection.read == 5
    assert loop.scheduled == []  # the socket is empty: the loop's poll says when more come
    # One switch to non-blocking for the whole run, and back to blocking after it.
    assert connection.sock.settings == [0, None]


def test_the_draining_reader_takes_a_bounded_run_and_comes_back_for_more() -> None:
    reader = DrainingReader(None)
    limit = DrainingReader.LIMIT
    connection, loop = FakeAmqpConnection(limit + 10, TimeoutError()), FakeLoop()
    reader(connection, loop)
    assert connection.read == limit
    # Timers, acks and shutdown get their turn; then the reader goes on.
    assert loop.scheduled == [(reader, connection, loop)]
    reader(connection, loop)
    assert connection.read == limit + 10


def test_the_draining_reader_passes_connection_errors_on() -> None:
    from amqp.exceptions import RecoverableConnectionError

    reader = DrainingReader(None)
    would_block = FakeAmqpConnection(1, BlockingIOError(errno.EAGAIN, "no data"))
    reader(would_block, FakeLoop())
    assert would_block.read == 1
    reset = FakeAmqpConnection(2, ConnectionResetError(errno.ECONNRESET, "reset"))
    with pytest.raises(ConnectionResetError):
        reader(reset, FakeLoop())
    assert reset.sock.timeout is None  # restored on the way out
    closed = FakeAmqpConnection(0, ConnectionResetError(errno.ECONNRESET, "reset"))

    def read_then_close() -> tuple[int, int, bytes]:
        closed.sock.settimeout = broken_settimeout  # type: ignore[method-assign]
        return closed.read_frame()

    def broken_settimeout(timeout: float | None) -> None:
        raise OSError(errno.EBADF, "closed")

    closed.transport.read_frame = read_then_close
    with pytest.raises(ConnectionResetError):  # the error itself, not the restore's
        reader(closed, FakeLoop())
    gone = FakeAmqpConnection(1, TimeoutError())
    gone.connected = False
    with pytest.raises(RecoverableConnectionError):
        reader(gone, FakeLoop())
    assert gone.read == 0


class CountingSocket:
    """A real socket whose reads are counted, with the sizes asked for."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.asked: list[int] = []

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        return self._sock.recv(size)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()


def amqp_frame(number: int, size: int) -> bytes:
    """A frame as RabbitMQ sends it: type, channel, size, payload, end octet."""
    payload = (number.to_bytes(4, "big") * (size // 4 + 1))[:size]
    return struct.pack(">BHI", 3, 1, size) + payload + b"\xce"


@pytest.fixture
def reading() -> Iterator[tuple[Any, ReadAhead, CountingSocket, socket.socket]]:
    """py-amqp's own TCP transport, with a ReadAhead, reading one end of a socket pair."""
    from amqp.transport import TCPTransport

    ours, peer = socket.socketpair()
    counted = CountingSocket(ours)
    transport = TCPTransport.__new__(TCPTransport)
    transport.sock = counted
    transport.raise_on_initial_eintr = True
    transport.connected = True
    transport._setup_transport()
    read_ahead = ReadAhead.of(transport)
    assert read_ahead is not None
    try:
        yield transport, read_ahead, counted, peer
    finally:
        ours.close()
        peer.close()


def test_read_ahead_reads_frames_a_chunk_at_a_time_in_order(
    reading: tuple[Any, ReadAhead, CountingSocket, socket.socket],
) -> None:
    transport, read_ahead, counted, peer = reading
    sizes = [300 + number % 7 * 50 for number in range(200)]
    sizes[57] = ReadAhead.CHUNK * 3 + 5  # a frame bigger than a chunk
    frames = [amqp_frame(number, size) for number, size in enumerate(sizes)]
    sender = threading.Thread(target=peer.sendall, args=(b"".join(frames),))
    sender.start()
    counted.settimeout(5)
    read_ahead.start()
    got = [transport.read_frame() for _ in frames]
    sender.join()
    assert [payload for _, _, payload in got] == [frame[7:-1] for frame in frames]
    # py-amqp alone asks three times a frame (header, payload, end octet): 600 reads.
    assert all(size >= ReadAhead.CHUNK for size in counted.asked)
    assert len(counted.asked) < len(frames) // 4


def test_read_ahead_leaves_nothing_unread_in_the_buffer_once_the_run_ends(
    reading: tuple[Any, ReadAhead, CountingSocket, socket.socket],
) -> None:
    transport, read_ahead, counted, peer = reading
    frames = [amqp_frame(number, 300) for number in range(20)]
    peer.sendall(b"".join(frames))
    counted.settimeout(0)
    read_ahead.start()
    first = [transport.read_frame() for _ in range(5)]
    assert len(counted.asked) == 1  # all twenty came in one read
    # A run that ends here (at its limit) runs again before the next poll; whatever
    # reads come first are served from what was read, without the socket...
    read_ahead.stop()
    rest = [transport.read_frame() for _ in range(15)]
    assert len(counted.asked) == 1
    assert [payload for _, _, payload in first + rest] == [frame[7:-1] for frame in frames]
    # ...and then reads are exact again, as py-amqp asks for them.
    later = amqp_frame(20, 800)
    peer.sendall(later)
    counted.settimeout(5)
    assert transport.read_frame()[2] == later[7:-1]
    assert counted.asked[1:] == [7, 800, 1]
    # A run meeting the start of a frame keeps it and says the socket is empty: the
    # rest wakes the poll, and the next run reads the whole frame. (Once a header is
    # in, py-amqp waits for the payload in the read, with or without a read-ahead.)
    split = amqp_frame(21, 400)
    peer.sendall(split[:4])
    counted.settimeout(0)
    read_ahead.start()
    with pytest.raises(socket.timeout):
        transport.read_frame()
    peer.sendall(split[4:])
    assert transport.read_frame()[2] == split[7:-1]


def test_read_ahead_goes_only_in_front_of_plain_tcp_transports() -> None:
    from amqp.transport import SSLTransport

    assert ReadAhead.of(SSLTransport.__new__(SSLTransport)) is None


class FakeTransport:
    def __init__(self) -> None:
        self._quick_recv = self.exact

    def exact(self, size: int) -> bytes:
        return b""


def test_the_draining_reader_reads_ahead_only_during_its_run() -> None:
    transport = FakeTransport()
    reader = DrainingReader(ReadAhead(transport))
    during: list[bool] = []

    class Watched(FakeAmqpConnection):
        def read_frame(self) -> tuple[int, int, bytes]:
            during.append(transport._quick_recv != transport.exact)
            return super().read_frame()

    reader(Watched(3, TimeoutError()), FakeLoop())
    assert during == [True] * 10  # nine frames, then the read that found none
    assert transport._quick_recv == transport.exact
    with pytest.raises(ConnectionResetError):
        reader(Watched(1, ConnectionResetError(errno.ECONNRESET, "reset")), FakeLoop())
    assert transport._quick_recv == transport.exact
