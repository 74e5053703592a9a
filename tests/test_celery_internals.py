"""Each private part of Celery that telemetry/worker/celery_internals.py relies on is still there.

A Celery upgrade that moves one of them fails here, by name, instead of
turning batch commits into a silent, slow per-task fallback.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.apps import worker as celery_apps_worker
from celery.events import Event, EventDispatcher
from celery.utils.imports import import_from_cwd
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from celery.worker.strategy import default as default_strategy
from kombu import Connection

from telemetry.worker import celery_internals


def test_the_default_strategy_takes_what_the_door_passes() -> None:
    parameters = list(inspect.signature(default_strategy).parameters)
    assert parameters[:3] == ["task", "app", "consumer"]


def test_the_consumer_has_every_hook_and_helper_the_door_uses() -> None:
    for name in (
        "create_task_handler",
        "on_decode_error",
        "on_invalid_task",
        "on_unknown_message",
        "on_unknown_task",
        "connection_for_write",
        "ensure_connected",
        "call_soon",
        "connect",
    ):
        assert callable(getattr(Consumer, name, None)), name
    assert issubclass(celery_internals.GuardedConsumer, Consumer)


def test_the_consumers_timers_call_once_after_a_delay_and_can_be_cancelled() -> None:
    from celery.utils.timer2 import Timer as ThreadTimer
    from kombu.asynchronous.timer import Timer as EventLoopTimer

    # The event loop's timer (kombu's) and the one Celery uses without an event loop.
    loop_timer, calls = EventLoopTimer(), []
    loop_timer.call_after(0.01, lambda: calls.append("kept"))
    loop_timer.call_after(0.01, lambda: calls.append("dropped")).cancel()
    time.sleep(0.02)
    due = iter(loop_timer)  # what the event loop's hub takes its due entries from
    for _ in range(3):
        _, entry = next(due)
        if entry is not None:
            entry()
    assert calls == ["kept"]
    thread_timer, thread_calls = ThreadTimer(), []
    try:
        thread_timer.call_after(0.01, lambda: thread_calls.append("kept"))
        thread_timer.call_after(0.01, lambda: thread_calls.append("dropped")).cancel()
        deadline = time.monotonic() + 5
        while not thread_calls and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    finally:
        thread_timer.stop()
    assert thread_calls == ["kept"]


def test_the_event_dispatcher_has_the_attributes_a_batch_of_events_is_sent_with() -> None:
    app = Celery("probe", broker="memory://localhost/")
    with Connection("memory://localhost/") as connection:
        dispatcher = EventDispatcher(connection, hostname="probe@host", enabled=True, app=app)
        for name in (
            "mutex",
            "producer",
            "exchange",
            "clock",
            "hostname",
            "pid",
            "serializer",
            "headers",
            "delivery_mode",
            "enabled",
        ):
            assert hasattr(dispatcher, name), name
        # The batch takes its run of clock values under the clock's own lock.
        assert hasattr(dispatcher.clock, "mutex")
        before = dispatcher.clock.value
        published: list[tuple[Any, dict[str, Any]]] = []
        dispatcher.producer.publish = lambda body, **options: published.append((body, options))
        # One message carrying a list of events, as the batch path sends them.
        settled = [
            celery_internals.SettledTask("u-1", {"argsrepr": "()"}, 1.5, "'stored'"),
            celery_internals.SettledTask("u-2", {}, 1.6, "'duplicate'"),
        ]
        celery_internals.TaskEventSender(dispatcher).send_settled("telemetry.ingest", settled, 0.1)
        dispatcher.close()
    [(body, options)] = published
    assert options["routing_key"] == "task.multi"
    assert options["content_type"] == "application/json"
    events = json.loads(body)
    assert [(event["type"], event["uuid"]) for event in events] == [
        ("task-received", "u-1"),
        ("task-received", "u-2"),
        ("task-succeeded", "u-1"),
        ("task-succeeded", "u-2"),
    ]
    assert [event["clock"] for event in events] == [before + 1, before + 2, before + 3, before + 4]
    assert dispatcher.clock.value == before + 4
    assert {event["hostname"] for event in events} == {"probe@host"}


def test_rendered_task_events_carry_what_celerys_own_events_carry() -> None:
    source = celery_internals.EventSource("probe@host", 4321, -3600)
    headers = {
        "id": "u-1",
        "argsrepr": "()",
        "kwargsrepr": "{'point': 'GPU-1 \"util\" \\ \u00e9 @ now'}",
        "root_id": "r-1",
        "parent_id": None,
    }
    odd = {"argsrepr": ["not", "text"], "kwargsrepr": 7, "root_id": None}
    settled = [
        celery_internals.SettledTask("u-1", headers, 100.25, "'stored'"),
        celery_internals.SettledTask("u-2", odd, 101.5, "'duplicate'"),
    ]
    rendered = json.loads(
        celery_internals.render_task_events("telemetry.ingest", settled, 0.125, source, 10, 102.0)
    )
    common = {"hostname": "probe@host", "utcoffset": -3600, "pid": 4321}
    expected = []
    for clock, task in enumerate(settled, start=10):
        expected.append(
            Event(
                "task-received",
                uuid=task.task_id,
                name="telemetry.ingest",
                args=task.headers.get("argsrepr", ""),
                kwargs=task.headers.get("kwargsrepr", ""),
                root_id=task.headers.get("root_id"),
                parent_id=task.headers.get("parent_id"),
                retries=0,
                eta=None,
                expires=None,
                timestamp=task.received_at,
                clock=clock,
                **common,
            )
        )
    for clock, task in enumerate(settled, start=12):
        expected.append(
            Event(
                "task-succeeded",
                uuid=task.task_id,
                result=task.result_text,
                runtime=0.125,
                timestamp=102.0,
                clock=clock,
                **common,
            )
        )
    assert rendered == expected


def test_kombus_amqp_reader_is_what_the_draining_reader_stands_in_for() -> None:
    from amqp import Connection as AmqpConnection
    from kombu.transport.pyamqp import Transport

    # kombu registers its transport's on_readable(connection, loop) for the socket;
    # the consumer registers a DrainingReader for the same socket with the same arguments.
    source = inspect.getsource(Transport.register_with_event_loop)
    assert "add_reader(connection.sock, self.on_readable, connection, loop)" in source
    # What the reader does for each frame is what drain_events does: read a frame and
    # hand it to the frame handler, until the handler says a method is whole.
    drain = inspect.getsource(AmqpConnection.drain_events)
    assert "while not self.blocking_read(timeout):" in drain
    blocking_read = inspect.getsource(AmqpConnection.blocking_read)
    assert "frame = self.transport.read_frame()" in blocking_read
    assert "return self.on_inbound_frame(frame)" in blocking_read
    assert hasattr(AmqpConnection, "connected")
    assert isinstance(AmqpConnection.on_inbound_frame, property)


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
    reader = celery_internals.DrainingReader()
    connection, loop = FakeAmqpConnection(5, TimeoutError()), FakeLoop()
    reader(connection, loop)
    assert connection.read == 5
    assert loop.scheduled == []  # the socket is empty: the loop's poll says when more come
    # One switch to non-blocking for the whole run, and back to blocking after it.
    assert connection.sock.settings == [0, None]


def test_the_draining_reader_takes_a_bounded_run_and_comes_back_for_more() -> None:
    reader = celery_internals.DrainingReader()
    limit = celery_internals.DrainingReader.LIMIT
    connection, loop = FakeAmqpConnection(limit + 10, TimeoutError()), FakeLoop()
    reader(connection, loop)
    assert connection.read == limit
    # Timers, acks and shutdown get their turn; then the reader goes on.
    assert loop.scheduled == [(reader, connection, loop)]
    reader(connection, loop)
    assert connection.read == limit + 10


def test_the_draining_reader_passes_connection_errors_on() -> None:
    from amqp.exceptions import RecoverableConnectionError

    reader = celery_internals.DrainingReader()
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


class RecordingHub:
    def __init__(self) -> None:
        self.readers: dict[int, Any] = {}

    def add_reader(self, fd: int, callback: Any, *args: Any) -> None:
        self.readers[fd] = (callback, args)


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0.5)[0])


def test_a_signal_wakes_the_event_loop_at_once() -> None:
    wakeup, hub = celery_internals.SignalWakeup(), RecordingHub()
    previous_handler = signal.signal(signal.SIGUSR1, lambda number, frame: None)
    try:
        wakeup.register(hub)
        fd = wakeup.fileno
        assert fd is not None and hub.readers == {fd: (wakeup.drain, ())}
        assert not readable(fd)
        # when: a signal, as Celery's warm shutdown gets
        os.kill(os.getpid(), signal.SIGUSR1)
        # then: what the loop polls is readable, until the reader drains it
        assert readable(fd)
        wakeup.drain()
        assert not select.select([fd], [], [], 0)[0]
        # and after a reconnect the same socket is registered again
        again = RecordingHub()
        wakeup.register(again)
        assert list(again.readers) == [fd]
    finally:
        wakeup.uninstall()
        signal.signal(signal.SIGUSR1, previous_handler)
    assert signal.set_wakeup_fd(-1) == -1  # nothing left behind


def test_the_signal_wakeup_leaves_a_descriptor_set_by_someone_else() -> None:
    theirs_receiver, theirs = socket.socketpair()
    theirs.setblocking(False)
    signal.set_wakeup_fd(theirs.fileno())
    try:
        hub = RecordingHub()
        celery_internals.SignalWakeup().register(hub)
        assert hub.readers == {}
        assert signal.set_wakeup_fd(theirs.fileno()) == theirs.fileno()
    finally:
        signal.set_wakeup_fd(-1)
        theirs_receiver.close()
        theirs.close()
    # and a worker run in another thread (the demo) cannot set one at all
    hub = RecordingHub()
    elsewhere = threading.Thread(target=celery_internals.SignalWakeup().register, args=(hub,))
    elsewhere.start()
    elsewhere.join()
    assert hub.readers == {}


def test_py_amqps_tcp_transport_reads_through_the_attribute_read_ahead_replaces() -> None:
    from amqp.transport import TCPTransport

    setup = inspect.getsource(TCPTransport._setup_transport)
    assert "self._quick_recv = self.sock.recv" in setup
    read = inspect.getsource(TCPTransport._read)
    assert "recv = self._quick_recv" in read
    # What a read returns beyond what was asked stays in the buffer for the next reads.
    assert "result, self._read_buffer = rbuf[:n], rbuf[n:]" in read


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
def reading() -> Iterator[tuple[Any, celery_internals.ReadAhead, CountingSocket, socket.socket]]:
    """py-amqp's own TCP transport, with a ReadAhead, reading one end of a socket pair."""
    from amqp.transport import TCPTransport

    ours, peer = socket.socketpair()
    counted = CountingSocket(ours)
    transport = TCPTransport.__new__(TCPTransport)
    transport.sock = counted
    transport.raise_on_initial_eintr = True
    transport.connected = True
    transport._setup_transport()
    read_ahead = celery_internals.ReadAhead.of(transport)
    assert read_ahead is not None
    try:
        yield transport, read_ahead, counted, peer
    finally:
        ours.close()
        peer.close()


