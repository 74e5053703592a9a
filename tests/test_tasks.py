"""The ingest task: its retries follow its Celery options, and how it takes its arguments."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery, Task
from celery.exceptions import Retry

from telemetry.broker.retry_policy import RetryPolicy
from telemetry.broker.topology import TASK_NAME
from telemetry.errors import StorageUnavailable
from telemetry.store.mongo import MongoTelemetryStore
from telemetry.worker import tasks
from telemetry.worker.context import WorkerContext
from telemetry.worker.retry_options import ingest_task_of


def failed_attempt(task: Task, retries: int, point: dict[str, object]) -> BaseException:
    """What the task body raises for a message already retried ``retries`` times."""
    task.push_request(id="m-1", retries=retries)
    try:
        task.run(point=point)
    except (Retry, StorageUnavailable) as exc:
        return exc
    finally:
        task.pop_request()
    raise AssertionError("the attempt did not fail")


def test_a_storage_failure_is_retried_as_the_workers_retry_policy_says_then_given_up(
    collector_app: Celery,
    worker_context: WorkerContext,
    monkeypatch: pytest.MonkeyPatch,
    mock_store: MongoTelemetryStore,
    sample_point: dict[str, object],
) -> None:
    # given: the database is down, and the worker started with a retry policy unlike
    # the settings' defaults (as the task's options give it: tests/test_retry_options.py)
    def down(*_: Any) -> None:
        raise StorageUnavailable("storing points: connection refused")

    monkeypatch.setattr(mock_store, "upsert_gpus", down)
    monkeypatch.setattr(worker_context, "retry_policy", RetryPolicy(2, 0.1, 60.0, False))
    task = ingest_task_of(collector_app)
    retried: list[dict[str, Any]] = []

    def retry(**options: Any) -> Retry:
        retried.append(options)
        return Retry()

    monkeypatch.setattr(task, "retry", retry)
    # when: the second attempt fails, then the third
    second = failed_attempt(task, 1, sample_point)
    third = failed_attempt(task, 2, sample_point)
    # then: one retry, 0.1 s doubled once, through its delay queue; then the dead letters
    assert isinstance(second, Retry)
    assert isinstance(third, StorageUnavailable)
    [options] = retried
    assert options["max_retries"] == 2
    assert options["expiration"] == pytest.approx(0.2)
    assert options["queue"].name == "telemetry.retry.200ms"
    assert task.name == TASK_NAME


def test_a_keyword_argument_named_self_is_rejected_not_a_failed_call(
    collector_app: Celery, mock_store: MongoTelemetryStore, sample_point: dict[str, object]
) -> None:
    # found by tests/test_fuzz_decoder.py: kwargs {"self": ..., "point": ...} raised
    # TypeError (multiple values for 'self'), so the message was dead-lettered, not rejected
    result = tasks.ingest_task.run(self=1, point=sample_point)
    assert result == "rejected: unexpected task arguments: ['self']"
    record = mock_store.database["rejected"].find_one()
    assert record is not None and record["kind"] == "invalid_arguments"
