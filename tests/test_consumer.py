"""Messages Celery cannot decode: recorded, counted and acked, or dead-lettered."""

from __future__ import annotations

from typing import Any

import pytest

from telemetry.errors import StorageUnavailable
from telemetry.observe.stats import Stats
from telemetry.store.mongo import MongoTelemetryStore
from telemetry.worker import consumer as consumer_module
from telemetry.worker.consumer import TelemetryConsumer, message_id, raw_body


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


@pytest.fixture
def bare_consumer(
    monkeypatch: pytest.MonkeyPatch, mock_store: MongoTelemetryStore, stats: Stats
) -> TelemetryConsumer:
    """A consumer object without a connection; only its bad-message handlers are used."""
    monkeypatch.setattr(consumer_module.runtime, "store", lambda: mock_store)
    monkeypatch.setattr(consumer_module, "STATS", stats)
    return TelemetryConsumer.__new__(TelemetryConsumer)


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
