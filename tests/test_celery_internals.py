"""Each private part of Celery that telemetry/worker/celery_internals.py relies on is still there.

A Celery upgrade that moves one of them fails here, by name, instead of
turning batch commits into a silent, slow per-task fallback.
"""

from __future__ import annotations

import inspect

from celery import Celery
from celery.apps import worker as celery_apps_worker
from celery.events import EventDispatcher
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
    ):
        assert callable(getattr(Consumer, name, None)), name
    assert issubclass(celery_internals.GuardedConsumer, Consumer)


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
        assert callable(dispatcher.clock.forward)
        # One message carrying a list of events, as the batch path sends them.
        celery_internals.TaskEventSender(dispatcher).send(
            [("task-succeeded", {"uuid": "u-1", "result": "'stored'", "runtime": 0.1})]
        )
        dispatcher.close()


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
