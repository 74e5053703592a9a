"""Sharded work queues on a private 3-node cluster: leaders on three nodes, and one node
killed mid-stream pausing only the shard it led.

The shared broker at 5672 is never stopped; the cluster is this module's own
(tests/integration/rabbit_support.py), so leader placement starts from an
empty cluster.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from pymongo.database import Database

from telemetry.broker.shards import ShardLayout, shard_index
from telemetry.broker.topology import dead_queue_name
from tests.integration.conftest import cli_env, delete_topologies, queue_depth, settings_for
from tests.integration.faults_support import stored
from tests.integration.rabbit_support import rabbit_cluster  # noqa: F401
from tests.integration.test_faults_broker import SAMPLE, Streamer, messages_on, renamed_sample
from tools.launchers import WorkerProcess, wait_for
from tools.rabbitmq_nodes import LocalCluster

pytestmark = pytest.mark.faults

SHARDS = 3
POINTS = 2500  # per streamer
RATE = 250  # points/s per streamer
# How long after the kill the other shards must keep storing, and by how much at least.
OTHERS_WATCHED_S = 3.0
OTHERS_LEAST_STORED = 50


def gpus_of(path: Path, prefix: str = "") -> set[str]:
    with path.open(newline="") as source:
        return {prefix + row["uuid"] for row in csv.DictReader(source)}


def stored_per_shard(database: Database[Any], shard_gpus: list[list[str]]) -> list[int]:
    points = database["telemetry"]
    return [points.count_documents({"gpu_uuid": {"$in": gpus}}) for gpus in shard_gpus]


@pytest.mark.cluster
def test_three_quorum_shards_get_their_leaders_on_three_different_nodes(
    rabbit_cluster: LocalCluster,  # noqa: F811
    queue_name: str,
) -> None:
    # given: a 3-shard layout, declared through one node (client-local would put every
    # leader there)
    layout = ShardLayout.of(settings_for(queue_name, QUEUE_SHARDS="3", QUEUE_TYPE="quorum"))
    url = rabbit_cluster.nodes[0].amqp_url
    try:
        # when
        with Connection(url) as connection:
            layout.declare(connection.channel())
        # then
        leaders = {
            name: rabbit_cluster.queue_leader(name).name for name in layout.work_queue_names()
        }
        print(f"\n[shard leaders] {leaders}")
        assert len(set(leaders.values())) == SHARDS
    finally:
        delete_topologies(url, layout.topologies)


@pytest.mark.cluster
def test_a_node_killed_mid_stream_pauses_only_the_shard_it_led_and_loses_nothing(
    rabbit_cluster: LocalCluster,  # noqa: F811
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
    queue_name: str,
    tmp_path: Path,
) -> None:
    # given: 3 quorum shards, 2 workers and 2 streamers whose failover lists start at
    # nodes 2 and 3, so that killing node 1 stops a shard's leader and no client's
    # connection: what pauses is the shard's fail-over alone
    nodes = rabbit_cluster.nodes
    victim = nodes[0]
    shard_env = {"queue_type": "quorum", "queue_shards": str(SHARDS)}
    workers = [
        start_worker(celery_broker_url=rabbit_cluster.failover_url(first=nodes[i]), **shard_env)
        for i in (1, 2)
    ]
    layout = ShardLayout.of(settings_for(queue_name, QUEUE_SHARDS="3", QUEUE_TYPE="quorum"))
    names = layout.work_queue_names()
    leaders = [rabbit_cluster.queue_leader(name) for name in names]
    assert len({leader.name for leader in leaders}) == SHARDS, [n.name for n in leaders]
    [led] = [index for index, leader in enumerate(leaders) if leader is victim]
    files = [(SAMPLE, ""), (renamed_sample(tmp_path / "second.csv", "B-"), "B-")]
    gpus = set().union(*(gpus_of(SAMPLE, prefix) for _, prefix in files))
    shard_gpus = [sorted(g for g in gpus if shard_index(g, SHARDS) == i) for i in range(SHARDS)]
    streamers = [
        Streamer(
            cli_env(
                CELERY_BROKER_URL=rabbit_cluster.failover_url(first=nodes[i + 1]),
                TELEMETRY_QUEUE=queue_name,
                QUEUE_TYPE="quorum",
                QUEUE_SHARDS=str(SHARDS),
            ),
            files[i][0],
            POINTS,
            RATE,
            tmp_path / f"streamer-{i}.log",
        )
        for i in (0, 1)
    ]
    total = 2 * POINTS
    try:
        wait_for(
            lambda: stored(database) >= 1000, 90, "some points stored", lambda: stored(database)
        )
        # when: the node leading one shard is killed with SIGKILL
        at_kill = stored_per_shard(database, shard_gpus)
        assert sum(at_kill) < total - 500, "the streams ended before the kill: not mid-stream"
        killed_at = time.monotonic()
        victim.kill()
        # then: the other shards keep storing while that one fails over
        timeline: list[tuple[float, list[int]]] = []
        while time.monotonic() - killed_at < 60:
            now = stored_per_shard(database, shard_gpus)
            timeline.append((time.monotonic() - killed_at, now))
            if timeline[-1][0] >= OTHERS_WATCHED_S and now[led] > at_kill[led] + 100:
                break
            time.sleep(0.2)
        watched = [counts for at, counts in timeline if at <= OTHERS_WATCHED_S][-1]
        others_stored = [watched[i] - at_kill[i] for i in range(SHARDS) if i != led]
        resumed_s = next(at for at, counts in timeline if counts[led] > at_kill[led] + 100)
        rabbit_cluster.ensure_running()
        # and: both streamers had every point confirmed, and every point is stored once
        for streamer in streamers:
            assert f"confirmed by the broker: {POINTS:,}" in streamer.finish()
        wait_for(
            lambda: stored(database) == total, 240, f"all {total} points", lambda: stored(database)
        )
        survivor = nodes[1]
        wait_for(
            lambda: sum(messages_on(survivor, name) for name in names) == 0,
            240,
            "empty shards",
            lambda: [messages_on(survivor, name) for name in names],
        )
        for worker in workers:
            worker.stop()
    finally:
        for streamer in streamers:
            streamer.stop()
    url = survivor.amqp_url
    counts = (
        stored(database),
        database["rejected"].count_documents({}),
        sum(queue_depth(url, dead_queue_name(name)) for name in names),
    )
    print(
        f"\n[shard node kill] leaders {[leader.name for leader in leaders]}; killed "
        f"{victim.name} (shard {led}) at {at_kill} stored per shard; other shards stored "
        f"{others_stored} more in the {OTHERS_WATCHED_S:.0f}s after; shard {led} stored again "
        f"{resumed_s:.1f}s after the kill; confirmed={total} "
        f"stored/rejected/dead-lettered={counts}"
    )
    assert all(more >= OTHERS_LEAST_STORED for more in others_stored), others_stored
    assert counts == (total, 0, 0)
    assert sum(per for per in stored_per_shard(database, shard_gpus)) == total
