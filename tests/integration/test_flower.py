"""Flower, as an operator runs it, against a real worker and the real RabbitMQ."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.topology import dead_queue_name
from telemetry.demo.embedded import SecantusServer
from tests.integration.conftest import make_points, publish_points, queue_depth
from tools.launchers import FlowerProcess, WorkerProcess, wait_for


def test_flower_shows_stored_invalid_and_failed_points_apart(
    start_worker: Callable[..., WorkerProcess],
    flower: FlowerProcess,
    publisher: ConfirmingPublisher,
    broker_url: str,
    queue_name: str,
    tmp_path: Path,
) -> None:
    # given: a worker with a database of its own (stopped later) and no retries, seen by Flower
    server = SecantusServer(":memory:", log_path=tmp_path / "db.log")
    server.start()
    instance = f"flower-{uuid.uuid4().hex[:8]}"
    node = f"telemetry@{instance}"
    worker = start_worker(mongodb_uri=server.uri, instance_id=instance, max_retries="0")
    wait_for(lambda: flower.sees_online(node), 30, "Flower to see the worker", flower.log)
    points = make_points(9)
    try:
        # when: valid and invalid points, then valid ones while the database is down
        stored = publish_points(publisher, points[:4])
        invalid = publish_points(
            publisher,
            [
                dict(points[4], gpu_uuid=""),
                dict(points[5], value="NaN"),
                dict(points[6], timestamp="yesterday"),
            ],
        )
        wait_for(
            lambda: len(flower.tasks(workername=node, state="SUCCESS")) == 7,
            30,
            "7 successful tasks in Flower",
            lambda: flower.tasks(workername=node),
        )
        server.stop()
        failed = publish_points(publisher, points[7:])
        wait_for(
            lambda: len(flower.tasks(workername=node, state="FAILURE")) == 2,
            60,
            "2 failed tasks in Flower",
            lambda: flower.tasks(workername=node),
        )
    finally:
        server.stop()
    # then: each task has the state and result an operator is told to look for
    tasks = flower.tasks(workername=node)
    assert set(tasks) == {*stored, *invalid, *failed}
    assert {(tasks[i]["state"], tasks[i]["result"]) for i in stored} == {("SUCCESS", "'stored'")}
    assert {tasks[i]["state"] for i in invalid} == {"SUCCESS"}
    assert all(tasks[i]["result"].startswith("'rejected: ") for i in invalid), [
        tasks[i]["result"] for i in invalid
    ]
    assert {tasks[i]["state"] for i in failed} == {"FAILURE"}
    assert all(tasks[i]["exception"].startswith("StorageUnavailable(") for i in failed)
    # … the task page shows the result and exception columns (flowerconfig.py)
    page = flower.get("/tasks")
    assert '<th data-column="result">' in page and '<th data-column="exception">' in page
    # … and the README's search words find exactly them
    assert set(flower.tasks(workername=node, search="result:stored")) == set(stored)
    assert set(flower.tasks(workername=node, search="result:rejected")) == set(invalid)
    assert set(flower.tasks(workername=node, search="state:FAILURE")) == set(failed)
    # (received events are not counted: with batch commits a message that leaves
    # its batch for the per-task path, invalid or failing, is received twice)
    events = flower.event_counts(node)
    assert (events["task-succeeded"], events["task-failed"]) == (7, 2)
    assert queue_depth(broker_url, dead_queue_name(queue_name)) == 2
    # and every line the worker wrote is a JSON log line naming it
    assert worker.stop() == 0
    lines = [json.loads(line) for line in worker.log().splitlines()]
    assert {line["instance_id"] for line in lines} == {instance}
    assert worker.last_stats()["dead_lettered"] == 2
