"""The Celery application, its worker flags and its start and stop hooks.

``celery -A telemetry worker`` finds :data:`app` through ``telemetry/__init__.py``.
Celery settings come from the top-level ``celeryconfig`` module; collector
settings (``INSTANCE_ID`` and friends) are read by :class:`TelemetryWorker`
when a worker starts, with its flags taking precedence over the environment.
"""

from __future__ import annotations

import logging
import math
import sys
from functools import cached_property
from typing import Any

import click
from celery import Celery, signals
from celery.apps.worker import Worker
from celery.utils.nodenames import default_nodename, host_format
from celery.worker.control import inspect_command

from telemetry import runtime
from telemetry.config import Settings, load_settings
from telemetry.errors import ConfigError, TelemetryError
from telemetry.queues import dead_queue_name, declare_topology, work_queue
from telemetry.stats import STATS, StatsReporter, log_stats_as_bare_json

logger = logging.getLogger("telemetry.worker")

# What `celery worker` passes when -n is not given; INSTANCE_ID decides instead.
CELERY_DEFAULT_NODENAME = host_format(default_nodename(None))

# Flags of ``celery -A telemetry worker``, each overriding its environment variable.
WORKER_FLAGS: dict[str, tuple[type, str]] = {
    "instance_id": (str, "Collector instance name; the node name is telemetry@<id>. [INSTANCE_ID]"),
    "batch_size": (int, "Points per database commit. [BATCH_SIZE]"),
    "max_concurrent_handlers": (
        int,
        "Most MongoDB operations in flight. [MAX_CONCURRENT_HANDLERS]",
    ),
    "queue_buffer_size": (int, "Most messages held unacked (prefetch). [QUEUE_BUFFER_SIZE]"),
    "queue_workers": (int, "Worker threads, unless -c is given. [QUEUE_WORKERS]"),
    "mongodb_uri": (str, "MongoDB connection URI. [MONGODB_URI]"),
    "mongodb_db": (str, "MongoDB database name. [MONGODB_DB]"),
    "queue_name": (str, "Queue to consume; dead letters go to <name>.dead. [TELEMETRY_QUEUE]"),
    "max_retries": (int, "Storage retries before dead-lettering. [MAX_RETRIES]"),
    "stats_interval_s": (float, "Seconds between statistics lines. [STATS_INTERVAL_S]"),
}


def apply_settings(app: Celery, settings: Settings, concurrency: int | None) -> int:
    """Put the collector settings into Celery's terms; return the concurrency used."""
    threads = concurrency or settings.queue_workers
    app.conf.worker_concurrency = threads
    # Celery's prefetch is per pool slot; QUEUE_BUFFER_SIZE bounds the total unacked.
    app.conf.worker_prefetch_multiplier = max(1, math.ceil(settings.queue_buffer_size / threads))
    app.conf.task_queues = [work_queue(settings.queue_name)]
    app.conf.task_default_queue = settings.queue_name
    app.conf.task_default_exchange = settings.queue_name
    app.conf.task_default_routing_key = settings.queue_name
    runtime.configure(settings)
    return threads


class TelemetryWorker(Worker):  # type: ignore[misc]
    """Celery's worker, started from the collector settings and its own flags."""

    def __init__(
        self, app: Celery | None = None, hostname: str | None = None, **kwargs: Any
    ) -> None:
        overrides = {name: kwargs.pop(name, None) for name in WORKER_FLAGS}
        overrides["broker_url"] = (app or self.app).conf.broker_url
        try:
            settings = load_settings(overrides=overrides)
        except ConfigError as exc:
            # One clear line and a non-zero exit, not a traceback.
            print(f"telemetry worker: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        celery_app = app or self.app
        # Both are None unless -c / --prefetch-multiplier were given (celeryconfig
        # leaves them unset), so the collector settings decide.
        kwargs["concurrency"] = apply_settings(celery_app, settings, kwargs.get("concurrency"))
        if kwargs.get("prefetch_multiplier") is None:
            kwargs["prefetch_multiplier"] = celery_app.conf.worker_prefetch_multiplier
        if settings.batch_size > 1:
            logger.warning(
                "BATCH_SIZE=%d accepted, but batch commits are not built yet: "
                "each point is written on its own",
                settings.batch_size,
            )
        if hostname in (None, CELERY_DEFAULT_NODENAME):
            hostname = f"telemetry@{settings.instance_id}"
        super().__init__(app=app, hostname=hostname, **kwargs)


class TelemetryCelery(Celery):  # type: ignore[misc]
    """A Celery app whose ``Worker`` is :class:`TelemetryWorker`."""

    @cached_property
    def Worker(self) -> type[Worker]:
        """The worker class ``celery worker`` instantiates."""
        worker: type[Worker] = self.subclass_with_self(TelemetryWorker)
        return worker


app = TelemetryCelery("telemetry", include=["telemetry.tasks"])
app.config_from_object("celeryconfig")
for _name, (_type, _help) in WORKER_FLAGS.items():
    app.user_options["worker"].add(
        click.Option(["--" + _name.replace("_", "-")], type=_type, default=None, help=_help)
    )

_reporter: StatsReporter | None = None


def _on_worker_ready(sender: Any, **_: Any) -> None:
    global _reporter
    settings = runtime.current_settings()
    try:
        with sender.connection_for_write() as connection:
            declare_topology(connection.default_channel, settings.queue_name)
    except (*sender.connection_errors, *sender.channel_errors) as exc:
        # Logged, not fatal: the worker still consumes, and the next start declares it.
        logger.error("Could not declare the dead-letter queue: %s", exc)
    try:
        runtime.store().ensure_indexes()
    except TelemetryError as exc:
        # Not fatal: the first write ensures them again, and retries until it can.
        logger.error("MongoDB not ready at start-up, indexes will be created later: %s", exc)
    log_stats_as_bare_json()
    _reporter = StatsReporter(STATS, settings.instance_id, settings.stats_interval_s)
    _reporter.start()
    logger.info(
        "Collector %s consuming %r, dead letters to %r, MongoDB database %r",
        settings.instance_id,
        settings.queue_name,
        dead_queue_name(settings.queue_name),
        settings.mongodb_db,
    )


def _on_worker_shutdown(**_: Any) -> None:
    if _reporter is not None:
        _reporter.stop()


signals.worker_ready.connect(_on_worker_ready)
signals.worker_shutdown.connect(_on_worker_shutdown)


@inspect_command()  # type: ignore[untyped-decorator]
def telemetry_stats(state: Any) -> dict[str, Any]:
    """This worker's collector counters (``celery -A telemetry inspect telemetry_stats``)."""
    settings = runtime.current_settings()
    return {"instance_id": settings.instance_id, "queue": settings.queue_name, **STATS.snapshot()}