def test_read_ahead_reads_frames_a_chunk_at_a_time_in_order(
    reading: tuple[Any, celery_internals.ReadAhead, CountingSocket, socket.socket],
) -> None:
    transport, read_ahead, counted, peer = reading
    sizes = [300 + number % 7 * 50 for number in range(200)]
    sizes[57] = celery_internals.ReadAhead.CHUNK * 3 + 5  # a frame bigger than a chunk
    frames = [amqp_frame(number, size) for number, size in enumerate(sizes)]
    sender = threading.Thread(target=peer.sendall, args=(b"".join(frames),))
    sender.start()
    counted.settimeout(5)
    read_ahead.start()
    got = [transport.read_frame() for _ in frames]
    sender.join()
    assert [payload for _, _, payload in got] == [frame[7:-1] for frame in frames]
    # py-amqp alone asks three times a frame (header, payload, end octet): 600 reads.
    assert all(size >= celery_internals.ReadAhead.CHUNK for size in counted.asked)
    assert len(counted.asked) < len(frames) // 4


def test_read_ahead_leaves_nothing_unread_in_the_buffer_once_the_run_ends(
    reading: tuple[Any, celery_internals.ReadAhead, CountingSocket, socket.socket],
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

    assert celery_internals.ReadAhead.of(SSLTransport.__new__(SSLTransport)) is None


class FakeTransport:
    def __init__(self) -> None:
        self._quick_recv = self.exact

    def exact(self, size: int) -> bytes:
        return b""


def test_the_draining_reader_reads_ahead_only_during_its_run() -> None:
    transport = FakeTransport()
    reader = celery_internals.DrainingReader(celery_internals.ReadAhead(transport))
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


def test_worker_state_and_the_worker_class_have_what_the_door_uses() -> None:
    assert hasattr(worker_state, "should_stop")
    assert callable(celery_apps_worker.install_worker_term_handler)
    for name in ("emit_banner", "install_platform_tweaks"):
        assert callable(getattr(celery_apps_worker.Worker, name, None)), name
    assert callable(import_from_cwd)


def test_the_worker_consumer_and_strategy_are_the_telemetry_ones() -> None:
    from telemetry.worker.app import app
    from telemetry.worker.tasks import IngestTask

    assert app.conf.worker_consumer == "telemetry.worker.consumer:TelemetryConsumer"
    assert IngestTask.Strategy == "telemetry.worker.batching:batch_strategy"


class FakeChannel:
    """Records the acks sent on it."""

    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []


class FakeDelivery:
    """What Unsettled reads and calls on a kombu message."""

    def __init__(self, channel: FakeChannel, tag: int) -> None:
        self.channel = channel
        self.delivery_tag = tag
        self._state = "RECEIVED"

    @property
    def acknowledged(self) -> bool:
        return self._state != "RECEIVED"

    def ack(self, multiple: bool = False) -> None:
        assert not self.acknowledged
        self.channel.acks.append((self.delivery_tag, multiple))
        self._state = "ACK"


def delivered_on(channel: FakeChannel, tags: range) -> tuple[celery_internals.Unsettled, list[Any]]:
    unsettled = celery_internals.Unsettled(connection_errors=(OSError,))
    messages = [FakeDelivery(channel, tag) for tag in tags]
    for message in messages:
        unsettled.arrived(message)
    return unsettled, messages


def test_a_batch_at_the_front_is_settled_with_one_multiple_ack() -> None:
    channel = FakeChannel()
    unsettled, messages = delivered_on(channel, range(1, 11))
    unsettled.ack(messages[:6])
    assert channel.acks == [(6, True)]
    assert all(message.acknowledged for message in messages[:6])
    assert not any(message.acknowledged for message in messages[6:])


def test_a_multiple_ack_never_covers_a_delivery_held_elsewhere() -> None:
    channel = FakeChannel()
    unsettled, messages = delivered_on(channel, range(1, 11))
    messages[0].ack()  # settled by Celery's own path: no obstacle
    channel.acks.clear()
    # tag 4 is still held (a quarantined message, say): the run stops before it
    unsettled.ack([messages[i] for i in (1, 2, 4, 5)])
    assert channel.acks == [(3, True), (5, False), (6, False)]
    assert not messages[3].acknowledged
    # once tag 4 is settled too, the next batch runs from the front again
    unsettled.ack([messages[3]])
    unsettled.ack(messages[6:])
    assert channel.acks[-2:] == [(4, True), (10, True)]


def test_a_new_channel_starts_a_new_list() -> None:
    old, new = FakeChannel(), FakeChannel()
    unsettled, _ = delivered_on(old, range(1, 4))
    fresh = [FakeDelivery(new, tag) for tag in (1, 2)]
    for message in fresh:
        unsettled.arrived(message)
    unsettled.ack(fresh)
    assert new.acks == [(2, True)]
    assert old.acks == []


def _json_message(body: str | bytes) -> Any:
    from kombu.message import Message

    return Message(
        body=body,
        content_type="application/json",
        content_encoding="utf-8",
        accept={"application/json"},
    )


def test_a_plain_json_body_decodes_to_what_kombu_gives() -> None:
    text = '[[], {"point": {"gpu_uuid": "GPU-1", "value": 1.5}}, {"chain": null}]'
    for body in (text, text.encode()):
        fast = _json_message(body)
        celery_internals.decode_plain_json(fast)
        assert fast._decoded_cache is not None  # taken by the fast path
        assert fast.decode() == _json_message(body).decode()


def test_kombu_envelopes_and_bad_bodies_are_left_to_kombu() -> None:
    import datetime

    from kombu.exceptions import DecodeError

    enveloped = _json_message(
        '[[], {"at": {"__type__": "datetime", "__value__": "2025-07-18T20:42:34+00:00"}}, {}]'
    )
    celery_internals.decode_plain_json(enveloped)
    assert enveloped._decoded_cache is None
    assert isinstance(enveloped.decode()[1]["at"], datetime.datetime)
    broken = _json_message("[[], {")
    celery_internals.decode_plain_json(broken)
    assert broken._decoded_cache is None
    with pytest.raises(DecodeError):
        broken.decode()


def test_the_event_exchange_is_declared_once_per_channel() -> None:
    from threading import Lock
    from types import SimpleNamespace

    from kombu.clocks import LamportClock

    published: list[dict[str, Any]] = []
    producer = SimpleNamespace(channel=object(), publish=lambda body, **kw: published.append(kw))
    dispatcher = SimpleNamespace(
        enabled=True,
        clock=LamportClock(),
        hostname="probe@host",
        pid=1,
        mutex=Lock(),
        producer=producer,
        exchange=SimpleNamespace(name="celeryev"),
        serializer="json",
        headers={},
        delivery_mode=1,
    )
    sender = celery_internals.TaskEventSender(dispatcher)
    settled = [celery_internals.SettledTask("u-1", {}, 1.0, "'stored'")]
    for _ in range(2):
        sender.send_settled("telemetry.ingest", settled, 0.1)
    producer.channel = object()  # a reconnect: a new channel
    sender.send_settled("telemetry.ingest", settled, 0.1)
    assert [call["declare"] for call in published] == [
        [dispatcher.exchange],
        [],
        [dispatcher.exchange],
    ]


def test_a_taker_is_offered_its_task_messages_before_celerys_handler() -> None:
    from types import SimpleNamespace

    consumer = celery_internals.GuardedConsumer.__new__(celery_internals.GuardedConsumer)
    consumer.on_task_message = set()
    consumer.connection_errors = ()
    offered: list[Any] = []

    def take(delivered: celery_internals.Delivered) -> bool:
        offered.append(delivered.message)
        return delivered.message.headers.get("retries") is None

    celery_internals.ConsumerPort(consumer).take_first("telemetry.ingest", take)
    fresh = SimpleNamespace(headers={"task": "telemetry.ingest", "id": "a"})
    retry = SimpleNamespace(headers={"task": "telemetry.ingest", "id": "b", "retries": 1})
    other = SimpleNamespace(headers={"task": "other.task", "id": "c"})
    assert consumer._taken_first(consumer.takers, fresh) is True
    assert consumer._taken_first(consumer.takers, retry) is False  # Celery's handler next
    assert consumer._taken_first(consumer.takers, other) is False
    assert offered == [fresh, retry]


def test_a_task_message_without_an_id_header_is_a_bad_shape() -> None:
    # found by tests/test_fuzz_decoder.py: headers {"task": None} (no id) and the body b""
    # made Celery read the message as protocol 1 and raise DecodeError out of the consumer
    message = _json_message("")
    message.headers = {"task": "other.task"}
    assert celery_internals.body_shape_problem(message) == "a task message needs an id header"
    message.headers = {"task": "other.task", "id": "a"}
    message.body = "[[], {}, null]"
    assert celery_internals.body_shape_problem(message) is None


def test_an_unknown_task_is_counted_only_once_celery_has_dead_lettered_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # found by tests/test_fuzz_decoder.py: counted as dead-lettered, then Celery raised and
    # the same message was recorded as a bad one too
    class Counting(celery_internals.GuardedConsumer):  # type: ignore[misc]
        def on_unknown_task_name(self, message: Any) -> None:
            counted.append(message)

    def celery_raises(self: Any, body: Any, message: Any, exc: Exception) -> None:
        raise TypeError("list indices must be integers or slices, not str")

    counted: list[Any] = []
    monkeypatch.setattr(Consumer, "on_unknown_task", celery_raises)
    consumer = Counting.__new__(Counting)
    with pytest.raises(TypeError):
        consumer.on_unknown_task(None, SimpleNamespace(headers={}), KeyError("x"))
    assert counted == []
