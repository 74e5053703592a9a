"""Fault injection on the database: restarted, down past the retry budget, slow.

Against real workers, the real RabbitMQ and SecantusDB processes.

Each scenario checks the accounting identity with exact numbers:
published = stored + rejected + dead-lettered, with no point stored twice
(the point's ``_id`` makes a second copy impossible, so "stored" is compared
with the number of distinct points published).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.topology import dead_queue_name
from telemetry.demo.embedded import SecantusServer
from tests.integration.conftest import cli_env, make_points, publish_points
from tests.integration.faults_support import (
    assert_accounted,
    queue_total,
    rabbitmqctl_rows,
    run_cli,
    stored,
    wait_for_dead_letters,
)
from tests.integration.latency_proxy import LatencyProxy
from tools.launchers import WorkerProcess, wait_for, wait_for_count

pytestmark = pytest.mark.faults


@pytest.fixture
def disk_server(tmp_path: Path) -> Iterator[SecantusServer]:
    """A SecantusDB server with its data on disk, so it can be stopped and started again."""
    server = SecantusServer(tmp_path / "db", log_path=tmp_path / "db.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def disk_database(disk_server: SecantusServer, database_name: str) -> Iterator[Database[Any]]:
    """This test's database on :func:`disk_server`."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        disk_server.uri, tz_aware=True, serverSelectionTimeoutMS=20_000
    )
    yield client[database_name]
    client.close()


def test_database_restarted_within_the_retry_budget_loses_nothing(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    disk_server: SecantusServer,
    disk_database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given: a worker with a retry budget of well over ten seconds
    worker = start_worker(
        mongodb_uri=disk_server.uri,
        max_retries="10",
        retry_backoff_s="0.5",
        retry_backoff_max_s="2",
    )
    points = make_points(2000)
    publish_points(publisher, points[:500])
    wait_for(lambda: stored(disk_database) >= 200, 60, "some progress")
    # when: the database goes away for three seconds while points keep coming
    disk_server.stop()
    publish_points(publisher, points[500:])
    time.sleep(3)
    disk_server.start()
    # then
    wait_for(
        lambda: stored(disk_database) == 2000, 180, "all 2000 points", lambda: stored(disk_database)
    )
    worker.stop()
    stats = worker.last_stats()
    print(f"\nworker statistics: {stats}")
    assert stats["retries"] > 0
    assert stats["dead_lettered"] == 0
    assert stats["telemetry_stored"] + stats["duplicates"] >= 2000 - 200
    assert_accounted(disk_database, broker_url, queue_name, published=2000)


def test_database_down_past_the_retry_budget_dead_letters_then_replay_stores_all(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    disk_server: SecantusServer,
    disk_database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given: a short retry budget; each attempt against a stopped server waits for the
    # server-selection time-out, so that is kept short too
    worker = start_worker(
        mongodb_uri=disk_server.uri, max_retries="2", retry_backoff_s="0.2", mongo_timeout_ms="250"
    )
    points = make_points(400)
    publish_points(publisher, points[:300])
    wait_for(lambda: stored(disk_database) == 300, 60, "the first 300 points")
    disk_server.stop()
    # when
    publish_points(publisher, points[300:])
    wait_for_dead_letters(broker_url, queue_name, 100, 120)
    disk_server.start()
    env = cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name)
    listing = run_cli("dlq", "list", "--limit", "3", env=env)
    replayed = run_cli("dlq", "replay", env=env)
    # then
    assert listing.startswith(f"100 dead-lettered message(s) in {dead_queue_name(queue_name)}\n")
    assert "[rejected from " in listing and "StorageUnavailable" in listing
    assert replayed.startswith(f"Replayed 100 message(s) to {queue_name}; 0 left")
    wait_for(
        lambda: stored(disk_database) == 400, 120, "all 400 points", lambda: stored(disk_database)
    )
    again = run_cli("dlq", "replay", env=env)
    assert again.startswith("Replayed 0 message(s)")
    worker.stop()
    stats = worker.last_stats()
    print(f"\nworker statistics: {stats}")
    assert stats["dead_lettered"] == 100
    assert stats["retries"] == 200
    assert_accounted(disk_database, broker_url, queue_name, published=400)


def channel_unacked(queue_name: str) -> int:
    """The most unacked messages on any one AMQP channel consuming ``queue_name``.

    The channel's own count is the one its prefetch limit applies to; a queue's
    count lags behind acks the channel has already processed. Only the
    channels consuming this test's queue count: the broker is shared.
    """
    pids = {
        row["channel_pid"]
        for row in rabbitmqctl_rows("list_consumers", "queue_name", "channel_pid")
        if row["queue_name"] == queue_name
    }
    return max(
        (
            int(row["messages_unacknowledged"])
            for row in rabbitmqctl_rows("list_channels", "pid", "messages_unacknowledged")
            if row["pid"] in pids
        ),
        default=0,
    )


def test_slow_database_under_a_large_backlog_keeps_worker_memory_bounded(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    mongo_server: SecantusServer,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
    record_property: Callable[[str, object], None],
) -> None:
    # given: 20,000 queued points and a database that takes 1 s per request,
    # slow enough that batch commits cannot drain the backlog within 20 s either
    publish_points(publisher, make_points(20_000))
    proxy = LatencyProxy(mongo_server.port, delay_s=1.0)
    try:
        worker = start_worker(
            # directConnection: SecantusDB names itself in its replica-set
            # reply, and pymongo would otherwise go there, around the proxy.
            mongodb_uri=f"mongodb://127.0.0.1:{proxy.port}/?retryWrites=false&directConnection=true",
            queue_buffer_size="500",
            mongo_timeout_ms="10000",
        )
        baseline_kb = worker.rss_kb()
        # when
        peak_kb, peak_unacked = baseline_kb, 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            peak_kb = max(peak_kb, worker.rss_kb())
            peak_unacked = max(peak_unacked, channel_unacked(queue_name))
            time.sleep(0.5)
        drained = stored(database)
        worker.stop()
    finally:
        proxy.close()
    # then
    record_property("worker_rss_baseline_kb", baseline_kb)
    record_property("worker_rss_peak_kb", peak_kb)
    print(
        f"\nslow DB: RSS {baseline_kb} KiB at start, peak {peak_kb} KiB; "
        f"peak unacked {peak_unacked}; {drained} of 20000 stored in 20 s"
    )
    assert 0 < drained < 20_000, "the database really was slow"
    assert peak_unacked <= 500, "prefetch bounds what a worker holds"
    assert peak_kb - baseline_kb < 64 * 1024
    # and nothing was lost: a worker on the database itself stores the rest, each point
    # once. (Counting the queue at the stop is not exact: a batch that finished during
    # the warm shutdown is stored, but its acks, queued for the consumer's loop after
    # the loop ended, never go out, so those messages come back as duplicates.)
    start_worker()
    # At BATCH_SIZE=1 this drain takes minutes on a slow machine: waited for while it moves.
    wait_for_count(lambda: stored(database), 20_000, "all points")
    wait_for_count(lambda: queue_total(queue_name), 0, "an empty queue")
    assert stored(database) == 20_000
