"""One shard against three on a local 3-node cluster: ``python -m benchmarks.shards``.

For ``QUEUE_SHARDS`` 1 and 3 (quorum queues, declared as the collector declares them):

- where the work queues' leaders are;
- broker throughput: ``--publishers`` processes sending real task messages through the
  collector's confirming publisher (routed by ``gpu_uuid``) while ``--consumers`` processes
  consume and ack every shard, all at once; messages through the shards per second;
- broker CPU per message: user + system CPU of the three nodes' beam processes over that
  phase, divided by the messages (replication included);
- the worker's drain: a backlog of ``--drain-points`` points, then one real worker
  (``celery -A telemetry worker``, every shard) storing them into a SecantusDB server this
  script starts; points per second and the worker's CPU per point.

Each client's failover list starts at a different node, as a deployment's would. The shared
broker at 127.0.0.1:5672 is not used. Run it alone: on a small machine the three nodes,
the clients and the worker share the same cores, so the figures bound the machine, not
the design (docs/scaling.md#capacity-model).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kombu import Connection

from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.shards import ShardLayout
from telemetry.config import Settings, load_settings
from telemetry.demo.embedded import SecantusServer
from tools.launchers import WorkerProcess, clean_env
from tools.rabbitmq_nodes import LocalCluster, LocalNode, cpu_seconds

log = logging.getLogger("benchmarks.shards")

GPUS = 256
WORKER_CONCURRENCY = 10


@dataclass
class ShardRun:
    """What one shard count measured."""

    shards: int
    leaders: list[str]
    flow_messages: int
    flow_seconds: float
    broker_cpu_s: float
    client_cpu_s: float
    drain_points: int
    drain_seconds: float
    worker_cpu_s: float

    @property
    def flow_rate(self) -> float:
        return self.flow_messages / self.flow_seconds if self.flow_seconds else 0.0

    @property
    def broker_us_per_message(self) -> float:
        return 1e6 * self.broker_cpu_s / self.flow_messages if self.flow_messages else 0.0

    @property
    def drain_rate(self) -> float:
        return self.drain_points / self.drain_seconds if self.drain_seconds else 0.0

    @property
    def worker_us_per_point(self) -> float:
        return 1e6 * self.worker_cpu_s / self.drain_points if self.drain_points else 0.0


def shard_settings(queue: str, shards: int) -> Settings:
    return load_settings(
        env={"TELEMETRY_QUEUE": queue, "QUEUE_SHARDS": str(shards), "QUEUE_TYPE": "quorum"}
    )


def point(index: int) -> dict[str, Any]:
    """A valid, distinct point; GPUs in turn, so every shard gets its share."""
    return {
        "gpu_uuid": f"GPU-bench-{index % GPUS:04d}",
        "metric_name": "DCGM_FI_DEV_GPU_TEMP",
        "value": float(index % 90),
        "timestamp": timestamp(index),
    }


def timestamp(index: int) -> str:
    """One point per GPU per millisecond step: distinct ids, in order per GPU."""
    step = index // GPUS
    seconds, millis = divmod(step, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"2025-07-18T{hours % 24:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


def publish(url: str, layout: ShardLayout, first: int, count: int, barrier: Any) -> None:
    """Send points ``first`` … ``first + count - 1`` through the collector's publisher."""
    publisher = ConfirmingPublisher(Connection(url), layout)
    publisher.open()
    if barrier is not None:
        barrier.wait(timeout=120)
    for index in range(first, first + count):
        publisher.send(build_task_message(point(index), None))
    publisher.flush(timeout_s=600)
    publisher.close()


def consume(url: str, names: list[str], total: int, received: Any, barrier: Any) -> None:
    """Consume and ack from every shard until ``total`` messages were taken by all."""
    with Connection(url) as connection:
        channel = connection.channel()
        channel.basic_qos(0, 500, False)

        def on_message(message: Any) -> None:
            channel.basic_ack(message.delivery_tag)
            with received.get_lock():
                received.value += 1

        for name in names:
            channel.basic_consume(name, callback=on_message)
        barrier.wait(timeout=120)
        while received.value < total:
            try:
                connection.drain_events(timeout=1)
            except TimeoutError:
                continue


def broker_cpu(nodes: Sequence[LocalNode]) -> float:
    return sum(node.cpu_seconds() for node in nodes)


def flow(
    cluster: LocalCluster, layout: ShardLayout, args: argparse.Namespace
) -> tuple[int, float, float, float]:
    """Publishers and consumers at once; (messages, seconds, broker CPU s, client CPU s)."""
    context = multiprocessing.get_context("fork")
    per_publisher = args.messages // args.publishers
    total = per_publisher * args.publishers
    received = context.Value("i", 0)
    barrier = context.Barrier(args.publishers + args.consumers + 1)
    nodes = cluster.nodes
    urls = [cluster.failover_url(first=nodes[i % len(nodes)]) for i in range(len(nodes))]
    names = layout.work_queue_names()
    procs = [
        context.Process(target=consume, args=(urls[i % len(urls)], names, total, received, barrier))
        for i in range(args.consumers)
    ]
    procs += [
        context.Process(
            target=publish,
            args=(urls[(i + 1) % len(urls)], layout, i * per_publisher, per_publisher, barrier),
        )
        for i in range(args.publishers)
    ]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(timeout=120)
        clients0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0 = broker_cpu(nodes)
        began = time.perf_counter()
        for proc in procs:
            proc.join(timeout=1800)
            if proc.exitcode != 0:
                raise RuntimeError(f"a flow client exited with {proc.exitcode}")
        seconds = time.perf_counter() - began
        cpu1 = broker_cpu(nodes)
        clients1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    client_cpu = (clients1.ru_utime + clients1.ru_stime) - (clients0.ru_utime + clients0.ru_stime)
    return total, seconds, cpu1 - cpu0, client_cpu


