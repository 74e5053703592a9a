"""``make bench``: the collector's throughput against baselines measured in the same run.

Measures, each ``--repeats`` times, and prints medians as a table and JSON:

1. the Celery no-op ceiling: a backlog of no-op tasks drained by a worker with
   the collector's pool and concurrency;
2. the storage ceiling: ``insert_many`` of the same documents into SecantusDB;
3. end to end, per ``BATCH_SIZE``, with points/s, ratios to both baselines,
   publish→stored latency, database writes per point and the worker's peak
   memory, in three runs:
   ``live``  the streamer publishing as fast as it can while the worker stores;
   ``drain`` a backlog of every point queued first, then drained;
   ``paced`` the streamer publishing at half the live rate of the same batch
             size measured just before (or at ``--paced-rate``), for latency;
4. the streamer alone: publish rate with broker confirms;
5. bare kombu baselines (benchmarks/bare.py), in the same run: a consumer that
   drains the same backlog into MongoDB with bulk inserts and multiple-acks,
   and a publisher with pipelined confirms. The worker's and the streamer's
   CPU time per point are reported beside theirs, with the ratios;
6. the live baseline: the bare publisher and the bare consumer running
   together, into a collection with the collector's indexes. Live rates are
   also reported as a ratio to it: on a slow day both slow down together, so
   the ratio is meant to mean the same on any day.

CPU per point is the process's CPU time (user + system, from /proc) from the
moment it is ready or takes its first message to the last point stored. The
live and paced runs also give the CPU per point of the streamer (this process), the
SecantusDB server and, when exactly one runs on this machine, RabbitMQ: all
four share the machine's cores, so their sum bounds the live rate.

Everything runs on this machine: RabbitMQ on 127.0.0.1:5672 and a SecantusDB
server this script starts. Run one benchmark at a time; the machine is small.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from kombu import Connection
from pymongo import MongoClient

from benchmarks import bare
from benchmarks.noop import NOOP_TASK
from telemetry.broker.messages import TaskMessage
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.topology import Topology
from telemetry.cli import SAMPLE_CSV
from telemetry.config import load_settings
from telemetry.dcgm import Row, read_dcgm_csv
from telemetry.demo.embedded import SecantusServer
from telemetry.store.mongo import MongoTelemetryStore, point_document
from telemetry.streamer.run import StreamOptions, StreamReport, run_stream
from telemetry.worker.app import app
from tools.launchers import WorkerProcess, clean_env

REPO = Path(__file__).resolve().parents[1]
BROKER = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
CONCURRENCY = 10


def sample_rows() -> list[Row]:
    return [row for row in read_dcgm_csv(SAMPLE_CSV) if isinstance(row, Row)]


def delete_queues(name: str) -> None:
    """Every queue of ``name``'s topology (work, dead letters, retry delays)."""
    with Connection(BROKER) as connection:
        channel = connection.channel()
        for queue in Topology.of(load_settings(env={"TELEMETRY_QUEUE": name})).queue_names():
            channel.queue_delete(queue)


def start_worker(
    module: str, queue: str, mongodb_uri: str, log: Path, extra_env: dict[str, str] | None = None
) -> WorkerProcess:
    """A worker of ``module``'s app on ``queue``, started as the tests start theirs."""
    env = clean_env(
        CELERY_BROKER_URL=BROKER,
        MONGODB_URI=mongodb_uri,
        MONGODB_DB="bench",
        TELEMETRY_QUEUE=queue,
        STATS_INTERVAL_S="3600",
        # A node name of its own (telemetry@<queue>), so no control queue clashes.
        INSTANCE_ID=queue,
        **(extra_env or {}),
    )
    worker = WorkerProcess(env, log, concurrency=CONCURRENCY, app=module)
    worker.wait_ready()
    return worker


def stop(worker: WorkerProcess) -> None:
    worker.stop()


