"""Fault injection on the messages: duplicates, poison and garbage, dead letters.

Against real workers, the real RabbitMQ and SecantusDB processes.

Each scenario checks the accounting identity with exact numbers:
published = stored + rejected + dead-lettered, with no point stored twice
(the point's ``_id`` makes a second copy impossible, so "stored" is compared
with the number of distinct points published).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from pymongo.database import Database

from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.topology import dead_queue_name
from tests.integration.conftest import (
    cli_env,
    confirming,
    make_points,
    publish_points,
    queue_depth,
)
from tests.integration.faults_support import assert_accounted, run_cli, stored
from tools.launchers import WorkerProcess, wait_for

pytestmark = pytest.mark.faults


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
        # Over the 65,536 characters labels_raw may have, under MAX_MESSAGE_BYTES.
        dict(valid[0], labels_raw="x" * 100_000),
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
    with confirming(broker_url) as connection:
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
    shown = run_cli("dlq", "show", ids[1], env=env)
    refused = subprocess.run(
        [sys.executable, "-m", "telemetry.cli", "dlq", "purge"],
        env=env,
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    after_refusal = queue_depth(broker_url, dead)
    purged = run_cli("dlq", "purge", "--yes", env=env)
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
    assert json.loads(line)["message"].startswith("cannot use the broker at amqp://guest:***@")
