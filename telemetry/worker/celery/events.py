"""Flower's task events for a batch: what Celery's worker would send for each task it settles."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

from celery.utils.saferepr import saferepr
from celery.utils.time import utcoffset

logger = logging.getLogger("telemetry.celery")

# Celery's routing key for a message that carries a list of events.
MULTI_EVENT_ROUTING_KEY = "task.multi"


class SettledMessage(NamedTuple):
    """A message a batch settled, as its two task events describe it (stage 5)."""

    task_id: str
    headers: Mapping[str, Any]  # its protocol-2 headers
    received_at: float  # wall clock, when the consumer took it
    result_text: str  # as Celery shows results (:func:`result_text`)


class TaskEventSender:
    """Sends a batch's task events as one event message, as Celery's buffered events are sent.

    Flower (through Celery's event receiver) accepts a message whose body is
    a list of events. For each settled task the batch sends the
    ``task-received`` and ``task-succeeded`` events Celery's own worker would
    send, with the same fields. Events are advisory: a failure to send them
    is logged, never raised into the ingest path.
    """

    def __init__(self, dispatcher: Any) -> None:  # Celery's EventDispatcher, or None
        self._dispatcher = dispatcher
        # The channel the event exchange was last declared on: declaring it once per
        # channel is all RabbitMQ needs, and kombu's own "declare once" check copies
        # the exchange on every publish, work done for every batch for nothing.
        self._declared_on: object = None

    @property
    def enabled(self) -> bool:
        """Whether the worker sends task events at all (``-E``, on by default here)."""
        return bool(self._dispatcher is not None and self._dispatcher.enabled)

    def send_settled(
        self, task_name: str, settled: Sequence[SettledMessage], runtime_s: float
    ) -> None:
        """A ``task-received`` event for each of ``settled``, then a ``task-succeeded`` for each.

        The batch takes its run of Lamport clock values under one lock, and
        the JSON text is rendered directly (:func:`render_task_events`): the
        events' fields are fixed and nearly all text, so building a dict per
        event only to encode it again is work each point of every batch would
        pay (docs/performance.md has the cost).
        """
        if not self.enabled or not settled:
            return
        dispatcher = self._dispatcher
        clock = dispatcher.clock
        with clock.mutex:
            first_clock = clock.value + 1
            clock.value += 2 * len(settled)
        body = render_task_events(
            task_name,
            settled,
            runtime_s,
            EventSource(dispatcher.hostname, dispatcher.pid, utcoffset()),
            first_clock,
            time.time(),
        )
        self._publish(body, len(settled) * 2)

    def _publish(self, body: str, count: int) -> None:
        dispatcher = self._dispatcher
        options: dict[str, str] = {"content_type": "application/json", "content_encoding": "utf-8"}
        if dispatcher.serializer != "json":
            # Another event serializer configured: the same events, encoded its way.
            options = {"serializer": dispatcher.serializer}
            body = json.loads(body)
        try:
            with dispatcher.mutex:
                producer = dispatcher.producer
                if producer is None:
                    return
                channel = producer.channel
                producer.publish(
                    body,
                    routing_key=MULTI_EVENT_ROUTING_KEY,
                    exchange=dispatcher.exchange.name,
                    declare=[dispatcher.exchange] if channel is not self._declared_on else [],
                    headers=dispatcher.headers,
                    delivery_mode=dispatcher.delivery_mode,
                    **options,
                )
                self._declared_on = channel
        except Exception as exc:  # advisory: never fail the ingest path over an event
            logger.warning("Could not send %d task events: %s", count, exc)


class EventSource(NamedTuple):
    """The fields ``celery.events.Event`` adds to every event of this worker."""

    hostname: str
    pid: int
    utcoffset: int


def _json_text(value: object) -> str:
    """``value`` as JSON: strings (nearly every header) without the encoder's set-up."""
    if type(value) is str:
        return encode_basestring_ascii(value)
    if value is None:
        return "null"
    return json.dumps(value, default=repr)


def render_task_events(
    task_name: str,
    settled: Sequence[SettledMessage],
    runtime_s: float,
    source: EventSource,
    first_clock: int,
    now: float,
) -> str:
    """The JSON list of events :meth:`TaskEventSender.send_settled` sends, as text.

    The fields are those Celery's worker sends: ``task-received`` with the
    task's name, argument summaries, root and parent ids, retries, eta and
    expires (both None for a batched message); ``task-succeeded`` with the
    result text and the run time; each with type, timestamp, clock, hostname,
    utcoffset and pid. ``tests/test_celery_events.py`` checks them against
    Celery's ``Event``.
    """
    common = (
        f',"hostname":{_json_text(source.hostname)},'
        f'"utcoffset":{int(source.utcoffset)},"pid":{int(source.pid)}}}'
    )
    name = _json_text(task_name)
    texts: list[str] = []
    clock = first_clock
    for task in settled:
        headers = task.headers
        texts.append(
            f'{{"type":"task-received","uuid":{_json_text(task.task_id)},"name":{name},'
            f'"args":{_json_text(headers.get("argsrepr", ""))},'
            f'"kwargs":{_json_text(headers.get("kwargsrepr", ""))},'
            f'"root_id":{_json_text(headers.get("root_id"))},'
            f'"parent_id":{_json_text(headers.get("parent_id"))},'
            f'"retries":0,"eta":null,"expires":null,'
            f'"timestamp":{float(task.received_at)!r},"clock":{clock}{common}'
        )
        clock += 1
    finished = f',"runtime":{float(runtime_s)!r},"timestamp":{float(now)!r}'
    for task in settled:
        texts.append(
            f'{{"type":"task-succeeded","uuid":{_json_text(task.task_id)},'
            f'"result":{_json_text(task.result_text)}{finished},"clock":{clock}{common}'
        )
        clock += 1
    return "[" + ",".join(texts) + "]"


# Celery's default resultrepr_maxsize: how long a result text in an event may be.
RESULT_REPR_MAX_CHARS = 1024


def result_text(result: object) -> str:
    """A task result as Celery writes it into a ``task-succeeded`` event."""
    text: str = saferepr(result, RESULT_REPR_MAX_CHARS)
    return text
