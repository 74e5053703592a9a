"""Fault injection: real workers, the real RabbitMQ and SecantusDB processes, stopped on purpose.

Each scenario checks the accounting identity with exact numbers:
published = stored + rejected + dead-lettered, with no point stored twice
(the point's ``_id`` makes a second copy impossible, so "stored" is compared
with the number of distinct points published).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from pymongo import MongoClient
from pymongo.database import Database

from telemetry.embedded import SecantusServer
from telemetry.publisher import ConfirmingPublisher
from telemetry.queues import dead_queue_name
from tests.integration.conftest import (
    REPO,
    WorkerProcess,
    cli_env,
    make_points,
    publish_points,
    queue_depth,
    wait_for,
)
from tests.integration.latency_proxy import LatencyProxy

pytestmark = pytest.mark.faults


def telemetry_cli(*args: str, env: dict[str, str], timeout_s: float = 120) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "telemetry.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def stored(database: Database[Any]) -> int:
    return database["telemetry"].count_documents({})


def assert_accounted(
    database: Database[Any],
    broker_url: str,
    queue_name: str,
    published: int,
    rejected: int = 0,
    dead: int = 0,
) -> None:
    """published = stored + rejected + dead-lettered, each exactly as expected."""
    counts = (
        stored(database),
        database["rejected"].count_documents({}),
        queue_depth(broker_url, dead_queue_name(queue_name)),
    )
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
    print(
        f"\n[{test}] published={published} stored={counts[0]} rejected={counts[1]} "
        f"dead-lettered={counts[2]}"
    )
    assert counts == (published - rejected - dead, rejected, dead)
    assert sum(counts) == published


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


MID_STREAM_POINTS = 10_000


def worker_mid_stream(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
) -> WorkerProcess:
    """A worker that has stored at least 300 of a 10,000-point backlog."""
    publish_points(publisher, make_points(MID_STREAM_POINTS))
    worker = start_worker()
    wait_for(lambda: stored(database) >= 300, 60, "some progress", lambda: stored(database))
    return worker


def drain_with_a_new_worker(
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    """A second worker stores the rest: every point once, nothing left or dead."""
    second = start_worker()
    wait_for(
        lambda: stored(database) == MID_STREAM_POINTS, 120, "all points", lambda: stored(database)
    )
    second.stop()
    assert_accounted(database, broker_url, queue_name, published=MID_STREAM_POINTS)
    assert queue_depth(broker_url, queue_name) == 0


def test_worker_killed_mid_stream_and_restarted_stores_every_point_once(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given: a backlog large enough that batch commits are still at it when killed
    first = worker_mid_stream(start_worker, publisher, database)
    # when
    first.stop(signal.SIGKILL)
    at_kill = stored(database)
    # then
    assert at_kill < MID_STREAM_POINTS
    drain_with_a_new_worker(start_worker, database, broker_url, queue_name)


def test_worker_stopped_with_sigterm_mid_stream_finishes_what_it_holds_and_loses_nothing(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given
    first = worker_mid_stream(start_worker, publisher, database)
    # when: a warm shutdown mid-stream
    exit_code = first.stop(signal.SIGTERM)
    at_stop = stored(database)
    final = first.last_stats()
    # then: a clean exit; every message is either stored or back in the queue,
    # and the worker's own count of stored points matches the database
    print(
        f"\nSIGTERM: exit {exit_code}, {at_stop} stored, {queue_depth(broker_url, queue_name)} back"
    )
    assert exit_code == 0
    assert at_stop < MID_STREAM_POINTS
    assert final["telemetry_stored"] == at_stop
    assert at_stop + queue_depth(broker_url, queue_name) >= MID_STREAM_POINTS
    drain_with_a_new_worker(start_worker, database, broker_url, queue_name)


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
    dead = dead_queue_name(queue_name)
    wait_for(
        lambda: queue_depth(broker_url, dead) == 100,
        120,
        "100 dead letters",
        lambda: queue_depth(broker_url, dead),
    )
    disk_server.start()
    env = cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name)
    listing = telemetry_cli("dlq", "list", "--limit", "3", env=env)
    replayed = telemetry_cli("dlq", "replay", env=env)
    # then
    assert listing.startswith(f"100 dead-lettered message(s) in {dead}\n")
    assert "[rejected from " in listing and "StorageUnavailable" in listing
    assert replayed.startswith(f"Replayed 100 message(s) to {queue_name}; 0 left")
    wait_for(
        lambda: stored(disk_database) == 400, 120, "all 400 points", lambda: stored(disk_database)
    )
    again = telemetry_cli("dlq", "replay", env=env)
    assert again.startswith("Replayed 0 message(s)")
    worker.stop()
    stats = worker.last_stats()
    print(f"\nworker statistics: {stats}")
    assert stats["dead_lettered"] == 100
    assert stats["retries"] == 200
    assert_accounted(disk_database, broker_url, queue_name, published=400)


def test_dead_letters_can_be_shown_and_purged(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    broker_url: str,
    queue_name: str,
) -> None:
    # given: three dead letters from a worker whose database never answers
    start_worker(
        mongodb_uri="mongodb://127.0.0.1:1/?retryWrites=false",
        max_retries="1",
        retry_backoff_s="0.1",
        mongo_timeout_ms="200",
    )
    ids = publish_points(publisher, make_points(3))
    dead = dead_queue_name(queue_name)
    wait_for(lambda: queue_depth(broker_url, dead) == 3, 60, "3 dead letters")
    env = cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name)
    # when
    shown = telemetry_cli("dlq", "show", ids[1], env=env)
    refused = subprocess.run(
        [sys.executable, "-m", "telemetry.cli", "dlq", "purge"],
        env=env,
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    after_refusal = queue_depth(broker_url, dead)
    purged = telemetry_cli("dlq", "purge", "--yes", env=env)
    # then
    assert f'"task_id": "{ids[1]}"' in shown and '"x-death"' in shown
    assert refused.returncode == 1 and after_refusal == 3
    assert purged.startswith(f"Purged 3 message(s) from {dead}")
    assert queue_depth(broker_url, dead) == 0


def test_dlq_commands_say_so_when_the_broker_is_unreachable() -> None:
    env = cli_env(CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:1//", TELEMETRY_QUEUE="nowhere")
    result = subprocess.run(
        [sys.executable, "-m", "telemetry.cli", "dlq", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()  # a JSON log line: stderr is not a terminal
    assert json.loads(line)["message"].startswith("cannot reach the broker at amqp://guest:**@")


def test_duplicates_are_stored_once_and_counted(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given: 1000 points, the first 100 of them published twice
    points = make_points(1000)
    publish_points(publisher, points + points[:100])
    # when
    worker = start_worker()
    wait_for(lambda: '"messages_processed": 1100' in worker.log(), 90, "1100 messages")
    worker.stop()
    # then
    stats = worker.last_stats()
    print(f"\nworker statistics: {stats}")
    assert (stats["telemetry_stored"], stats["duplicates"]) == (1000, 100)
    assert_accounted(database, broker_url, queue_name, published=1000)


def test_poison_and_garbage_are_counted_and_nothing_loops(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given
    valid = make_points(10)
    bad_points = [
        dict(valid[0], labels_raw="x" * 1_000_000),
        dict(valid[1], value=float("nan")),
        dict(valid[2], value=float("inf")),
        dict(valid[3], timestamp="9999-12-31T23:59:59Z"),
        dict(valid[4], timestamp="1969-07-20T20:17:00Z"),
    ]
    raw_bodies: list[tuple[bytes, str, dict[str, Any]]] = [
        (b"this is not json", "application/json", {"task": "telemetry.ingest", "id": "p-1"}),
        (b'{"wrong": "shape"}', "application/json", {"task": "telemetry.ingest", "id": "p-2"}),
        (b'"a string"', "application/json", {"task": "telemetry.ingest", "id": "p-3"}),
        (b"[[], [], {}]", "application/json", {"task": "telemetry.ingest", "id": "p-4"}),
        (
            b"\x80\x04K\x01.",
            "application/x-python-serialize",
            {"task": "telemetry.ingest", "id": "p-5"},
        ),
        (b"<point/>", "application/xml", {"task": "telemetry.ingest", "id": "p-6"}),
        (b"[[], {}, {}]", "application/json", {"id": "p-7"}),
    ]
    unknown_task = (b"[[], {}, {}]", "application/json", {"task": "telemetry.nope", "id": "p-8"})
    worker = start_worker()
    # when
    publish_points(publisher, bad_points)
    with Connection(broker_url) as connection:
        producer = connection.Producer()
        for body, content_type, headers in [*raw_bodies, unknown_task]:
            producer.publish(
                body,
                exchange=queue_name,
                routing_key=queue_name,
                content_type=content_type,
                content_encoding="utf-8",
                headers=headers,
            )
    publish_points(publisher, valid[5:])
    # then: the worker is alive and stores what came after the garbage
    wait_for(lambda: stored(database) == 5, 60, "the 5 valid points after the garbage")
    wait_for(
        lambda: database["rejected"].count_documents({}) == 12,
        60,
        "12 rejected",
        lambda: database["rejected"].count_documents({}),
    )
    dead = dead_queue_name(queue_name)
    wait_for(lambda: queue_depth(broker_url, dead) == 1, 30, "the unknown task dead-lettered")
    time.sleep(1)
    worker.stop()
    stats = worker.last_stats()
    print(f"\nworker statistics: {stats}")
    assert worker.process.returncode == 0
    assert stats["queue_delivered"] == 5 + 12 + 1, "each message was delivered exactly once"
    assert (stats["messages_errors"], stats["dead_lettered"]) == (12, 1)
    assert_accounted(database, broker_url, queue_name, published=5 + 12 + 1, rejected=12, dead=1)
    assert queue_depth(broker_url, queue_name) == 0
    huge = database["rejected"].find_one({"reason": {"$regex": "^labels_raw"}})
    assert huge is not None and huge["truncated"] is True


def channel_unacked() -> int:
    """The most unacked messages on any one AMQP channel, as RabbitMQ's channels count them.

    The channel's own count is the one its prefetch limit applies to; a queue's
    count lags behind acks the channel has already processed.
    """
    output = subprocess.run(
        ["rabbitmqctl", "-q", "list_channels", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    counts = [int(line) for line in output.split() if line.isdigit()]
    return max(counts, default=0)


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
            peak_unacked = max(peak_unacked, channel_unacked())
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
    assert queue_depth(broker_url, queue_name) + stored(database) == 20_000


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def test_broker_restarted_mid_stream_every_confirmed_point_is_stored(
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
    broker_url: str,
    queue_name: str,
    tmp_path: Path,
) -> None:
    # given: a worker, and a streamer sending 3000 points at 300/s
    worker = start_worker()
    env = cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name)
    log = (tmp_path / "streamer.log").open("w")
    streamer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "telemetry.cli",
            "stream",
            "--loop",
            "--limit",
            "3000",
            "--rate",
            "300",
            "--no-progress",
            str(REPO / "telemetry/data/dcgm_metrics_20250718_134233.csv"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    # when: RabbitMQ's application stops for a few seconds mid-stream
    try:
        time.sleep(3)
        rabbitmqctl("stop_app")
        time.sleep(3)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    # then
    assert streamer.wait(timeout=180) == 0, (tmp_path / "streamer.log").read_text()
    log.close()
    output = (tmp_path / "streamer.log").read_text()
    assert "confirmed by the broker: 3,000" in output
    wait_for(
        lambda: stored(database) == 3000,
        180,
        "all 3000 points",
        lambda: (stored(database), queue_depth(broker_url, queue_name), worker.log()[-4000:]),
    )
    worker.stop()
    assert_accounted(database, broker_url, queue_name, published=3000)
