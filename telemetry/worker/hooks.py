"""The worker's start and stop hooks (Celery's signals), and what they start and stop.

:class:`WorkerHooks` connects them for one app: the worker's logging; the
pool processes' own contexts; the dead-letter and retry queues and the
indexes at start; the statistics reporter; the metrics and health
endpoints; the in-flight gauge around each task. Everything they use comes
from the worker context on the app (:mod:`telemetry.worker.context`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, current_task, signals
from celery.worker.control import inspect_command

from telemetry.broker.shards import consumed_layout
from telemetry.config import Settings
from telemetry.errors import TelemetryError
from telemetry.observe import health, metrics
from telemetry.observe.logs import configure_logging
from telemetry.observe.stats import StatsReporter
from telemetry.worker.celery.process import pool_forks
from telemetry.worker.context import attach_context, context_of

logger = logging.getLogger("telemetry.worker")


def _task_fields() -> dict[str, object]:
    """The id of the task this thread is running, for every log line it writes."""
    if not current_task:
        return {}
    return {"task_id": current_task.request.id}


def configure_worker_logging(settings: Settings, level: int | str) -> None:
    """Every log line of the worker, Celery's and Python warnings included, through one handler."""
    configure_logging(settings.instance_id, settings.log_format, level, context=_task_fields)
    logging.captureWarnings(True)


class WorkerHooks:
    """The start and stop hooks of ``app``'s worker, with the reporter and endpoints they run."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.reporter: StatsReporter | None = None
        self.endpoints: health.HealthServer | None = None
        self.consumer: Any = None

    def connect(self) -> None:
        """Connect every hook to its Celery signal."""
        # Strong references: Celery keeps weak ones by default, and these are bound methods.
        for signal, hook in (
            (signals.setup_logging, self.on_setup_logging),
            (signals.worker_process_init, self.on_worker_process_init),
            (signals.celeryd_after_setup, self.on_worker_after_setup),
            (signals.worker_ready, self.on_worker_ready),
            (signals.worker_shutting_down, self.on_worker_shutting_down),
            (signals.worker_shutdown, self.on_worker_shutdown),
            (signals.task_prerun, self.on_task_prerun),
            (signals.task_postrun, self.on_task_postrun),
            (signals.worker_process_shutdown, self.on_pool_process_exit),
        ):
            signal.connect(hook, weak=False)

    def on_setup_logging(self, loglevel: int | None = None, **_: Any) -> None:
        """With a receiver for this signal Celery configures no logging of its own."""
        configure_worker_logging(context_of(self.app).settings, loglevel or logging.WARNING)

    def on_worker_process_init(self, **_: Any) -> None:
        """A forked pool process gets its own store (pymongo is not fork-safe), GPU cache
        and counters, made after the pool's metrics went to files (see
        :meth:`on_worker_after_setup`)."""
        attach_context(self.app, context_of(self.app).for_pool_process())

    def on_worker_after_setup(self, instance: Any, **_: Any) -> None:
        """Start the metrics and health endpoints: ``celery worker`` only (not the embedded
        demo), in the main process, before the pool forks."""
        context = context_of(instance.app)
        recorder = context.recorder
        self.endpoints = health.start_worker_endpoints(
            context.settings,
            pool_forks(instance.pool_cls),
            lambda: health.check_consumer_connection(self.consumer),
            lambda: recorder.metrics.registry,
        )
        if metrics.multiprocess_dir() is not None:
            # The consumer counts here too (arrivals, batches in flight): into the files now.
            recorder.renew_metrics()

    def on_worker_ready(self, sender: Any, **_: Any) -> None:
        """Declare the dead-letter and retry queues, ensure the indexes, start reporting."""
        self.consumer = sender
        context = context_of(sender.app)
        settings = context.settings
        consumed = consumed_layout(settings, context.retry_policy)
        try:
            with sender.connection_for_write() as connection:
                consumed.declare(connection.default_channel)
        except (TelemetryError, *sender.connection_errors, *sender.channel_errors) as exc:
            # Logged, not fatal: the worker still consumes, and the next start declares them.
            logger.error("Could not declare the dead-letter and retry queues: %s", exc)
        try:
            context.store().ensure_indexes()
        except TelemetryError as exc:
            # Not fatal: the first write ensures them again, and retries until it can.
            logger.error("MongoDB not ready at start-up, indexes will be created later: %s", exc)
        self.reporter = StatsReporter(
            context.recorder.stats, settings.instance_id, settings.stats_interval_s
        )
        self.reporter.start()
        logger.info(
            "Collector %s consuming %s, dead letters to %s, MongoDB database %r",
            settings.instance_id,
            ", ".join(repr(name) for name in consumed.work_queue_names()),
            ", ".join(repr(topology.dead_name) for topology in consumed.topologies),
            settings.mongodb_db,
        )

    def on_worker_shutting_down(self, sig: str = "", how: str = "", **_: Any) -> None:
        """Log the shutdown and what asked for it."""
        logger.info("%s shutdown on %s", how, sig, extra={"signal": sig, "shutdown": how.lower()})

    def on_worker_shutdown(self, **_: Any) -> None:
        """The last statistics line, then the endpoints stop."""
        if self.reporter is not None:
            self.reporter.stop()
        health.stop_worker_endpoints(self.endpoints)
        self.endpoints = None

    def on_task_prerun(self, sender: Any, **_: Any) -> None:
        """A task started: one more message in flight."""
        context_of(sender.app).recorder.in_flight_inc()

    def on_task_postrun(self, sender: Any, **_: Any) -> None:
        """A task ended: one message fewer in flight."""
        context_of(sender.app).recorder.in_flight_dec()

    def on_pool_process_exit(self, pid: int, **_: Any) -> None:
        """Drop an exited pool process's in-flight gauge."""
        metrics.mark_process_dead(pid)


@inspect_command()  # type: ignore[untyped-decorator]
def telemetry_stats(state: Any) -> dict[str, Any]:
    """This worker's collector counters (``celery -A telemetry inspect telemetry_stats``)."""
    context = context_of(state.consumer.app)
    settings = context.settings
    return {
        "instance_id": settings.instance_id,
        "queue": settings.queue_name,
        **context.recorder.stats.snapshot(),
    }
