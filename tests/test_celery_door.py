"""Each private part of Celery, kombu and py-amqp that telemetry/worker/celery/ uses is there.

A Celery upgrade that moves one of them fails here, by name, instead of
turning batch commits into a silent, slow per-task fallback.
"""

from __future__ import annotations

import inspect
import json
import time
from typing import Any

from celery import Celery
from celery.apps import worker as celery_apps_worker
from celery.events import EventDispatcher
from celery.utils.imports import import_from_cwd
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from celery.worker.strategy import default as default_strategy
from kombu import Connection

from telemetry.worker.celery.events import SettledMessage, TaskEventSender
from telemetry.worker.celery.intake import GuardedConsumer


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
        "call_soon_ack",
        "_restore_prefetch_count_after_connection_restart",
        "update_strategies",
        "connect",
    ):
        assert callable(getattr(Consumer, name, None)), name
    assert issubclass(GuardedConsumer, Consumer)


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
            SettledMessage("u-1", {"argsrepr": "()"}, 1.5, "'stored'"),
            SettledMessage("u-2", {}, 1.6, "'duplicate'"),
        ]
        TaskEventSender(dispatcher).send_settled("telemetry.ingest", settled, 0.1)
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


def test_py_amqps_tcp_transport_reads_through_the_attribute_read_ahead_replaces() -> None:
    from amqp.transport import TCPTransport

    setup = inspect.getsource(TCPTransport._setup_transport)
    assert "self._quick_recv = self.sock.recv" in setup
    read = inspect.getsource(TCPTransport._read)
    assert "recv = self._quick_recv" in read
    # What a read returns beyond what was asked stays in the buffer for the next reads.
    assert "result, self._read_buffer = rbuf[:n], rbuf[n:]" in read


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
