"""What the consumer does before any handler (telemetry/worker/celery/intake.py and bodies.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker.consumer import Consumer

from telemetry.worker.celery.bodies import body_shape_problem, decode_plain_json
from telemetry.worker.celery.intake import GuardedConsumer
from telemetry.worker.celery.message import OfferedMessage
from telemetry.worker.celery.strategy import ConsumerPort


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
        decode_plain_json(fast)
        assert fast._decoded_cache is not None  # taken by the fast path
        assert fast.decode() == _json_message(body).decode()


def test_kombu_envelopes_and_bad_bodies_are_left_to_kombu() -> None:
    import datetime

    from kombu.exceptions import DecodeError

    enveloped = _json_message(
        '[[], {"at": {"__type__": "datetime", "__value__": "2025-07-18T20:42:34+00:00"}}, {}]'
    )
    decode_plain_json(enveloped)
    assert enveloped._decoded_cache is None
    assert isinstance(enveloped.decode()[1]["at"], datetime.datetime)
    broken = _json_message("[[], {")
    decode_plain_json(broken)
    assert broken._decoded_cache is None
    with pytest.raises(DecodeError):
        broken.decode()


def test_a_taker_is_offered_its_task_messages_before_celerys_handler() -> None:
    from types import SimpleNamespace

    consumer = GuardedConsumer.__new__(GuardedConsumer)
    consumer.on_task_message = set()
    consumer.connection_errors = ()
    offered: list[Any] = []

    def take(message: OfferedMessage) -> bool:
        offered.append(message.message)
        return message.message.headers.get("retries") is None

    ConsumerPort(consumer).take_first("telemetry.ingest", take)
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
    assert body_shape_problem(message) == "a task message needs an id header"
    message.headers = {"task": "other.task", "id": "a"}
    message.body = "[[], {}, null]"
    assert body_shape_problem(message) is None


def test_an_unknown_task_is_counted_only_once_celery_has_dead_lettered_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # found by tests/test_fuzz_decoder.py: counted as dead-lettered, then Celery raised and
    # the same message was recorded as a bad one too
    class Counting(GuardedConsumer):  # type: ignore[misc]
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