def process_cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_until(done: Callable[[], bool], timeout_s: float, tick: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        tick()
        time.sleep(0.1)


def noop_ceiling(points: int, mongodb_uri: str, workdir: Path) -> float:
    """No-op tasks per second drained from a queued backlog."""
    queue = f"bench.noop.{uuid.uuid4().hex[:8]}"
    topology = Topology.of(load_settings(env={"TELEMETRY_QUEUE": queue}))
    publisher = ConfirmingPublisher(Connection(BROKER), topology)
    publisher.open()
    for _ in range(points):
        message = app.amqp.as_task_v2(
            str(uuid.uuid4()), NOOP_TASK, args=(), kwargs={}, argsrepr="()", kwargsrepr="{}"
        )
        publisher.send(TaskMessage("", message.headers, dict(message.properties), message.body))
    publisher.flush()
    publisher.close()
    worker = start_worker("benchmarks.noop", queue, mongodb_uri, workdir / "noop.log")
    already = settled(queue, ("messages_processed",))
    started = time.monotonic()
    try:
        wait_until(lambda: settled(queue, ("messages_processed",)) >= points, 600, lambda: None)
    finally:
        elapsed = time.monotonic() - started
        stop(worker)
        delete_queues(queue)
    return (points - already) / elapsed


def storage_ceiling(points: int, mongodb_uri: str, rows: list[Row]) -> float:
    """Documents per second for insert_many of the same documents, same indexes."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, tz_aware=True)
    name = f"bench_storage_{uuid.uuid4().hex[:8]}"
    MongoTelemetryStore(client[name], load_settings(env={})).ensure_indexes()
    collection = client[name]["telemetry"]
    now = datetime.now(UTC)
    documents = []
    for index in range(points):
        row = rows[index % len(rows)]
        point = row.point.model_copy(
            update={"timestamp": datetime.fromtimestamp(1_700_000_000 + index / 1000, UTC)}
        )
        documents.append(point_document(point, row.metadata, now))
    started = time.monotonic()
    for first in range(0, points, 1000):
        collection.insert_many(documents[first : first + 1000], ordered=False)
    elapsed = time.monotonic() - started
    client.drop_database(name)
    client.close()
    return points / elapsed


def local_broker_pid() -> int | None:
    """The RabbitMQ node's process, if exactly one runs here and the broker is local."""
    if not BROKER.split("@", 1)[-1].startswith(("127.0.0.1", "localhost")):
        return None
    found = subprocess.run(["pgrep", "-x", "beam.smp"], capture_output=True, text=True).stdout
    pids = found.split()
    return int(pids[0]) if len(pids) == 1 else None


def end_to_end(
    points: int,
    mongodb_uri: str,
    workdir: Path,
    batch_size: int,
    rate: float | None = None,
    backlog: bool = False,
    database_pid: int | None = None,
) -> dict[str, float]:
    """Streamer → RabbitMQ → worker → MongoDB.

    By default the streamer publishes as fast as it can while the worker
    stores; with ``rate`` it is paced; with ``backlog`` every point is queued
    before the worker starts, and the figure is the drain rate.
    """
    queue = f"bench.e2e.{uuid.uuid4().hex[:8]}"
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, tz_aware=True)
    database = client["bench"]
    database.drop_collection("telemetry")
    database.drop_collection("gpus")
    env = {"BATCH_SIZE": str(batch_size)}
    report = stream_points(queue, points, rate) if backlog else None
    worker = start_worker("telemetry", queue, mongodb_uri, workdir / "e2e.log", env)
    ops_before = write_ops(client)
    peak = rss_kb(worker.process.pid)
    already = settled(queue)
    started = time.monotonic()
    cpu_at_start = process_cpu_s(worker.process.pid)
    # Live and paced runs: the other processes sharing the cores (the streamer runs in
    # this one); a drain's streamer ran before the worker started.
    others = {"streamer": os.getpid(), "database": database_pid, "broker": local_broker_pid()}
    pids = {name: pid for name, pid in others.items() if pid} if report is None else {}
    others_at_start = {name: process_cpu_s(pid) for name, pid in pids.items()}
    try:
        if report is None:
            report = stream_points(queue, points, rate)

        def sample() -> None:
            nonlocal peak
            peak = max(peak, rss_kb(worker.process.pid))

        # Progress comes from the worker's counters: counting documents costs
        # SecantusDB O(n) (144 ms at 20,000), which would load the very server
        # being measured.
        wait_until(lambda: settled(queue) >= points, 3600, sample)
        elapsed = time.monotonic() - started
        worker_cpu_s = process_cpu_s(worker.process.pid) - cpu_at_start
        others_cpu_s = {
            name: process_cpu_s(pids[name]) - cpu_s for name, cpu_s in others_at_start.items()
        }
    finally:
        stop(worker)
        delete_queues(queue)
    ops = write_ops(client) - ops_before
    latencies = sorted(
        (doc["ingested_at"] - doc["timestamp"]).total_seconds() * 1000
        for doc in database["telemetry"].find({}, {"ingested_at": 1, "timestamp": 1})
    )
    client.close()
    if len(latencies) != points:
        raise RuntimeError("the worker counted every point, but the database lacks some")
    return (
        {
            "points_per_s": (points - already) / elapsed,
            "publish_points_per_s": report.rate,
            "latency_p50_ms": percentile(latencies, 50),
            "latency_p95_ms": percentile(latencies, 95),
            "latency_p99_ms": percentile(latencies, 99),
            "db_writes_per_point": ops / points,
            "worker_peak_rss_mb": peak / 1024,
            "worker_cpu_us_per_point": worker_cpu_s / (points - already) * 1e6,
        }
        | ({} if rate is None else {"pace_points_per_s": rate})
        | {
            f"{name}_cpu_us_per_point": cpu_s / (points - already) * 1e6
            for name, cpu_s in others_cpu_s.items()
        }
    )


