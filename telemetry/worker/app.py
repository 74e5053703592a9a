"""The Celery application and its worker flags; its start and stop hooks are in
:mod:`telemetry.worker.hooks`.

``celery -A telemetry worker`` finds :data:`app` through ``telemetry/__init__.py``.
Celery settings come from :mod:`telemetry.worker.celery_settings`, then a
``celeryconfig`` module in the working directory if there is one. Collector
settings (``INSTANCE_ID`` and friends) are read by :class:`TelemetryWorker`
when a worker starts, with its flags taking precedence over the environment;
the flags are derived from the settings declaration in :mod:`telemetry.config`.

Celery reads ``CELERY_BROKER_URL`` itself but knows nothing of its
``CELERY_BROKER_URL_FILE`` twin: :func:`_broker_url_from_file` puts the file's
URL into the app's configuration when Celery first reads it, so every
``celery -A telemetry`` command (worker, flower, inspect) connects with it.
"""

from __future__ import annotations

import logging
import math
import sys
from functools import cached_property
from types import ModuleType
from typing import Any

import click
from celery import Celery

from telemetry.broker.connect import Broker, login_refused
from telemetry.broker.retry_policy import RetryPolicy
from telemetry.broker.shards import consumed_layout, worker_layout_problem
from telemetry.config import (
    Settings,
    environment_value,
    flag_fields,
    flag_help,
    flag_name,
    load_settings,
)
from telemetry.errors import ConfigError
from telemetry.observe.logs import current_format
from telemetry.worker import celery_settings
from telemetry.worker.celery.process import (
    CELERY_DEFAULT_NODENAME,
    BaseWorker,
    TelemetryAMQP,
    import_from_working_directory,
)
from telemetry.worker.context import WorkerContext, attach_context
from telemetry.worker.hooks import WorkerHooks, configure_worker_logging
from telemetry.worker.retry_options import (
    ingest_task_of,
    log_retry_policy,
    resolve_retry_policy,
)

logger = logging.getLogger("telemetry.worker")

# The flags of ``celery -A telemetry worker``: the settings declared for the worker.
WORKER_FLAGS = flag_fields("worker")
USER_CELERY_CONFIG = "celeryconfig"


def apply_settings(
    app: Celery, settings: Settings, concurrency: int | None, retry_policy: RetryPolicy
) -> int:
    """Put the collector settings into Celery's terms, and attach the worker context built
    from them and the resolved ``retry_policy`` to ``app``; return the concurrency used."""
    threads = concurrency or settings.queue_workers
    app.conf.worker_concurrency = threads
    # Celery's prefetch is per pool slot; QUEUE_BUFFER_SIZE bounds the total unacked.
    # A batch can only fill from unacked messages, so the buffer holds two at least.
    buffered = max(settings.queue_buffer_size, 2 * settings.batch_size)
    app.conf.worker_prefetch_multiplier = max(1, math.ceil(buffered / threads))
    consumed = consumed_layout(settings, retry_policy)
    app.conf.task_queues = [topology.work_queue() for topology in consumed.topologies]
    app.conf.worker_send_task_events = settings.task_events != "off"
    # One of task_queues (with one shard: TELEMETRY_QUEUE itself).
    default_queue = consumed.work_queue_names()[0]
    app.conf.task_default_queue = default_queue
    app.conf.task_default_exchange = default_queue
    app.conf.task_default_routing_key = default_queue
    configure_broker(app, settings)
    attach_context(app, WorkerContext.start(settings, retry_policy))
    return threads


def configure_broker(app: Celery, settings: Settings) -> None:
    """Point the app's own connections (consumer, events, control broadcasts) at the
    settings' broker, with the TLS options every other broker connection gets."""
    broker = Broker.of(settings)
    app.conf.broker_url = broker.url
    app.conf.broker_use_ssl = broker.ssl_option()
    app.conf.broker_login_method = broker.login_method()


