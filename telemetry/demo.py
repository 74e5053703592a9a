"""``telemetry demo``: the whole pipeline in one process tree, with no servers installed.

An embedded SecantusDB server (a separate process) stands in for MongoDB,
kombu's in-memory transport for RabbitMQ, and a Celery worker runs in a
thread of this process with the same task code as ``celery -A telemetry
worker``. ``CELERY_BROKER_URL`` and ``MONGODB_URI``, when set, are used instead.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery.worker import state as worker_state

from telemetry import runtime
from telemetry.celery_app import app, apply_settings
from telemetry.config import Settings
from telemetry.embedded import SecantusServer
from telemetry.errors import TelemetryError
from telemetry.progress import ProgressBar
from telemetry.stats import STATS, stats_line
from telemetry.storage import MongoTelemetryStore
from telemetry.streamer import StreamOptions, StreamReport, run_stream

DEMO_WORKER_THREADS = 4


@contextmanager
def embedded_worker(settings: Settings, threads: int = DEMO_WORKER_THREADS) -> Iterator[None]:
    """Run a Celery worker in a thread of this process until the block ends (warm shutdown)."""
    app.conf.broker_url = settings.broker_url
    # Nobody watches events in the demo, and the in-memory broker would only keep them.
    app.conf.worker_send_task_events = False
    concurrency = apply_settings(app, settings, threads)
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
    thread.start()
    if not ready.wait(30):
        raise TelemetryError(f"the embedded worker did not start on {settings.broker_url}")
    try:
        yield
    finally:
        worker_state.should_stop = 0
        thread.join(60)
        worker_state.should_stop = None


def wait_until_settled(
    expected: int, show_progress: bool, stop: threading.Event, timeout_s: float = 300.0
) -> bool:
    """Wait until the worker has brought ``expected`` messages to an outcome."""
    progress = ProgressBar(expected, "storing  ", unit="points") if show_progress else None
    deadline = time.monotonic() + timeout_s
    while True:
        counts = STATS.snapshot()
        settled = counts["messages_processed"] + counts["dead_lettered"]
        if progress is not None:
            progress.update(min(settled, expected))
        if settled >= expected:
            break
        if stop.is_set() or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if progress is not None:
        progress.finish()
    return settled >= expected


def print_tables(store: MongoTelemetryStore, gpus_shown: int = 3) -> None:
    """GPUs per host, and the latest value of each metric for a few GPUs."""
    database = store.database
    hosts = Counter(
        doc.get("hostname") or "(unknown)" for doc in database["gpus"].find({}, {"hostname": 1})
    )
    print(f"\nGPUs per host ({len(hosts)} hosts, {sum(hosts.values())} GPUs)")
    for host, count in sorted(hosts.items()):
        print(f"  {host:<40} {count:>4}")
    uuids = sorted(doc["_id"] for doc in database["gpus"].find({}, {"_id": 1}))[:gpus_shown]
    for uuid in uuids:
        gpu = database["gpus"].find_one({"_id": uuid}) or {}
        print(
            f"\nLatest values of {uuid} ({gpu.get('model_name', '?')} "
            f"on {gpu.get('hostname', '?')})"
        )
        for metric in sorted(database["telemetry"].distinct("metric_name", {"gpu_uuid": uuid})):
            latest: dict[str, Any] | None = database["telemetry"].find_one(
                {"gpu_uuid": uuid, "metric_name": metric}, sort=[("timestamp", -1)]
            )
            if latest is not None:
                print(
                    f"  {metric:<36} {latest['value']:>12g}   "
                    f"{latest['timestamp']:%Y-%m-%d %H:%M:%S}"
                )


def check_stored(report: StreamReport, store: MongoTelemetryStore, since: datetime) -> bool:
    """Every valid row stored: confirmed = stored + duplicates, nothing failed, and the
    database holds as many new points as the worker says it stored."""
    counts = STATS.snapshot()
    new_points = store.database["telemetry"].count_documents({"ingested_at": {"$gte": since}})
    ok = (
        report.confirmed == report.rows_sent
        and counts["telemetry_stored"] + counts["duplicates"] == report.confirmed
        and counts["messages_errors"] == 0
        and counts["dead_lettered"] == 0
        and new_points == counts["telemetry_stored"]
    )
    verdict = "OK" if ok else "INCOMPLETE"
    print(
        f"\n{verdict}: {report.rows_sent:,} points sent, {report.confirmed:,} confirmed, "
        f"{counts['telemetry_stored']:,} stored ({new_points:,} new in the database), "
        f"{counts['duplicates']:,} duplicates, {counts['messages_errors']:,} invalid, "
        f"{counts['dead_lettered']:,} dead-lettered, {report.errors:,} bad rows skipped"
    )
    return ok


def run_demo(
    settings: Settings,
    csv_path: Path,
    data_dir: Path,
    limit: int | None,
    show_progress: bool | None,
    stop: threading.Event,
) -> bool:
    """Run the pipeline over ``csv_path``; True if every valid row was stored."""
    started = time.monotonic()
    progress = show_progress if show_progress is not None else ProgressBar.wanted()
    server: SecantusServer | None = None
    if not os.environ.get("MONGODB_URI"):
        data_dir.mkdir(parents=True, exist_ok=True)
        server = SecantusServer(data_dir.resolve(), log_path=data_dir.resolve() / "secantus.log")
        print(f"Database: embedded SecantusDB on {server.uri}, data in {data_dir.resolve()}")
        server.start()
        settings = settings.model_copy(update={"mongodb_uri": server.uri})
    else:
        print(f"Database: {settings.mongodb_uri}")
    broker = os.environ.get("CELERY_BROKER_URL") or "memory://"
    settings = settings.model_copy(update={"broker_url": broker})
    print(f"Broker:   {broker}{' (in-process)' if broker == 'memory://' else ''}")
    try:
        STATS.reset()
        since = datetime.now(UTC)
        with embedded_worker(settings):
            store = runtime.store()
            store.ensure_indexes()
            options = StreamOptions(paths=[csv_path], limit=limit, instance_id=settings.instance_id)
            report = run_stream(settings, options, show_progress=progress, stop=stop, app=app)
            wait_until_settled(report.confirmed, progress, stop)
        print(stats_line(STATS, settings.instance_id))
        print_tables(store)
        ok = check_stored(report, store, since)
        print(f"Demo finished in {time.monotonic() - started:.1f}s")
        return ok
    finally:
        runtime.STORE.reset()
        if server is not None:
            server.stop()