def drain(
    cluster: LocalCluster, layout: ShardLayout, queue: str, args: argparse.Namespace, work: Path
) -> tuple[int, float, float]:
    """A backlog, then one worker of every shard storing it: (points, seconds, worker CPU s).

    The rate runs from the first statistics line that counts a point to the first that
    counts them all (both lag the worker alike). The CPU is the worker's whole CPU time
    less what a worker of the same settings spends starting up with nothing to do:
    "ready" is logged after consuming has begun, so no instant splits the two.
    """
    url = cluster.failover_url(first=cluster.nodes[1])
    server = SecantusServer(":memory:", log_path=work / f"secantus-{layout.count}.log")
    server.start()
    env = clean_env(
        CELERY_BROKER_URL=url,
        MONGODB_URI=server.uri,
        MONGODB_DB="bench",
        TELEMETRY_QUEUE=queue,
        QUEUE_SHARDS=str(layout.count),
        QUEUE_TYPE="quorum",
        STATS_INTERVAL_S="0.2",
        INSTANCE_ID=f"bench-{queue}",
        METRICS_PORT="0",
    )
    try:
        idle = WorkerProcess(env, work / f"idle-{layout.count}.log", WORKER_CONCURRENCY)
        try:
            idle.wait_ready(timeout_s=120)
            time.sleep(1.0)
            start_up_cpu = cpu_seconds(idle.process.pid)
        finally:
            idle.stop()
        # Past the flow's points, so none of them is a duplicate of an earlier one.
        publish(url, layout, args.messages, args.drain_points, None)
        worker = WorkerProcess(env, work / f"worker-{layout.count}.log", WORKER_CONCURRENCY)
        samples: list[tuple[float, int]] = []
        try:
            deadline = time.monotonic() + 1800
            while not samples or samples[-1][1] < args.drain_points:
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker did not drain the backlog in time")
                time.sleep(0.1)
                samples.append((time.perf_counter(), processed(worker)))
            worker_cpu = cpu_seconds(worker.process.pid) - start_up_cpu
        finally:
            worker.stop()
    finally:
        server.stop()
    began, first = next(sample for sample in samples if sample[1] > 0)
    ended, last = samples[-1]
    return last - first, ended - began, worker_cpu * (last - first) / last


def processed(worker: WorkerProcess) -> int:
    lines = [line for line in worker.log().splitlines() if '"Collector statistics"' in line]
    return int(json.loads(lines[-1]).get("messages_processed", 0)) if lines else 0


def delete_layout(url: str, layout: ShardLayout) -> None:
    with Connection(url) as connection:
        channel = connection.channel()
        for topology in layout.topologies:
            for name in topology.queue_names():
                channel.queue_delete(name)
            for name in topology.exchange_names():
                channel.exchange_delete(name)


def measure(cluster: LocalCluster, shards: int, args: argparse.Namespace, work: Path) -> ShardRun:
    queue = f"bench.shards.{uuid.uuid4().hex[:8]}"
    layout = ShardLayout.of(shard_settings(queue, shards))
    url = cluster.nodes[0].amqp_url
    with Connection(url) as connection:
        layout.declare(connection.channel())
    try:
        leaders = [cluster.queue_leader(name).short_name for name in layout.work_queue_names()]
        log.info("%d shard(s): leaders %s", shards, leaders)
        messages, seconds, broker_cpu_s, client_cpu_s = flow(cluster, layout, args)
        log.info("%d shard(s): %.0f msg/s through the shards", shards, messages / seconds)
        points, drained_s, worker_cpu_s = drain(cluster, layout, queue, args, work)
        log.info("%d shard(s): worker drained %.0f points/s", shards, points / drained_s)
    finally:
        delete_layout(url, layout)
    return ShardRun(
        shards,
        leaders,
        messages,
        seconds,
        broker_cpu_s,
        client_cpu_s,
        points,
        drained_s,
        worker_cpu_s,
    )


def table(runs: list[ShardRun]) -> str:
    base = runs[0]
    lines = [
        "| shards | leaders | msg/s through the shards | x | broker CPU µs/msg (3 nodes) "
        "| worker drain points/s | x | worker CPU µs/point |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run.shards} | {', '.join(run.leaders)} | {run.flow_rate:,.0f} "
            f"| {run.flow_rate / base.flow_rate:.2f} | {run.broker_us_per_message:.0f} "
            f"| {run.drain_rate:,.0f} | {run.drain_rate / base.drain_rate:.2f} "
            f"| {run.worker_us_per_point:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__)
    parser.add_argument("--messages", type=int, default=30000, help="messages in the flow")
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument("--consumers", type=int, default=3)
    parser.add_argument("--drain-points", type=int, default=10000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as work, LocalCluster(3) as cluster:
        runs = [measure(cluster, shards, args, Path(work)) for shards in (1, 3)]
    result = {
        "settings": vars(args) | {"json": str(args.json) if args.json else None},
        "runs": [
            asdict(run)
            | {
                "flow_rate": run.flow_rate,
                "broker_us_per_message": run.broker_us_per_message,
                "drain_rate": run.drain_rate,
                "worker_us_per_point": run.worker_us_per_point,
            }
            for run in runs
        ],
        "table": table(runs),
    }
    print(
        f"\n{args.messages:,} messages by {args.publishers} publishers and {args.consumers} "
        f"consumers at once; a {args.drain_points:,}-point backlog drained by one worker; "
        "x = ratio to 1 shard (same run)\n"
    )
    print(result["table"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
