"""Messages Celery cannot decode: recorded, counted and acked, or dead-lettered."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker.consumer import Consumer

from telemetry.broker.retry_policy import RetryPolicy
from telemetry.config import load_settings
from telemetry.errors import RejectionKind, StorageUnavailable
from telemetry.observe.stats import Stats
from telemetry.store.mongo import MongoTelemetryStore
from telemetry.worker.consumer import TelemetryConsumer, message_id, raw_body
from telemetry.worker.context import WorkerContext, attach_context


class FakeMessage:
    """Just what the consumer reads of a kombu message, and what it did to it."""

    def __init__(self, body: bytes, headers: dict[str, Any]) -> None:
        self.body = body
        self.headers = headers
        self.properties: dict[str, Any] = {}
        self.acked = False
        self.rejected: bool | None = None

    @property
    def acknowledged(self) -> bool:
        return self.acked or self.rejected is not None

    def ack(self) -> None:
        self.acked = True

    def reject(self, requeue: bool = False) -> None:
        self.rejected = requeue


def consumer_on(context: WorkerContext) -> TelemetryConsumer:
    """A consumer object without a connection, on an app that carries ``context``."""
    consumer = TelemetryConsumer.__new__(TelemetryConsumer)
    consumer.app = SimpleNamespace()
    attach_context(consumer.app, context)
    return consumer


@pytest.fixture
def bare_consumer(worker_context: WorkerContext) -> TelemetryConsumer:
    """A consumer with the test's worker context; only its bad-message handlers are used."""
    return consumer_on(worker_context)


def test_malformed_json_is_recorded_counted_and_acked(
    bare_consumer: TelemetryConsumer, mock_store: MongoTelemetryStore, stats: Stats
) -> None:
    # given
    message = FakeMessage(b'{"point": ', {"task": "telemetry.ingest", "id": "bad-1"})
    # when: it arrives, and Celery cannot decode it
    bare_consumer.on_arrival(message)
    bare_consumer.on_decode_error(message, ValueError("Expecting value"))
    # then
    assert message.acked
    record = mock_store.database["rejected"].find_one()
    assert record is not None
    assert record["message_id"] == "bad-1"
    assert record["raw"] == '{"point": '
    assert record["reason"] == "cannot decode body: Expecting value"
    assert record["kind"] == "undecodable"
    assert stats.snapshot()["messages_errors"] == 1
    assert stats.snapshot()["queue_delivered"] == 1


def test_bad_message_is_dead_lettered_when_it_cannot_be_recorded(
    bare_consumer: TelemetryConsumer,
    stats: Stats,
    monkeypatch: pytest.MonkeyPatch,
    mock_store: MongoTelemetryStore,
) -> None:
    def down(*_: Any) -> None:
        raise StorageUnavailable("recording rejected message: timed out")

    monkeypatch.setattr(mock_store, "record_rejected", down)
    message = FakeMessage(b"\xff\xfe", {})
    bare_consumer.on_unknown_message(None, message)
    assert message.rejected is False and not message.acked
    assert stats.snapshot()["dead_lettered"] == 1


def test_binary_body_is_kept_as_text() -> None:
    message = FakeMessage(b"ok \xff", {"id": "x"})
    assert raw_body(message) == "ok \ufffd"
    assert message_id(message) == "x"


def test_only_the_collectors_task_gets_a_message_handler(
    bare_consumer: TelemetryConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from telemetry.worker.tasks import app  # the task module registers telemetry.ingest

    # given: Celery's handlers for every registered task, its built-in ones included
    def every_task(consumer: Any) -> None:
        consumer.strategies.update({name: object() for name in app.tasks})

    monkeypatch.setattr(Consumer, "update_strategies", every_task)
    bare_consumer.strategies = {}
    assert {"celery.map", "celery.chord_unlock", "celery.backend_cleanup"} <= set(app.tasks)
    # when
    bare_consumer.update_strategies()
    # then: a message naming any other task finds no handler (an unknown task)
    assert set(bare_consumer.strategies) == {"telemetry.ingest"}


def test_an_oversize_body_is_recorded_by_its_start_and_acked(
    bare_consumer: TelemetryConsumer, mock_store: MongoTelemetryStore, stats: Stats
) -> None:
    # given
    message = FakeMessage(b"[" * 5_000_000, {"task": "telemetry.ingest", "id": "big-1"})
    # when
    bare_consumer.on_bad_message(message, "message body of 5000000 is over", RejectionKind.OVERSIZE)
    # then
    assert message.acked
    record = mock_store.database["rejected"].find_one()
    assert record is not None
    assert (record["kind"], record["message_id"], record["truncated"]) == (
        "oversize",
        "big-1",
        True,
    )
    assert stats.snapshot()["messages_errors"] == 1


def test_the_body_bound_is_the_max_message_bytes_setting() -> None:
    settings = load_settings(env={"MAX_MESSAGE_BYTES": "4096"})
    context = WorkerContext.start(settings, RetryPolicy.of(settings))
    assert consumer_on(context).max_body_length() == 4096
    assert load_settings(env={}).max_message_bytes == 262_144
