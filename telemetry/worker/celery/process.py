"""The worker process: Celery's worker class, its pool, its config lookup and its connections."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from celery.app.amqp import AMQP
from celery.apps import worker as celery_apps_worker
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.utils.imports import import_from_cwd
from celery.utils.nodenames import default_nodename, host_format
from celery.worker import state as worker_state

from telemetry.broker.connect import BrokerConnection

# What `celery worker` passes as the node name when -n is not given.
CELERY_DEFAULT_NODENAME: str = host_format(default_nodename(None))


class BaseWorker(celery_apps_worker.Worker):  # type: ignore[misc]
    """Celery's ``celery worker`` class, with a JSON start-up line instead of the banner."""

    def json_logs(self) -> bool:
        """Whether this process logs JSON; then the banner and term notice are log lines."""
        return False

    def emit_banner(self) -> None:
        """Celery's banner on stdout; with JSON logs, one log line with the same facts."""
        if not self.json_logs():
            super().emit_banner()
            return
        pool = self.pool_cls if isinstance(self.pool_cls, str) else self.pool_cls.__module__
        logging.getLogger("telemetry.worker").info(
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

    def install_platform_tweaks(self, worker: Any) -> None:  # Celery's WorkController
        """Celery's signal handlers; with JSON logs, SIGTERM prints no plain-text line."""
        super().install_platform_tweaks(worker)
        if self.json_logs():
            # The shutdown is logged by the worker_shutting_down signal instead.
            celery_apps_worker.install_worker_term_handler(worker, verbose=False)


def pool_forks(pool_cls: object) -> bool:
    """Whether a worker's pool class runs tasks in forked processes."""
    return isinstance(pool_cls, type) and issubclass(pool_cls, PreforkPool)


@contextmanager
def stoppable_worker_thread() -> Iterator[Callable[[], None]]:
    """For a worker run in a thread of this process: yields ``stop()``, a warm shutdown."""

    def stop() -> None:
        worker_state.should_stop = 0

    try:
        yield stop
    finally:
        worker_state.should_stop = None


def import_from_working_directory(name: str) -> ModuleType:
    """Import module ``name`` from the working directory first, as Celery imports config."""
    module: ModuleType = import_from_cwd(name)
    return module


class TelemetryAMQP(AMQP):  # type: ignore[misc]
    """Celery's AMQP helper, making every broker connection a :class:`BrokerConnection`,
    so the worker's connections get TLS options per failover host too."""

    Connection = BrokerConnection
    BrokerConnection = BrokerConnection
