"""Instructions per point, counted by valgrind's callgrind: the collector against bare kombu.

CPU time per point on a small shared machine moves by ±10 % from one run to
the next; instruction counts do not (the same program, inputs and
environment give the same count whatever else the machine does). This
counts, for each of the four programs, the instructions of a whole run over
``n1`` and over ``n2`` points and reports ``(I(n2) - I(n1)) / (n2 - n1)``, so
start-up and shut-down cancel out:

* ``worker``: ``celery -A telemetry worker -c 10`` draining a queued backlog;
* ``bare-consumer``: benchmarks/bare.py's consumer draining the same backlog;
* ``streamer``: ``telemetry stream`` publishing with confirms;
* ``bare-publisher``: benchmarks/bare.py's publisher with pipelined confirms.

Instructions are user space only: system calls and the kernel's work for
them are not counted, which CPU time includes. Under callgrind a program
runs about 50 times slower, so this is not part of ``make bench``: run
``python -m benchmarks.instructions`` (up to 15 minutes) on its own.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from benchmarks import run
from telemetry.cli import SAMPLE_CSV
from telemetry.demo.embedded import SecantusServer
from tools.launchers import REPO, clean_env

PROGRAMS = ("worker", "bare-consumer", "streamer", "bare-publisher")


def callgrind(command: list[str], out_dir: Path) -> list[str]:
    """``command`` run under callgrind, its counts written in ``out_dir``."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--dump-instr=no",
        f"--callgrind-out-file={out_dir}/callgrind.%p",
        *command,
    ]


def instructions_in(out_dir: Path) -> int:
    """The instructions every process counted in ``out_dir`` executed, in all."""
    total = 0
    for path in out_dir.glob("callgrind.*"):
        found = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.MULTILINE)
        if found is None:
            raise RuntimeError(f"{path}: no instruction total (did valgrind finish?)")
        total += int(found.group(1))
    return total


def run_to_end(command: list[str], env: dict[str, str], out_dir: Path, log: Path) -> None:
    """``command`` under callgrind, from the repository, until it exits; its output in ``log``."""
    with log.open("wb") as output:
        subprocess.run(
            callgrind(command, out_dir), cwd=REPO, env=env, stdout=output, stderr=output, check=True
        )


def drain_worker(points: int, mongodb_uri: str, out_dir: Path, log: Path) -> None:
    """A worker under callgrind drains a backlog of ``points``; stopped once all are stored."""
    queue = f"bench.instructions.{uuid.uuid4().hex[:8]}"
    run.stream_points(queue, points)
    env = clean_env(
        CELERY_BROKER_URL=run.BROKER,
        MONGODB_URI=mongodb_uri,
        MONGODB_DB="bench",
        TELEMETRY_QUEUE=queue,
        STATS_INTERVAL_S="3600",
        INSTANCE_ID=queue,
    )
    command = [sys.executable, "-m", "celery", "-A", "telemetry", "worker"]
    command += ["--concurrency=10", "--without-mingle", "--without-gossip"]
    with log.open("wb") as output:
        worker = subprocess.Popen(
            callgrind(command, out_dir), cwd=REPO, env=env, stdout=output, stderr=output
        )
        try:
            deadline = time.monotonic() + 1800
            while run.settled(queue) < points:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker stopped or stalled; see {log}")
                time.sleep(1)
        finally:
            worker.terminate()
            worker.wait(timeout=600)
            run.delete_queues(queue)


def drain_bare(points: int, mongodb_uri: str, out_dir: Path, log: Path) -> None:
    """The bare consumer under callgrind drains a backlog of ``points``."""
    queue = f"bench.instructions.{uuid.uuid4().hex[:8]}"
    run.stream_points(queue, points)
    command = [sys.executable, "-m", "benchmarks.bare", "--broker-url", run.BROKER]
    command += ["--queue", queue, "--mongodb-uri", mongodb_uri, "--database", "bench"]
    command += ["--expect", str(points)]
    try:
        run_to_end(command, clean_env(), out_dir, log)
    finally:
        run.delete_queues(queue)


def publish_streamer(points: int, mongodb_uri: str, out_dir: Path, log: Path) -> None:
    """``telemetry stream`` under callgrind publishes ``points`` rows of the sample."""
    queue = f"bench.instructions.{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "telemetry.cli", "stream", "--loop", "--no-progress"]
    command += ["--limit", str(points), "--max-backlog", str(max(points, 100_000)), str(SAMPLE_CSV)]
    env = clean_env(CELERY_BROKER_URL=run.BROKER, TELEMETRY_QUEUE=queue)
    try:
        run_to_end(command, env, out_dir, log)
    finally:
        run.delete_queues(queue)


def publish_bare(points: int, mongodb_uri: str, out_dir: Path, log: Path) -> None:
    """The bare publisher under callgrind publishes ``points`` rows of the sample."""
    queue = f"bench.instructions.{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "benchmarks.bare", "--broker-url", run.BROKER]
    command += ["--queue", queue, "--publish", str(points)]
    try:
        run_to_end(command, clean_env(), out_dir, log)
    finally:
        run.delete_queues(queue)


RUNNERS: dict[str, Callable[[int, str, Path, Path], None]] = {
    "worker": drain_worker,
    "bare-consumer": drain_bare,
    "streamer": publish_streamer,
    "bare-publisher": publish_bare,
}


def per_point(program: str, small: int, large: int, mongodb_uri: str, workdir: Path) -> float:
    """Instructions per point of ``program``: the difference of a large and a small run."""
    totals = []
    for points in (small, large):
        out_dir = Path(tempfile.mkdtemp(prefix=f"{program}-{points}-", dir=workdir))
        print(f"{program}: {points:,} points under callgrind", file=sys.stderr, flush=True)
        RUNNERS[program](points, mongodb_uri, out_dir, out_dir / "output.log")
        totals.append(instructions_in(out_dir))
    return (totals[1] - totals[0]) / (large - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default="2000,6000", help="the small and the large run")
    parser.add_argument("--programs", default=",".join(PROGRAMS), help="comma-separated")
    args = parser.parse_args()
    small, large = (int(points) for points in args.points.split(","))
    programs = args.programs.split(",")
    unknown = set(programs) - set(PROGRAMS)
    if unknown:
        parser.error(f"unknown programs {sorted(unknown)}; choose from {', '.join(PROGRAMS)}")
    workdir = Path(tempfile.mkdtemp(prefix="telemetry-instructions-"))
    counts: dict[str, float] = {}
    with SecantusServer(":memory:", log_path=workdir / "secantus.log") as server:
        for program in programs:
            counts[program] = per_point(program, small, large, server.uri, workdir)
    print(f"\ninstructions per point (callgrind; runs of {small:,} and {large:,} points)")
    for program, count in counts.items():
        print(f"  {program:<15} {count:>10,.0f}")
    for mine, bare in (("worker", "bare-consumer"), ("streamer", "bare-publisher")):
        if mine in counts and bare in counts:
            print(f"  {mine} / {bare}: x{counts[mine] / counts[bare]:.2f}")


if __name__ == "__main__":
    main()