def settled(queue: str, counters: tuple[str, ...] = ("telemetry_stored", "duplicates")) -> int:
    """The sum of ``counters`` of the worker of ``queue``, asked over the broker."""
    replies = app.control.broadcast(
        "telemetry_stats",
        reply=True,
        timeout=1.0,
        limit=1,
        destination=[f"telemetry@{queue}"],
    )
    for reply in replies or []:
        for values in reply.values():
            return sum(int(values[name]) for name in counters)
    return 0


def write_ops(client: MongoClient[dict[str, Any]]) -> int:
    counters = client.admin.command("serverStatus")["opcounters"]
    return int(counters["insert"]) + int(counters["update"])


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * share / 100))]


def stream_points(queue: str, points: int, rate: float | None = None) -> StreamReport:
    """Stream ``points`` rows of the sample, looping, to ``queue`` with confirms."""
    settings = load_settings(env={}, overrides={"broker_url": BROKER, "queue_name": queue})
    options = StreamOptions(
        paths=[SAMPLE_CSV], loop=True, limit=points, rate=rate, max_backlog=max(points, 100_000)
    )
    return run_stream(settings, options, show_progress=False)


def streamer_alone(points: int) -> dict[str, float]:
    """The streamer publishing, with confirms, to a queue nobody reads: rate and CPU per point.

    It runs in this process, so its CPU is this process's CPU time meanwhile.
    """
    queue = f"bench.stream.{uuid.uuid4().hex[:8]}"
    cpu_at_start = time.process_time()
    try:
        report = stream_points(queue, points)
    finally:
        cpu_s = time.process_time() - cpu_at_start
        delete_queues(queue)
    return {"points_per_s": report.rate, "cpu_us_per_point": cpu_s / points * 1e6}


def bare_publisher(points: int) -> dict[str, float]:
    """The bare kombu publisher with pipelined confirms (benchmarks/bare.py), same rows."""
    queue = f"bench.bare-publish.{uuid.uuid4().hex[:8]}"
    try:
        return bare.publish(BROKER, queue, SAMPLE_CSV, points)
    finally:
        delete_queues(queue)


def empty_collection(mongodb_uri: str, indexed: bool) -> None:
    """An empty ``bench.telemetry`` for a bare consumer; ``indexed`` gives it the collector's
    indexes (the read API's), the database work the worker has."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, tz_aware=True)
    client["bench"].drop_collection("telemetry")
    if indexed:
        MongoTelemetryStore(client["bench"], load_settings(env={})).ensure_indexes()
    client.close()


def bare_consumer(queue: str, mongodb_uri: str, points: int) -> subprocess.Popen[str]:
    """The bare kombu consumer (benchmarks/bare.py) as a process of its own, draining
    ``points`` messages of ``queue`` into ``bench.telemetry``; it prints its figures."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.bare",
            "--broker-url",
            BROKER,
            "--queue",
            queue,
            "--mongodb-uri",
            mongodb_uri,
            "--database",
            "bench",
            "--expect",
            str(points),
        ],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    )


