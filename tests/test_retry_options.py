"""Which retry policy the ingest task gets: Celery's task options over the settings."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery, Task

from telemetry.broker.retry_policy import RetryPolicy
from telemetry.broker.topology import TASK_NAME
from telemetry.config import Settings, load_settings
from telemetry.errors import ConfigError
from telemetry.worker.retry_options import (
    ingest_task_of,
    resolve_retry_policy,
    shadowed_settings,
    task_retry_options,
)
from telemetry.worker.tasks import ingest_task


def ingest_task_with(annotations: Any = None) -> Task:
    """The collector's ``telemetry.ingest`` task in an app configured with ``annotations``
    as its ``task_annotations``, as a worker finds it."""
    app = Celery("retries", set_as_current=False)
    app.conf.task_annotations = annotations
    # The task is shared (Celery's default): every app registers it when it is finalized.
    assert ingest_task.name == TASK_NAME
    return ingest_task_of(app)


def test_annotations_in_dict_form_set_the_policy_and_the_settings_fill_the_rest() -> None:
    # given: the example of the issue, and a first backoff from the environment
    task = ingest_task_with({TASK_NAME: {"max_retries": 10, "retry_backoff_max": 120}})
    settings = load_settings(env={"RETRY_BACKOFF_S": "0.5"})
    # when
    policy = resolve_retry_policy(task, settings)
    # then
    assert policy == RetryPolicy(
        max_retries=10, retry_backoff_s=0.5, retry_backoff_max_s=120, retry_jitter=True
    )


def test_annotations_for_every_task_count_too() -> None:
    task = ingest_task_with({"*": {"retry_backoff": 2, "retry_jitter": False}})
    policy = resolve_retry_policy(task, load_settings(env={}))
    assert (policy.retry_backoff_s, policy.retry_jitter) == (2.0, False)


def test_annotations_of_another_task_leave_the_policy_to_the_settings() -> None:
    task = ingest_task_with({"other.task": {"max_retries": 1}})
    assert resolve_retry_policy(task, load_settings(env={})) == RetryPolicy(5, 1.0, 60.0)


def test_options_set_on_the_task_count_like_annotations() -> None:
    # given: a task declared with retry options, as the decorator takes them
    app = Celery("retries", set_as_current=False)

    @app.task(name="probe", shared=False, max_retries=7, retry_backoff_max=9)  # type: ignore[untyped-decorator]
    def probe() -> None:
        """Never run: only its options are read."""

    task = app.tasks["probe"]
    # when
    policy = resolve_retry_policy(task, load_settings(env={}))
    assert (policy.max_retries, policy.retry_backoff_max_s) == (7, 9.0)


def test_celerys_own_task_defaults_are_not_the_collectors_policy(settings: Settings) -> None:
    # Celery's Task says max_retries = 3 and no backoff; the collector's defaults stand.
    task = ingest_task_with()
    assert task.max_retries == 3
    assert task_retry_options(task) == {}
    assert resolve_retry_policy(task, settings) == RetryPolicy.of(settings)


def test_retry_backoff_true_means_one_second_as_in_celery() -> None:
    task = ingest_task_with({TASK_NAME: {"retry_backoff": True}})
    settings = load_settings(env={"RETRY_BACKOFF_S": "5"})
    assert resolve_retry_policy(task, settings).retry_backoff_s == 1.0


def test_max_retries_none_retries_without_end() -> None:
    task = ingest_task_with({TASK_NAME: {"max_retries": None}})
    policy = resolve_retry_policy(task, load_settings(env={"MAX_RETRIES": "2"}))
    assert policy.max_retries is None
    assert not policy.gives_up(1000)


def test_a_task_option_wins_over_a_variable_given_and_says_so() -> None:
    # given: both name the number of retries, and the first backoff agrees
    task = ingest_task_with({TASK_NAME: {"max_retries": 10, "retry_backoff": 0.5}})
    settings = load_settings(env={"MAX_RETRIES": "4", "RETRY_BACKOFF_S": "0.5"})
    # when
    policy = resolve_retry_policy(task, settings)
    shadowed = shadowed_settings(task, settings)
    # then
    assert policy.max_retries == 10
    assert shadowed == ["max_retries=10 over MAX_RETRIES=4"]


def test_a_flag_loses_to_a_task_option_too() -> None:
    task = ingest_task_with({TASK_NAME: {"max_retries": 10}})
    settings = load_settings(env={}, overrides={"max_retries": 1})
    assert resolve_retry_policy(task, settings).max_retries == 10
    assert shadowed_settings(task, settings) == ["max_retries=10 over MAX_RETRIES=1"]


def test_a_default_setting_under_a_task_option_is_not_reported(settings: Settings) -> None:
    task = ingest_task_with({TASK_NAME: {"max_retries": 10, "retry_backoff_max": 120}})
    assert shadowed_settings(task, settings) == []


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_retries", -1),
        ("max_retries", "3"),
        ("max_retries", 2.5),
        ("max_retries", True),
        ("retry_backoff", False),
        ("retry_backoff", 0),
        ("retry_backoff", "1"),
        ("retry_backoff_max", -5),
        ("retry_backoff_max", 0),
        ("retry_jitter", "yes"),
    ],
)
def test_a_bad_task_option_stops_with_one_line_naming_it(option: str, value: object) -> None:
    task = ingest_task_with({TASK_NAME: {option: value}})
    with pytest.raises(ConfigError, match=f"invalid task option {option}="):
        resolve_retry_policy(task, load_settings(env={}))