class TelemetryWorker(BaseWorker):
    """Celery's worker, started from the collector settings and its own flags."""

    def __init__(
        self, app: Celery | None = None, hostname: str | None = None, **kwargs: Any
    ) -> None:
        overrides = {name: kwargs.pop(name, None) for name in WORKER_FLAGS}
        celery_app = app or self.app
        overrides["broker_url"] = celery_app.conf.broker_url
        try:
            settings = load_settings(overrides=overrides)
            ingest = ingest_task_of(celery_app)
            retry = resolve_retry_policy(ingest, settings)
        except ConfigError as exc:
            # One clear line and a non-zero exit, not a traceback.
            print(f"telemetry worker: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        # A refused login would be retried forever, a line every few seconds: say it once.
        broker = Broker.of(settings)
        refused = None if broker.in_memory else login_refused(broker)
        problem = refused or worker_layout_problem(broker, settings, retry)
        if problem is not None:
            print(f"telemetry worker: {problem}", file=sys.stderr)
            raise SystemExit(1)
        # Now, not only when Celery asks: its start-up warnings come before that.
        configure_worker_logging(settings, kwargs.get("loglevel") or logging.WARNING)
        log_retry_policy(ingest, settings, retry)
        # Both are None unless -c / --prefetch-multiplier were given (celeryconfig
        # leaves them unset), so the collector settings decide.
        kwargs["concurrency"] = apply_settings(
            celery_app, settings, kwargs.get("concurrency"), retry
        )
        if kwargs.get("prefetch_multiplier") is None:
            kwargs["prefetch_multiplier"] = celery_app.conf.worker_prefetch_multiplier
        # Mingle broadcasts to the control mailbox at start, and gossip binds a queue to
        # every worker's events: the collector uses neither, and without them the worker's
        # account needs no right to publish to celery.pidbox (docs/security.md).
        kwargs["without_mingle"] = True
        kwargs["without_gossip"] = True
        if hostname in (None, CELERY_DEFAULT_NODENAME):
            hostname = f"telemetry@{settings.instance_id}"
        super().__init__(app=app, hostname=hostname, **kwargs)

    def json_logs(self) -> bool:
        """Whether this worker logs JSON (then its banner is a log line)."""
        return current_format() == "json"


class TelemetryCelery(Celery):  # type: ignore[misc]
    """A Celery app whose ``Worker`` is :class:`TelemetryWorker` and whose broker
    connections are :class:`~telemetry.broker.connect.BrokerConnection`."""

    amqp_cls = TelemetryAMQP

    @cached_property
    def Worker(self) -> type[TelemetryWorker]:
        """The worker class ``celery worker`` instantiates."""
        worker: type[TelemetryWorker] = self.subclass_with_self(TelemetryWorker)
        return worker


def user_celery_config() -> ModuleType | None:
    """The user's ``celeryconfig`` module from the working directory, if there is one."""
    try:
        module = import_from_working_directory(USER_CELERY_CONFIG)
    except ModuleNotFoundError as exc:
        if exc.name != USER_CELERY_CONFIG:
            raise
        return None
    return module


def celery_options(module: ModuleType) -> dict[str, Any]:
    """The Celery settings a config module defines (lower-case public names)."""
    return {
        name: value
        for name, value in vars(module).items()
        if name.islower() and not name.startswith("_") and not isinstance(value, ModuleType)
    }


def worker_flag(field: str) -> click.Option:
    """The ``celery worker`` flag of one setting (``--batch-size`` for ``batch_size``)."""
    annotation = Settings.model_fields[field].annotation
    # An optional number (``int | None``) is still a number on the command line.
    numeric = [kind for kind in (int, float) if annotation in (kind, kind | None)]
    flag_type = numeric[0] if numeric else str
    return click.Option(
        [flag_name(field), field], type=flag_type, default=None, help=flag_help(field)
    )


app = TelemetryCelery("telemetry", include=["telemetry.worker.tasks"])
app.config_from_object(celery_settings)
_user_config = user_celery_config()
if _user_config is not None:
    app.conf.update(celery_options(_user_config))
for _field in WORKER_FLAGS:
    app.user_options["worker"].add(worker_flag(_field))


def _broker_url_from_file(source: Any, **_: Any) -> None:
    # Celery's configuration is read lazily, on first use, so this runs in every `celery`
    # command before it connects, and never at import. The URL from CELERY_BROKER_URL is
    # the one Celery would use anyway; setting both variables is refused.
    try:
        url = environment_value("broker_url")
    except ConfigError as exc:
        # Celery would print a traceback; one line, as every command of ours says it.
        print(f"telemetry: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if url is not None:
        source.broker_url = url


app.on_after_configure.connect(_broker_url_from_file, weak=False)

hooks = WorkerHooks(app)
"""The worker's start and stop hooks, connected for :data:`app`."""
hooks.connect()
