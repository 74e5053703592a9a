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
from celery import Celery, current_task, signals
from celery.apps import worker as celery_worker
from celery.apps.worker import Worker
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.utils.nodenames import default_nodename, host_format
from celery.worker.control import inspect_command

from telemetry import health, metrics, runtime
from telemetry.config import Settings, load_settings
from telemetry.errors import ConfigError, TelemetryError
from telemetry.logs import configure_logging, current_format
from telemetry.queues import dead_queue_name, declare_topology, work_queue
from telemetry.stats import STATS, StatsReporter

logger = logging.getLogger("telemetry.worker")

# What `celery worker` passes when -n is not given; INSTANCE_ID decides instead.
CELERY_DEFAULT_NODENAME = host_format(default_nodename(None))

# Flags of ``celery -A telemetry worker``, each overriding its environment variable.
WORKER_FLAGS: dict[str, tuple[type, str]] = {
    "instance_id": (str, "Collector instance name; the node name is telemetry@<id>. [INSTANCE_ID]"),
    "batch_size": (int, "Points per database commit; 1 writes each on its own. [BATCH_SIZE]"),
    "flush_interval_ms": (int, "Most ms a point waits for its batch. [FLUSH_INTERVAL_MS]"),
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
    "metrics_port": (int, "Port of /metrics, /healthz, /readyz; 0 turns them off. [METRICS_PORT]"),
}


def apply_settings(app: Celery, settings: Settings, concurrency: int | None) -> int:
    """Put the collector settings into Celery's terms; return the concurrency used."""
    threads = concurrency or settings.queue_workers
    app.conf.worker_concurrency = threads
    # Celery's prefetch is per pool slot; QUEUE_BUFFER_SIZE bounds the total unacked.
    # A batch can only fill from unacked messages, so the buffer holds two at least.
    buffered = max(settings.queue_buffer_size, 2 * settings.batch_size)
    app.conf.worker_prefetch_multiplier = max(1, math.ceil(buffered / threads))
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
        # Now, not only when Celery asks: its start-up warnings come before that.
        configure_worker_logging(settings, kwargs.get("loglevel") or logging.WARNING)
        celery_app = app or self.app
        # Both are None unless -c / --prefetch-multiplier were given (celeryconfig
        # leaves them unset), so the collector settings decide.
        kwargs["concurrency"] = apply_settings(celery_app, settings, kwargs.get("concurrency"))
        if kwargs.get("prefetch_multiplier") is None:
            kwargs["prefetch_multiplier"] = celery_app.conf.worker_prefetch_multiplier
        if hostname in (None, CELERY_DEFAULT_NODENAME):
            hostname = f"telemetry@{settings.instance_id}"
        super().__init__(app=app, hostname=hostname, **kwargs)

    def emit_banner(self) -> None:
        """Celery's banner on stdout; with JSON logs, one log line with the same facts."""
        if current_format() != "json":
            super().emit_banner()
            return
        pool = self.pool_cls if isinstance(self.pool_cls, str) else self.pool_cls.__module__
        logger.info(
            "Worker %s starting",
            self.hostname,
            extra={
                "node": self.hostname,
                "broker": self.app.connection().as_uri(),
                "queues": sorted(self.app.amqp.queues),
                "concurrency": self.concurrency,
                "pool": pool.rsplit(".", 1)[-1],
                "task_events": bool(self.task_events),
            },
        )

    def install_platform_tweaks(self, worker: Any) -> None:
        """Celery's signal handlers; with JSON logs, SIGTERM prints no plain-text line."""
        super().install_platform_tweaks(worker)
        if current_format() == "json":
            # The shutdown is logged by _on_worker_shutting_down instead.
            celery_worker.install_worker_term_handler(worker, verbose=False)


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


def _task_fields() -> dict[str, object]:
    """The id of the task this thread is running, for every log line it writes."""
    if not current_task:
        return {}
    return {"task_id": current_task.request.id}


def configure_worker_logging(settings: Settings, level: int | str) -> None:
    """Every log line of the worker, Celery's and Python warnings included, through one handler."""
    configure_logging(settings.instance_id, settings.log_format, level, context=_task_fields)
    logging.captureWarnings(True)


def _on_setup_logging(loglevel: int | None = None, **_: Any) -> None:
    # With a receiver for this signal Celery configures no logging of its own.
    configure_worker_logging(runtime.current_settings(), loglevel or logging.WARNING)


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
    _reporter = StatsReporter(STATS, settings.instance_id, settings.stats_interval_s)
    _reporter.start()
    logger.info(
        "Collector %s consuming %r, dead letters to %r, MongoDB database %r",
        settings.instance_id,
        settings.queue_name,
        dead_queue_name(settings.queue_name),
        settings.mongodb_db,
    )


def _on_worker_shutting_down(sig: str = "", how: str = "", **_: Any) -> None:
    logger.info("%s shutdown on %s", how, sig, extra={"signal": sig, "shutdown": how.lower()})


def _on_worker_shutdown(**_: Any) -> None:
    if _reporter is not None:
        _reporter.stop()


signals.setup_logging.connect(_on_setup_logging)
signals.worker_ready.connect(_on_worker_ready)
signals.worker_shutting_down.connect(_on_worker_shutting_down)
signals.worker_shutdown.connect(_on_worker_shutdown)


_endpoints: health.HealthServer | None = None
_consumer: Any = None


def _on_worker_after_setup(instance: Any, **_: Any) -> None:
    # `celery worker` only (not the embedded demo), in the main process, before the pool forks.
    global _endpoints
    forks = isinstance(instance.pool_cls, type) and issubclass(instance.pool_cls, PreforkPool)
    _endpoints = health.start_worker_endpoints(
        runtime.current_settings(), forks, lambda: health.check_consumer_connection(_consumer)
    )


def _on_consumer_ready(sender: Any, **_: Any) -> None:
    global _consumer
    _consumer = sender


def _on_endpoints_shutdown(**_: Any) -> None:
    global _endpoints
    health.stop_worker_endpoints(_endpoints)
    _endpoints = None


def _on_task_prerun(**_: Any) -> None:
    metrics.in_flight_inc()


def _on_task_postrun(**_: Any) -> None:
    metrics.in_flight_dec()


def _on_pool_process_exit(pid: int, **_: Any) -> None:
    metrics.mark_process_dead(pid)


signals.celeryd_after_setup.connect(_on_worker_after_setup)
signals.worker_ready.connect(_on_consumer_ready)
signals.worker_shutdown.connect(_on_endpoints_shutdown)
signals.task_prerun.connect(_on_task_prerun)
signals.task_postrun.connect(_on_task_postrun)
signals.worker_process_shutdown.connect(_on_pool_process_exit)


@inspect_command()  # type: ignore[untyped-decorator]
def telemetry_stats(state: Any) -> dict[str, Any]:
    """This worker's collector counters (``celery -A telemetry inspect telemetry_stats``)."""
    settings = runtime.current_settings()
    return {"instance_id": settings.instance_id, "queue": settings.queue_name, **STATS.snapshot()}
