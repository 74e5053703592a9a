"""Fault injection on the broker: a node restarted mid-stream, a cluster's queue leader killed.

Both run on private RabbitMQ nodes this test suite starts itself
(tests/integration/rabbit_support.py): the shared broker at 5672 is never
stopped. Each checks the accounting identity with exact numbers:
confirmed = stored + rejected + dead-lettered, with no point stored twice
(a point's ``_id`` makes a second copy impossible).
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from pymongo.database import Database

from telemetry.broker.topology import dead_queue_name
from tests.integration.conftest import cli_env, queue_depth
from tests.integration.faults_support import stored
from tests.integration.rabbit_support import private_broker, rabbit_cluster  # noqa: F401
from tools.launchers import REPO, WorkerProcess, end_process, wait_for
from tools.rabbitmq_nodes import LocalCluster, LocalNode

pytestmark = pytest.mark.faults

SAMPLE = REPO / "telemetry" / "data" / "dcgm_metrics_20250718_134233.csv"


def messages_on(node: LocalNode, name: str) -> int:
    """Messages in a queue of a private node, ready and unacked alike."""
    rows = json.loads(node.ctl("list_queues", "-q", "name", "messages", "--formatter", "json"))
    return sum(int(row["messages"]) for row in rows if row["name"] == name)


class Streamer:
    """A real ``telemetry stream`` process, its output in a file."""

    def __init__(self, env: dict[str, str], csv_path: Path, points: int, rate: int, log: Path):
        self.log_path = log
        self._log: IO[str] = log.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "telemetry.cli",
                "stream",
                "--loop",
                "--limit",
                str(points),
                "--rate",
                str(rate),
                "--no-progress",
                str(csv_path),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def finish(self, timeout_s: float = 240) -> str:
        """Wait for it to exit 0 and return what it printed."""
        code = self.process.wait(timeout=timeout_s)
        self._log.close()
        output = self.log_path.read_text()
        assert code == 0, output
        return output

    def stop(self) -> None:
        """End it if it still runs (a test that failed midway), and close its log."""
        end_process(self.process, signal.SIGKILL, timeout_s=10)
        self._log.close()


def test_broker_restarted_mid_stream_every_confirmed_point_is_stored(
    private_broker: LocalNode,  # noqa: F811
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
    queue_name: str,
    tmp_path: Path,
) -> None:
    # given: a worker and a streamer sending 3,000 points at 300/s, both on a private node
    url = private_broker.amqp_url
    worker = start_worker(celery_broker_url=url)
    env = cli_env(CELERY_BROKER_URL=url, TELEMETRY_QUEUE=queue_name)
    streamer = Streamer(env, SAMPLE, 3000, 300, tmp_path / "streamer.log")
    # when: the node stops for a few seconds mid-stream, then starts again
    time.sleep(3)
    private_broker.stop()
    time.sleep(3)
    private_broker.start()
    # then
    output = streamer.finish()
    assert "confirmed by the broker: 3,000" in output
    wait_for(
        lambda: stored(database) == 3000,
        180,
        "all 3000 points",
        lambda: (stored(database), worker.log()[-3000:]),
    )
    # Copies of points already stored (redelivered after the restart, or republished by
    # the streamer for want of a confirm) can still be queued when the count is reached;
    # the worker must consume them too, so the queue is waited on, ready and unacked alike.
    wait_for(
        lambda: messages_on(private_broker, queue_name) == 0,
        120,
        "the queue drained",
        lambda: (messages_on(private_broker, queue_name), worker.log()[-3000:]),
    )
    worker.stop()
    counts = (
        stored(database),
        database["rejected"].count_documents({}),
        queue_depth(url, dead_queue_name(queue_name)),
    )
    print(f"\n[broker restart] confirmed=3000 stored/rejected/dead-lettered={counts}")
    assert counts == (3000, 0, 0)
    assert queue_depth(url, queue_name) == 0


def renamed_sample(path: Path, prefix: str) -> Path:
    """The sample CSV with every GPU renamed, so a second streamer's points are its own."""
    with SAMPLE.open(newline="") as source, path.open("w", newline="") as target:
        reader = csv.DictReader(source)
        assert reader.fieldnames is not None
        writer = csv.DictWriter(target, fieldnames=reader.fieldnames)
        writer.writeheader()
        for row in reader:
            writer.writerow({**row, "uuid": prefix + row["uuid"]})
    return path


