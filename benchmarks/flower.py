"""Flower's ceiling: at which task rate its counts fall behind, and what it costs.

``python -m benchmarks.flower`` runs, in one process tree on this machine:

- one SecantusDB server and one worker (default settings, ``BATCH_SIZE`` 200)
  on a queue of its own, with Prometheus metrics on a port of its own;
- ``telemetry stream`` as a subprocess, paced at each ``--rates`` value and
  then unpaced, each phase streaming ``--seconds`` worth of points;
- Flower watching the worker's task events.

For each phase it compares Flower's ``task-succeeded`` count for the worker
(Flower's ``/metrics``) with the worker's own ``telemetry_messages_processed``
(the worker's ``/metrics``, counted in-process, so exact). Sampled every
half second while the points flow, the gap between the two is Flower's lag;
once the worker has stored everything, what Flower never counts is lost:
Celery's event queue drops events older than ``event_queue_ttl`` (5 s).

What Flower costs: its CPU seconds per 1,000 tasks (``/proc/<pid>/stat``),
and the unpaced pipeline rate with Flower running against without it, in the
same run (before and after the Flower phases, then once more with the
worker's task events switched off by a control broadcast).

Uses the shared RabbitMQ at 127.0.0.1:5672 (``BENCH_BROKER_URL``) and never
stops it. Run one benchmark at a time; the machine is small.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from kombu import Connection

from telemetry.broker.topology import dead_queue_name
from telemetry.cli import SAMPLE_CSV
from telemetry.demo.embedded import SecantusServer, free_port
from telemetry.worker.app import app
from tools.launchers import REPO, FlowerProcess, WorkerProcess, clean_env, wait_for

BROKER = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
SAMPLE_EVERY_S = 0.5
# Longer than event_queue_ttl (5 s): once Flower's count has not moved for this
# long, whatever it has not counted has expired from its queue and is lost.
FLOWER_QUIET_S = 7.0


@dataclass
class Phase:
    """One phase's figures."""

    name: str
    asked_rate: float | None
    points: int
    pipeline_points_per_s: float
    flower: bool
    flower_counted: int = 0
    flower_lost: int = 0
    flower_max_lag_tasks: int = 0
    flower_max_lag_s: float = 0.0
    flower_catch_up_s: float = 0.0
    flower_cpu_s_per_1000: float = 0.0
    flower_unanswered_samples: int = 0
    worker_cpu_us_per_point: float = 0.0
    streamer_cpu_us_per_point: float = 0.0


def cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prometheus_value(body: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus text page; 0 if it is not there (yet)."""
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.MULTILINE)
    found = pattern.search(body)
    return float(found[1]) if found else 0.0


class Bench:
    """The worker, its queue, the database and (when asked) Flower."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.queue = f"bench.flower.{uuid.uuid4().hex[:8]}"
        self.node = f"telemetry@{self.queue}"
        self.metrics_port = free_port()
        self.server = SecantusServer(":memory:", log_path=workdir / "db.log")
        self.server.start()
        self.worker = WorkerProcess(
            clean_env(
                CELERY_BROKER_URL=BROKER,
                MONGODB_URI=self.server.uri,
                MONGODB_DB="bench",
                TELEMETRY_QUEUE=self.queue,
                INSTANCE_ID=self.queue,
                METRICS_PORT=str(self.metrics_port),
                STATS_INTERVAL_S="3600",
            ),
            workdir / "worker.log",
        )
        self.worker.wait_ready()
        self.flower: FlowerProcess | None = None

    def processed(self) -> int:
        """Messages the worker brought to an outcome (stored, duplicate, rejected)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        return int(prometheus_value(body, "telemetry_messages_processed_total"))

    def flower_counted(self) -> int:
        """Flower's ``task-succeeded`` count for the worker."""
        assert self.flower is not None
        return int(self.flower.event_counts(self.node).get("task-succeeded", 0))

    def start_flower(self) -> None:
        self.flower = FlowerProcess(clean_env(CELERY_BROKER_URL=BROKER), self.workdir / "fl.log")
        self.flower.wait_ready()
        # Flower learns of a worker from its heartbeat (every 2 s); a tiny batch
        # makes sure its counter for this worker exists before a phase starts.
        self.stream(20, None).wait(timeout=60)
        wait_for(lambda: self.flower_counted() > 0, 60, "Flower to count the worker's tasks")

    def stop_flower(self) -> None:
        if self.flower is not None:
            self.flower.stop()
            self.flower = None

    def stream(self, points: int, rate: float | None) -> subprocess.Popen[bytes]:
        """``telemetry stream`` of ``points`` rows of the sample, looping, at ``rate``."""
        args = [sys.executable, "-m", "telemetry.cli", "stream", str(SAMPLE_CSV), "--loop"]
        args += ["--limit", str(points), "--max-backlog", "1000000", "--no-progress"]
        if rate is not None:
            args += ["--rate", str(rate)]
        env = clean_env(CELERY_BROKER_URL=BROKER, TELEMETRY_QUEUE=self.queue)
        return subprocess.Popen(
            args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def phase(self, name: str, points: int, rate: float | None) -> Phase:
        """Stream ``points`` at ``rate``; measure the pipeline and, if it runs, Flower."""
        flower = self.flower
        worker_at, flower_at = self.processed(), self.flower_counted() if flower else 0
        worker_cpu_at = cpu_s(self.worker.process.pid)
        flower_cpu_at = cpu_s(flower.process.pid) if flower else 0.0
        started = time.monotonic()
        streamer = self.stream(points, rate)
        streamer_cpu = 0.0
        max_lag = 0
        unanswered = 0
        done = 0
        first: tuple[float, int] | None = None
        while done < points:
            if time.monotonic() - started > 600:
                raise RuntimeError(f"{name}: {done} of {points} stored after 600 s")
            time.sleep(SAMPLE_EVERY_S)
            if streamer.poll() is None:
                streamer_cpu = cpu_s(streamer.pid)
            done = self.processed() - worker_at
            if first is None and done > 0:
                # The rate counts from the first point stored: the streamer's
                # start-up (a second of imports) is not the pipeline's.
                first = (time.monotonic(), done)
            if flower:
                try:
                    max_lag = max(max_lag, done - (self.flower_counted() - flower_at))
                except OSError:
                    # A Flower too busy to answer within 10 s is far behind too.
                    unanswered += 1
        finished = time.monotonic()
        stored_after = finished - started
        assert first is not None
        worker_cpu = cpu_s(self.worker.process.pid) - worker_cpu_at
        if streamer.wait(timeout=60) != 0:
            raise RuntimeError(f"{name}: telemetry stream exited with {streamer.returncode}")
        result = Phase(
            name=name,
            asked_rate=rate,
            points=points,
            pipeline_points_per_s=round((points - first[1]) / max(finished - first[0], 1e-3), 1),
            flower=flower is not None,
            worker_cpu_us_per_point=round(worker_cpu / points * 1e6, 1),
            # Sampled while it ran, so a little under its total: a floor.
            streamer_cpu_us_per_point=round(streamer_cpu / points * 1e6, 1),
        )
        if flower is None:
            return result
        # Wait for Flower to count everything, or to go quiet for longer than
        # the event TTL: then what is missing has expired and will never come.
        counted, moved = self.flower_counted() - flower_at, time.monotonic()
        while counted < points and time.monotonic() - moved < FLOWER_QUIET_S:
            time.sleep(SAMPLE_EVERY_S)
            now = self.flower_counted() - flower_at
            if now != counted:
                counted, moved = now, time.monotonic()
        caught_up = moved - started
        result.flower_counted = counted
        result.flower_lost = points - counted
        result.flower_max_lag_tasks = max_lag
        result.flower_unanswered_samples = unanswered
        result.flower_max_lag_s = round(max_lag / (rate or result.pipeline_points_per_s), 2)
        result.flower_catch_up_s = round(max(0.0, caught_up - stored_after), 1)
        flower_cpu = cpu_s(flower.process.pid) - flower_cpu_at
        result.flower_cpu_s_per_1000 = round(flower_cpu / max(counted, 1) * 1000, 3)
        return result

    def disable_task_events(self) -> None:
        """Switch the worker's task events off, as ``celery control disable_events`` does."""
        app.conf.broker_url = BROKER
        app.control.disable_events(destination=[self.node])

    def close(self) -> None:
        self.stop_flower()
        self.worker.stop()
        self.server.stop()
        with Connection(BROKER) as connection:
            channel = connection.channel()
            for queue in (self.queue, dead_queue_name(self.queue)):
                channel.queue_delete(queue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="500,1000,2000,3000", help="paced rates, points/s")
    parser.add_argument("--seconds", type=float, default=8.0, help="streaming time per phase")
    parser.add_argument("--max-points", type=int, default=16_000, help="points per unpaced phase")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    options = parser.parse_args()
    rates = [float(rate) for rate in options.rates.split(",")]
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="bench-flower-") as tmp:
        bench = Bench(Path(tmp))
        try:
            # Unpaced without Flower first and again after, so drift shows.
            phases.append(bench.phase("unpaced, no Flower", options.max_points, None))
            bench.start_flower()
            for rate in rates:
                points = int(rate * options.seconds)
                phases.append(bench.phase(f"{rate:.0f}/s, Flower", points, rate))
            phases.append(bench.phase("unpaced, Flower", options.max_points, None))
            bench.stop_flower()
            phases.append(bench.phase("unpaced, no Flower (again)", options.max_points, None))
            bench.disable_task_events()
            phases.append(bench.phase("unpaced, task events off", options.max_points, None))
        finally:
            bench.close()
    print_table(phases)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cores": os.cpu_count(),
        "phases": [asdict(phase) for phase in phases],
    }
    print(json.dumps(result))
    if options.output:
        options.output.write_text(json.dumps(result, indent=2) + "\n")


def print_table(phases: list[Phase]) -> None:
    header = (
        f"{'phase':<28}{'points':>8}{'stored/s':>10}{'Flower':>8}{'lost':>7}"
        f"{'max lag':>9}{'lag s':>7}{'catch-up s':>11}{'Fl CPU s/1k':>12}{'wk us/pt':>10}"
    )
    print(header)
    for p in phases:
        flower = (
            f"{p.flower_counted:>8}{p.flower_lost:>7}{p.flower_max_lag_tasks:>9}"
            f"{p.flower_max_lag_s:>7}{p.flower_catch_up_s:>11}{p.flower_cpu_s_per_1000:>12}"
            if p.flower
            else f"{'-':>8}{'-':>7}{'-':>9}{'-':>7}{'-':>11}{'-':>12}"
        )
        print(
            f"{p.name:<28}{p.points:>8}{p.pipeline_points_per_s:>10}{flower}"
            f"{p.worker_cpu_us_per_point:>10}"
        )


if __name__ == "__main__":
    main()