def consumer_figures(consumer: subprocess.Popen[str]) -> dict[str, float]:
    """What a bare consumer printed when it was done; raises if it failed."""
    try:
        output, _ = consumer.communicate(timeout=3600)
    finally:
        stop_consumer(consumer)
    if consumer.returncode != 0:
        raise RuntimeError(f"the bare consumer exited with {consumer.returncode}")
    figures: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return figures


def stop_consumer(consumer: subprocess.Popen[str]) -> None:
    """End a bare consumer that is still running (a benchmark step failed)."""
    if consumer.poll() is None:
        consumer.kill()
        consumer.wait()


def bare_drain(
    points: int, mongodb_uri: str, workdir: Path, indexed: bool = False
) -> dict[str, float]:
    """The bare kombu consumer draining the streamer's backlog.

    Its collection has only ``_id``, as the issue's baseline; ``indexed`` gives it
    the collector's indexes too.
    """
    queue = f"bench.bare.{uuid.uuid4().hex[:8]}"
    empty_collection(mongodb_uri, indexed)
    try:
        stream_points(queue, points)
        return consumer_figures(bare_consumer(queue, mongodb_uri, points))
    finally:
        delete_queues(queue)


def consumers_of(queue: str) -> int:
    """How many consumers ``queue`` has now."""
    with Connection(BROKER) as connection:
        return int(connection.channel().queue_declare(queue, passive=True).consumer_count)


def bare_live(points: int, mongodb_uri: str) -> dict[str, float]:
    """The live run's baseline: the bare publisher and the bare consumer at once.

    Measured as the live run is: from the first publish (the publisher runs in
    this process, as the streamer does) to the last point stored and acked,
    into a collection with the collector's indexes. The consumer says when it
    was done, so its exit is not counted.
    """
    queue = f"bench.bare-live.{uuid.uuid4().hex[:8]}"
    empty_collection(mongodb_uri, indexed=True)
    bare.declare(BROKER, queue)
    consumer = bare_consumer(queue, mongodb_uri, points)
    try:
        wait_until(lambda: consumers_of(queue) > 0, 60, lambda: None)
        started = time.time()
        publisher = bare.publish(BROKER, queue, SAMPLE_CSV, points)
        figures = consumer_figures(consumer)
        elapsed = figures["finished_at_unix_s"] - started
    finally:
        stop_consumer(consumer)
        delete_queues(queue)
    return {
        "points_per_s": points / elapsed,
        "publisher_points_per_s": publisher["points_per_s"],
        "publisher_cpu_us_per_point": publisher["cpu_us_per_point"],
        "consumer_cpu_us_per_point": figures["cpu_us_per_point"],
    }


def latency_pace(fixed: float | None, live: dict[str, float]) -> float:
    """Points/s of the latency run: ``fixed`` if given, else half the live rate just measured,
    so the pipeline has room and the latency shows batching rather than a queue building up."""
    return fixed if fixed is not None else live["points_per_s"] / 2


def paced_points(points: int, pace: float) -> int:
    """About 15 seconds of points at ``pace``, never more than ``points``."""
    return max(1, min(points, int(pace * 15)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch-sizes", default="1,200,500", help="comma-separated BATCH_SIZE values"
    )
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=None,
        help="points/s of the latency run (default: half the live rate of the same batch "
        "size, measured just before it)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--memory-backlog",
        type=int,
        default=0,
        help="also drain a backlog of this many points once, at the largest batch size "
        "(worker memory under a backlog; 0 skips it)",
    )
    return parser.parse_args()


def measure_baselines(
    runs: dict[str, list[Any]], points: int, server: SecantusServer, workdir: Path
) -> None:
    """One run of every baseline, appended to ``runs``."""
    runs["noop"].append(noop_ceiling(points, server.uri, workdir))
    runs["storage"].append(storage_ceiling(points, server.uri, sample_rows()))
    runs["stream"].append(streamer_alone(points))
    runs["bare_publish"].append(bare_publisher(points))
    runs["bare_drain"].append(bare_drain(points, server.uri, workdir))
    runs["bare_drain_indexed"].append(bare_drain(points, server.uri, workdir, indexed=True))
    runs["bare_live"].append(bare_live(points, server.uri))


