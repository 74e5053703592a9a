"""Sharded work queues on the shared broker: routing by GPU, a worker's subset of shards,
the dead-letter tools and ``telemetry stats`` across shards, and changing the shard count
from 1 to 3 with no point lost or stored twice."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from kombu import Connection
from pymongo.database import Database

from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.shards import ShardLayout, shard_index
from tests.integration.conftest import (
    cli_env,
    confirming,
    declared_shards,
    make_points,
    publish_points,
    queue_depth,
)
from tests.integration.faults_support import run_cli, stored
from tools.launchers import REPO, WorkerProcess, telemetry_command, wait_for, wait_for_count

SAMPLE = REPO / "telemetry" / "data" / "dcgm_metrics_20250718_134233.csv"


def sharded_publisher(broker_url: str, layout: ShardLayout) -> ConfirmingPublisher:
    sender = ConfirmingPublisher(Connection(broker_url), layout)
    sender.open()
    return sender


def depths(broker_url: str, layout: ShardLayout) -> list[int]:
    return [queue_depth(broker_url, name) for name in layout.work_queue_names()]


def test_each_gpus_points_wait_in_its_shard_and_a_worker_drains_only_the_shards_it_is_given(
    broker_url: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
) -> None:
    # given: 600 points of 30 GPUs published to 3 shards, no worker yet
    layout = declared_shards(queue_name, QUEUE_SHARDS="3")
    points = make_points(600, gpus=30)
    sender = sharded_publisher(broker_url, layout)
    publish_points(sender, points)
    sender.close()
    expected = [sum(1 for p in points if shard_index(p["gpu_uuid"], 3) == i) for i in range(3)]
    assert all(expected), "the sample GPUs must reach every shard"
    assert depths(broker_url, layout) == expected
    # when: a worker consumes shards 0 and 2 only
    first = start_worker(queue_shards="3", worker_shards="0,2")
    wait_for_count(lambda: stored(database), expected[0] + expected[2], "shards 0 and 2")
    # then: shard 1 still holds every one of its points
    assert depths(broker_url, layout) == [0, expected[1], 0]
    # when: a worker of every shard joins
    start_worker(queue_shards="3")
    # then: every point is stored once and every shard is empty
    wait_for_count(lambda: stored(database), len(points), "every point")
    assert depths(broker_url, layout) == [0, 0, 0]
    assert [queue_depth(broker_url, t.dead_name) for t in layout.topologies] == [0, 0, 0]
    assert f"consuming '{queue_name}.0-of-3', '{queue_name}.2-of-3'," in first.log()
    # and: `telemetry stats` shows each shard's depth and dead letters
    env = cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name, QUEUE_SHARDS="3")
    shown = json.loads(run_cli("stats", "--json", env=env))["queues"]
    assert shown == {name: 0 for t in layout.topologies for name in (t.queue_name, t.dead_name)}


def test_changing_from_one_shard_to_three_drains_the_old_queue_and_stores_each_point_once(
    broker_url: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
) -> None:
    # given: the single queue holds 400 points, published before its workers were stopped
    old = declared_shards(queue_name)
    new = declared_shards(queue_name, QUEUE_SHARDS="3")
    old_points, new_points = make_points(700)[:400], make_points(700)[400:]
    sender = sharded_publisher(broker_url, old)
    publish_points(sender, old_points)
    sender.close()
    # then: a worker told 3 shards but not to drain the old queue refuses, in one line
    refused = start_worker(queue_shards="3", wait=False)
    wait_for(lambda: refused.process.poll() is not None, 60, "the worker to refuse")
    assert refused.process.returncode == 1
    assert "QUEUE_SHARDS=3, but the broker's queue" in refused.log()
    assert "DRAIN_QUEUE_SHARDS=1" in refused.log()
    # and so does a producer told 3 shards while nobody consumes them
    producer = cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name, QUEUE_SHARDS="3")
    result = telemetry_command("stream", "--limit", "5", "--no-progress", str(SAMPLE), env=producer)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "in use with 1 shard(s) (400 message(s) waiting" in result.stderr
    # when: workers on 3 shards drain the old queue too, an old producer still sends 100
    # points to it, and the new producers send theirs to the shards
    draining = start_worker(queue_shards="3", drain_queue_shards="1")
    sender = sharded_publisher(broker_url, old)
    publish_points(sender, make_points(800)[700:])
    sender.close()
    switched = sharded_publisher(broker_url, new)
    publish_points(switched, new_points)
    switched.close()
    run_cli("stream", "--limit", "200", "--no-progress", str(SAMPLE), env=producer)
    # then: every point is stored once, and the old queue and the shards are empty
    wait_for_count(lambda: stored(database), 800 + 200, "every point")
    assert queue_depth(broker_url, queue_name) == 0
    assert depths(broker_url, new) == [0, 0, 0]
    assert database["rejected"].count_documents({}) == 0
    dead = [old.topologies[0].dead_name, *(t.dead_name for t in new.topologies)]
    assert [queue_depth(broker_url, name) for name in dead] == [0, 0, 0, 0]
    # and: once drained, workers on 3 shards start without draining (the last step)
    draining.stop()
    start_worker(queue_shards="3")


def dead_letter(broker_url: str, layout: ShardLayout, shard: int, point: dict[str, Any]) -> None:
    """Put one point's task message straight into a shard's dead letters."""
    topology = layout.topologies[shard]
    message = build_task_message(point, None)
    with confirming(broker_url) as connection:
        connection.Producer().publish(
            message.body,
            exchange=topology.dead_queue().exchange.name,
            routing_key=topology.dead_name,
            headers=message.headers,
            serializer="json",
            **message.properties,
        )


def test_the_dead_letter_tools_list_every_shard_and_replay_one_shard_into_its_own_queue(
    broker_url: str, queue_name: str
) -> None:
    # given: dead letters in shards 0 (two) and 2 (one) of 3
    layout = declared_shards(queue_name, QUEUE_SHARDS="3")
    sender = sharded_publisher(broker_url, layout)  # declares the layout
    sender.close()
    for shard, point in [(0, 0), (0, 1), (2, 2)]:
        dead_letter(broker_url, layout, shard, make_points(3)[point])
    env = cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name, QUEUE_SHARDS="3")
    # when / then: the list counts each shard's
    listed = run_cli("dlq", "list", env=env)
    for name, count in zip([t.dead_name for t in layout.topologies], [2, 0, 1], strict=True):
        assert f"{count} dead-lettered message(s) in {name}" in listed
    assert "1 dead-lettered message(s)" in run_cli("dlq", "list", "--shard", "2", env=env)
    # when: shard 0's are replayed
    replayed = run_cli("dlq", "replay", "--shard", "0", env=env)
    # then: they are back in shard 0's work queue, and shard 2's still wait
    assert f"Replayed 2 message(s) to {layout.work_queue_names()[0]}" in replayed
    assert depths(broker_url, layout) == [2, 0, 0]
    assert [queue_depth(broker_url, t.dead_name) for t in layout.topologies] == [0, 0, 1]
    # and: a shard that does not exist is refused in one line
    missing = telemetry_command("dlq", "list", "--shard", "3", env=env)
    assert missing.returncode == 2
    assert "there is no shard 3: QUEUE_SHARDS=3 numbers them 0 to 2" in missing.stderr


def test_a_retried_point_goes_back_to_its_own_shard_and_dies_there(
    broker_url: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # given: a worker of 3 shards whose database refuses every connection, 1 retry
    layout = declared_shards(queue_name, QUEUE_SHARDS="3")
    start_worker(
        queue_shards="3",
        mongodb_uri="mongodb://127.0.0.1:1/?directConnection=true",
        mongo_timeout_ms="250",
        max_retries="1",
        retry_backoff_s="0.2",
        retry_backoff_max_s="0.2",
    )
    points = make_points(30, gpus=30)
    # when: 30 points of 30 GPUs are published
    sender = sharded_publisher(broker_url, layout)
    publish_points(sender, points)
    sender.close()
    # then: each is retried through its shard's delay queue and dead-lettered in its shard
    expected = [sum(1 for p in points if shard_index(p["gpu_uuid"], 3) == i) for i in range(3)]
    wait_for(
        lambda: [queue_depth(broker_url, t.dead_name) for t in layout.topologies] == expected,
        120,
        "every point dead-lettered in its shard",
        lambda: [queue_depth(broker_url, t.dead_name) for t in layout.topologies],
    )
    env = cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name, QUEUE_SHARDS="3")
    for index, topology in enumerate(layout.topologies):
        shown = run_cli("dlq", "list", "--shard", str(index), env=env)
        gpus = {line.split()[3] for line in shown.splitlines()[1:]}
        assert gpus == {p["gpu_uuid"] for p in points if shard_index(p["gpu_uuid"], 3) == index}
        assert f"from {topology.queue_name} x1" in shown
        # Its death record shows the detour through this shard's own delay queue.
        task_id = shown.splitlines()[1].split()[0]
        record = run_cli("dlq", "show", task_id, "--shard", str(index), env=env)
        assert f'"queue": "{topology.queue_name}.retry.200ms"' in record
