"""A batch's task events (telemetry/worker/celery/events.py) read as Celery's own."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from celery.events import Event

from telemetry.worker.celery.events import (
    EventSource,
    SettledMessage,
    TaskEventSender,
    render_task_events,
)


def test_rendered_task_events_carry_what_celerys_own_events_carry() -> None:
    source = EventSource("probe@host", 4321, -3600)
    headers = {
        "id": "u-1",
        "argsrepr": "()",
        "kwargsrepr": "{'point': 'GPU-1 \"util\" \\ \u00e9 @ now'}",
        "root_id": "r-1",
        "parent_id": None,
    }
    odd = {"argsrepr": ["not", "text"], "kwargsrepr": 7, "root_id": None}
    settled = [
        SettledMessage("u-1", headers, 100.25, "'stored'"),
        SettledMessage("u-2", odd, 101.5, "'duplicate'"),
    ]
    rendered = json.loads(render_task_events("telemetry.ingest", settled, 0.125, source, 10, 102.0))
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


def test_the_event_exchange_is_declared_once_per_channel() -> None:
    from threading import Lock

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
    sender = TaskEventSender(dispatcher)
    settled = [SettledMessage("u-1", {}, 1.0, "'stored'")]
    for _ in range(2):
        sender.send_settled("telemetry.ingest", settled, 0.1)
    producer.channel = object()  # a reconnect: a new channel
    sender.send_settled("telemetry.ingest", settled, 0.1)
    assert [call["declare"] for call in published] == [
        [dispatcher.exchange],
        [],
        [dispatcher.exchange],
    ]