def main() -> None:
    args = parse_args()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    workdir = Path(os.environ.get("BENCH_DIR", "/tmp")) / f"telemetry-bench-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    runs: dict[str, list[Any]] = {
        name: []
        for name in (
            "noop",
            "storage",
            "stream",
            "bare_publish",
            "bare_drain",
            "bare_drain_indexed",
            "bare_live",
        )
    }
    with SecantusServer(":memory:", log_path=workdir / "secantus.log") as server:
        e2e = partial(end_to_end, workdir=workdir, mongodb_uri=server.uri, database_pid=server.pid)

        def measure(step: str, name: str, points: int, **options: Any) -> dict[str, float]:
            print(f"{step}: {name}", file=sys.stderr, flush=True)
            figures = e2e(points, **options)
            runs.setdefault(name, []).append(figures)
            return figures

        for repeat in range(args.repeats):
            step = f"repeat {repeat + 1}/{args.repeats}"
            print(f"{step}: baselines", file=sys.stderr, flush=True)
            measure_baselines(runs, args.points, server, workdir)
            for size in batch_sizes:
                live = measure(step, f"e2e_live_batch_{size}", args.points, batch_size=size)
                measure(step, f"e2e_drain_batch_{size}", args.points, batch_size=size, backlog=True)
                pace = latency_pace(args.paced_rate, live)
                print(f"{step}: latency run paced at {pace:,.0f} points/s", file=sys.stderr)
                measure(
                    step,
                    f"e2e_paced_batch_{size}",
                    paced_points(args.points, pace),
                    batch_size=size,
                    rate=pace,
                )
            if args.memory_backlog and repeat == 0:
                # Once, not per repeat: it is about memory, and it takes a while.
                size = max(batch_sizes)
                name = f"e2e_backlog_{args.memory_backlog}_batch_{size}"
                measure(step, name, args.memory_backlog, batch_size=size, backlog=True)
    result = summarise(runs, args.points, args.repeats)
    print_table(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


def summarise(runs: dict[str, list[Any]], points: int, repeats: int) -> dict[str, Any]:
    noop = statistics.median(runs["noop"])
    storage = statistics.median(runs["storage"])

    def medians(name: str) -> dict[str, float]:
        return {key: statistics.median(run[key] for run in runs[name]) for key in runs[name][0]}

    stream, bare_publish, bare_drain, bare_indexed, bare_live = (
        medians("stream"),
        medians("bare_publish"),
        medians("bare_drain"),
        medians("bare_drain_indexed"),
        medians("bare_live"),
    )
    result: dict[str, Any] = {
        "points": points,
        "repeats": repeats,
        "concurrency": CONCURRENCY,
        "noop_tasks_per_s": round(noop),
        "storage_docs_per_s": round(storage),
        "streamer_points_per_s": round(stream["points_per_s"]),
        "streamer_cpu_us_per_point": round(stream["cpu_us_per_point"], 1),
        "bare_publisher_points_per_s": round(bare_publish["points_per_s"]),
        "bare_publisher_cpu_us_per_point": round(bare_publish["cpu_us_per_point"], 1),
        "streamer_cpu_ratio_to_bare": round(
            stream["cpu_us_per_point"] / bare_publish["cpu_us_per_point"], 2
        ),
        "bare_drain_points_per_s": round(bare_drain["points_per_s"]),
        "bare_drain_cpu_us_per_point": round(bare_drain["cpu_us_per_point"], 1),
        "bare_drain_indexed_points_per_s": round(bare_indexed["points_per_s"]),
        "bare_drain_indexed_cpu_us_per_point": round(bare_indexed["cpu_us_per_point"], 1),
        "bare_live_points_per_s": round(bare_live["points_per_s"]),
        "bare_live_publisher_points_per_s": round(bare_live["publisher_points_per_s"]),
        "bare_live_publisher_cpu_us_per_point": round(bare_live["publisher_cpu_us_per_point"], 1),
        "bare_live_consumer_cpu_us_per_point": round(bare_live["consumer_cpu_us_per_point"], 1),
        "end_to_end": {},
    }
    for name, measured in runs.items():
        if not name.startswith("e2e_"):
            continue
        # Keys every run has (RabbitMQ's CPU is there only when its process was found).
        keys = [key for key in measured[0] if all(key in run for run in measured)]
        row = {key: statistics.median(run[key] for run in measured) for key in keys}
        row["ratio_to_noop"] = row["points_per_s"] / noop
        row["ratio_to_storage"] = row["points_per_s"] / storage
        row["ratio_to_bare"] = row["points_per_s"] / bare_drain["points_per_s"]
        row["ratio_to_bare_indexed"] = row["points_per_s"] / bare_indexed["points_per_s"]
        row["cpu_ratio_to_bare"] = row["worker_cpu_us_per_point"] / bare_drain["cpu_us_per_point"]
        if name.startswith("e2e_live_"):
            row["ratio_to_bare_live"] = row["points_per_s"] / bare_live["points_per_s"]
        result["end_to_end"][name.removeprefix("e2e_")] = {
            key: round(value, 3) for key, value in row.items()
        }
    return result


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['points']:,} points, median of {result['repeats']} runs, "
        f"{result['concurrency']} worker threads"
    )
    print(f"  baseline: Celery no-op ceiling   {result['noop_tasks_per_s']:>8,} tasks/s")
    print(f"  baseline: storage (insert_many)  {result['storage_docs_per_s']:>8,} docs/s")
    print(
        f"  baseline: bare kombu consumer    {result['bare_drain_points_per_s']:>8,} points/s  "
        f"{result['bare_drain_cpu_us_per_point']:,.0f} us CPU/point"
    )
    print(
        f"  baseline: the same, with the collector's indexes "
        f"{result['bare_drain_indexed_points_per_s']:>8,} points/s  "
        f"{result['bare_drain_indexed_cpu_us_per_point']:,.0f} us CPU/point"
    )
    print(
        f"  baseline: bare kombu publisher   {result['bare_publisher_points_per_s']:>8,} points/s  "
        f"{result['bare_publisher_cpu_us_per_point']:,.0f} us CPU/point"
    )
    print(
        f"  baseline: bare publisher and consumer together (live) "
        f"{result['bare_live_points_per_s']:>8,} points/s  (publisher "
        f"{result['bare_live_publisher_cpu_us_per_point']:,.0f}, consumer "
        f"{result['bare_live_consumer_cpu_us_per_point']:,.0f} us CPU/point)"
    )
    print(
        f"  streamer alone, with confirms    {result['streamer_points_per_s']:>8,} points/s  "
        f"{result['streamer_cpu_us_per_point']:,.0f} us CPU/point "
        f"(x{result['streamer_cpu_ratio_to_bare']:.2f} the bare publisher's)"
    )
    for name, row in result["end_to_end"].items():
        live = (
            f"x{row['ratio_to_bare_live']:.2f} bare live, " if "ratio_to_bare_live" in row else ""
        )
        pace = f"paced at {row['pace_points_per_s']:,.0f}/s, " if "pace_points_per_s" in row else ""
        print(
            f"  {name:<22} {row['points_per_s']:>8,.0f} points/s  "
            f"({pace}{live}x{row['ratio_to_bare']:.2f} bare, "
            f"x{row['ratio_to_bare_indexed']:.2f} bare with indexes, "
            f"x{row['ratio_to_noop']:.2f} no-op, "
            f"x{row['ratio_to_storage']:.2f} storage)  "
            f"worker {row['worker_cpu_us_per_point']:,.0f} us CPU/point "
            f"(x{row['cpu_ratio_to_bare']:.2f} bare)  "
            f"latency p50/p95/p99 {row['latency_p50_ms']:,.0f}/{row['latency_p95_ms']:,.0f}/"
            f"{row['latency_p99_ms']:,.0f} ms  {row['db_writes_per_point']:.3f} writes/point  "
            f"worker peak {row['worker_peak_rss_mb']:.0f} MB"
        )
        shares = [
            (label, row[f"{key}_cpu_us_per_point"])
            for label, key in (
                ("worker", "worker"),
                ("streamer", "streamer"),
                ("RabbitMQ", "broker"),
                ("SecantusDB", "database"),
            )
            if f"{key}_cpu_us_per_point" in row
        ]
        if len(shares) > 2:
            total = sum(cpu for _, cpu in shares)
            print(
                f"  {'':<22} CPU us/point: "
                + ", ".join(f"{label} {cpu:,.0f}" for label, cpu in shares)
                + f"; together {total:,.0f}, {total * row['points_per_s'] / 1e6:.2f} cores "
                f"at this rate (this machine has {os.cpu_count()})"
            )
    print()


if __name__ == "__main__":
    main()
