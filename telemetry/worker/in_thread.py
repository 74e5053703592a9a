"""A worker run in a thread of this process (``telemetry demo``), with the same task code
as ``celery -A telemetry worker``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from telemetry.config import Settings, masked
from telemetry.errors import TelemetryError
from telemetry.worker.app import app, apply_settings
from telemetry.worker.celery.process import stoppable_worker_thread
from telemetry.worker.context import WorkerContext, context_of
from telemetry.worker.retry_options import ingest_task_of, resolve_retry_policy


@contextmanager
def worker_in_thread(
    settings: Settings, threads: int, task_events: bool
) -> Iterator[WorkerContext]:
    """Run a worker with ``threads`` pool threads until the block ends (warm shutdown).

    The block gets the worker's context (its store and counters). ``task_events`` False
    sends no task events for Flower, whatever the settings say.
    """
    app.conf.broker_url = settings.broker_url
    retry_policy = resolve_retry_policy(ingest_task_of(app), settings)
    concurrency = apply_settings(app, settings, threads, retry_policy)
    context = context_of(app)
    if not task_events:
        app.conf.worker_send_task_events = False
    ready = threading.Event()
    worker = app.WorkController(
        pool_cls="threads",
        concurrency=concurrency,
        loglevel="WARNING",
        hostname=f"telemetry@{settings.instance_id}",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        ready_callback=lambda consumer: ready.set(),
    )
    thread = threading.Thread(target=worker.start, name="embedded-worker", daemon=True)
    with stoppable_worker_thread() as stop_worker:
        thread.start()
        if not ready.wait(30):
            raise TelemetryError(
                f"the embedded worker did not start on {masked(settings.broker_url)}"
            )
        try:
            yield context
        finally:
            stop_worker()
            thread.join(60)