LEADER_KILL_POINTS = 2500  # per streamer
LEADER_KILL_RATE = 250  # points/s per streamer


@pytest.mark.cluster
def test_the_queue_leader_killed_mid_stream_loses_nothing_and_the_queue_drains(
    rabbit_cluster: LocalCluster,  # noqa: F811
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
    queue_name: str,
    tmp_path: Path,
) -> None:
    # given: 2 workers and 2 streamers on a 3-node cluster, each with a failover list
    # that starts at a different node, and a quorum work queue (the default)
    nodes = rabbit_cluster.nodes
    workers = [
        start_worker(
            celery_broker_url=rabbit_cluster.failover_url(first=nodes[i]), queue_type="quorum"
        )
        for i in (0, 1)
    ]
    # Asked before the streams start (the workers declared the queue): rabbitmqctl takes
    # seconds on a loaded machine, and the kill must come while points still flow.
    leader = rabbit_cluster.queue_leader(queue_name)
    files = [SAMPLE, renamed_sample(tmp_path / "second.csv", "B-")]
    streamers = [
        Streamer(
            cli_env(
                CELERY_BROKER_URL=rabbit_cluster.failover_url(first=nodes[i + 1]),
                TELEMETRY_QUEUE=queue_name,
                QUEUE_TYPE="quorum",
            ),
            files[i],
            LEADER_KILL_POINTS,
            LEADER_KILL_RATE,
            tmp_path / f"streamer-{i}.log",
        )
        for i in (0, 1)
    ]
    try:
        total = 2 * LEADER_KILL_POINTS
        wait_for(
            lambda: stored(database) >= 1000, 90, "some points stored", lambda: stored(database)
        )
        # when: the node leading the work queue is killed with SIGKILL, then started again
        killed_at_stored = stored(database)
        assert killed_at_stored < total - 200, "the streams ended before the kill: not mid-stream"
        killed_at = time.monotonic()
        leader.kill()
        wait_for(
            lambda: stored(database) > killed_at_stored + 200,
            120,
            "points stored again after the leader died",
            lambda: stored(database),
        )
        resumed_s = time.monotonic() - killed_at
        rabbit_cluster.ensure_running()
        # then: both streamers had every point confirmed, and every point is stored once
        for streamer in streamers:
            assert f"confirmed by the broker: {LEADER_KILL_POINTS:,}" in streamer.finish()
        wait_for(
            lambda: stored(database) == total, 240, f"all {total} points", lambda: stored(database)
        )
        stored_s = time.monotonic() - killed_at
        # Copies of points stored but not acked when the node died come back, and are
        # written (as duplicates) one at a time: the queue is empty once they are.
        survivor_node = next(node for node in nodes if node is not leader)
        wait_for(
            lambda: messages_on(survivor_node, queue_name) == 0,
            240,
            "an empty queue",
            lambda: messages_on(survivor_node, queue_name),
        )
        drained_s = time.monotonic() - killed_at
        for worker in workers:
            worker.stop()
    finally:
        for streamer in streamers:
            streamer.stop()
    survivor = survivor_node.amqp_url
    counts = (
        stored(database),
        database["rejected"].count_documents({}),
        queue_depth(survivor, dead_queue_name(queue_name)),
    )
    print(
        f"\n[leader kill] killed {leader.name} at {killed_at_stored} stored; storing again "
        f"{resumed_s:.1f}s later; confirmed={total} stored/rejected/dead-lettered={counts}; "
        f"all stored {stored_s:.1f}s and the queue empty {drained_s:.1f}s after the kill"
    )
    assert counts == (total, 0, 0)
    assert queue_depth(survivor, queue_name) == 0
