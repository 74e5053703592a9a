"""The ingest task's retry policy: Celery's task options first, the collector settings after.

Celery names a task's retry policy with four options: ``max_retries``,
``retry_backoff``, ``retry_backoff_max`` and ``retry_jitter``. Set on the task
or through ``task_annotations`` in ``celeryconfig.py``, they are the policy.
Each option left unset is taken from a setting (flag > environment > default):

* ``max_retries`` from ``MAX_RETRIES`` (or ``--max-retries``), default 5;
* ``retry_backoff`` from ``RETRY_BACKOFF_S``, default 1 s;
* ``retry_backoff_max`` from ``RETRY_BACKOFF_MAX_S``, default 60 s;
* ``retry_jitter`` has no setting: on unless the task turns it off.

Celery applies annotations to the task's class when the app binds the task,
lazily, so the options are read from the task itself, never from the
configuration: what Celery would use is what the worker uses. The worker
resolves the policy once, when it starts and the app has bound its tasks,
and keeps it in its context (:mod:`telemetry.worker.context`): the delay
queues it declares and the retries it schedules are then the same. Only options
set below Celery's ``Task`` class count; Celery's own defaults (3 retries, no
backoff) are not the collector's.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from telemetry.broker.retry_policy import RetryPolicy
from telemetry.broker.topology import TASK_NAME
from telemetry.config import ENV_NAMES, Settings
from telemetry.errors import ConfigError

logger = logging.getLogger("telemetry.worker")

RETRY_OPTIONS = ("max_retries", "retry_backoff", "retry_backoff_max", "retry_jitter")
# The setting each option is taken from when the task leaves it unset.
SETTING_OF_OPTION = {
    "max_retries": "max_retries",
    "retry_backoff": "retry_backoff_s",
    "retry_backoff_max": "retry_backoff_max_s",
}


def task_retry_options(task: object) -> dict[str, Any]:
    """The retry options set on ``task`` or on its classes below Celery's ``Task``.

    That is where the task decorator's options and ``task_annotations`` put
    them; Celery's own defaults live on ``Task`` and are left out.
    """
    found: dict[str, Any] = {}
    for owner in (task, *type(task).__mro__):
        if owner is Task:
            break
        own = vars(owner)
        for name in RETRY_OPTIONS:
            if name in own:
                found.setdefault(name, own[name])
    return found


def _invalid(name: str, value: object, expected: str) -> ConfigError:
    return ConfigError(
        f"invalid task option {name}={value!r} of the ingest task (task_annotations in "
        f"celeryconfig.py, or the task): {expected}"
    )


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise _invalid(name, value, "expected a number of seconds above 0")
    return float(value)


def _max_retries(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _invalid("max_retries", value, "expected a whole number from 0, or None")
    return value


def _backoff_s(value: object) -> float:
    # Celery reads True as a first backoff of one second.
    if value is True:
        return 1.0
    if value is False:
        raise _invalid(
            "retry_backoff", value, "the collector always backs off; give seconds, or True for 1 s"
        )
    return _seconds("retry_backoff", value)


def _jitter(value: object) -> bool:
    if not isinstance(value, bool):
        raise _invalid("retry_jitter", value, "expected True or False")
    return value


def resolve_retry_policy(task: object, settings: Settings) -> RetryPolicy:
    """The retry policy of ``task``: its options where set, the settings elsewhere.

    Raises :class:`ConfigError` with one line naming a bad option.
    """
    options = task_retry_options(task)
    fallback = RetryPolicy.of(settings)
    return RetryPolicy(
        _max_retries(options.get("max_retries", fallback.max_retries)),
        _backoff_s(options.get("retry_backoff", fallback.retry_backoff_s)),
        _seconds(
            "retry_backoff_max", options.get("retry_backoff_max", fallback.retry_backoff_max_s)
        ),
        _jitter(options.get("retry_jitter", fallback.retry_jitter)),
    )


def shadowed_settings(task: object, settings: Settings) -> list[str]:
    """Each setting given explicitly (flag or variable) that a task option overrides, as
    ``retry_backoff=0.1 over RETRY_BACKOFF_S=30.0``: worth a warning, as one is ignored."""
    options = task_retry_options(task)
    shadowed = []
    for option, field in SETTING_OF_OPTION.items():
        if option in options and field in settings.model_fields_set:
            given = getattr(settings, field)
            if options[option] != given:
                shadowed.append(f"{option}={options[option]!r} over {ENV_NAMES[field]}={given!r}")
    return shadowed


def ingest_task_of(app: Celery) -> Task:
    """The app's ingest task, bound: its module imported and Celery's annotations applied."""
    app.loader.import_default_modules()
    task: Task = app.tasks[TASK_NAME]
    return task


def log_retry_policy(task: Task, settings: Settings, policy: RetryPolicy) -> None:
    """Say at start which retry policy the worker uses, and which settings it overrides."""
    logger.info("Retries of %s: %s", TASK_NAME, policy.describe())
    for shadowed in shadowed_settings(task, settings):
        logger.warning(
            "Task option %s: task options win (docs/failure-semantics.md#retries-and-backoff)",
            shadowed,
        )
