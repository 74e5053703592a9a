"""``make bench`` for the scraper: parsing, CPU per sample of scrape-and-publish, and a fleet.

1. **Parse**: :mod:`benchmarks.parse`, our parser against prometheus_client's on
   the shared captures and the 200-sample 8-GPU fixture, per sample, same run.
2. **Scrape and publish**: a :class:`Scraper` in this process reads stand-in
   exporters (8 GPUs each, in a process of their own) for a few rounds and
   publishes every point to RabbitMQ with confirms; its CPU per published
   point is set against the bare kombu publisher (benchmarks/bare.py) measured
   in the same run, as the streamer's is.
3. **Fleet**: ``telemetry scrape`` as its own process against ``--exporters``
   stand-in exporters of ``--gpus`` GPUs (about 200 samples each) at
   ``--interval``: whether every round finished on time (no overruns, no
   failed scrapes), and the CPU the scraper used.

Run one benchmark at a time: the machine is small and noisy.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks import parse
from benchmarks.run import BROKER, bare_publisher, delete_queues
from telemetry.broker.backlog import open_publisher
from telemetry.config import load_settings
from telemetry.scraper.run import ScrapeOptions, Scraper
from telemetry.scraper.targets import command_line_targets
from tools.launchers import clean_env

PYTHON = sys.executable


@contextmanager
def exporters(count: int, gpus: int) -> Iterator[list[str]]:
    """``count`` stand-in exporters in a process of their own; yields their URLs."""
    command = [PYTHON, "-m", "telemetry.demo.exporter", "--node", "bench", "--gpus", str(gpus)]
    command += ["--port", "0"] * count
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        urls = re.findall(r"http://\S+/metrics", line)
        if len(urls) != count:
            raise RuntimeError(f"the exporters did not start: {line!r}")
        yield urls
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def scrape_and_publish(targets: int, gpus: int, rounds: int) -> dict[str, float]:
    """CPU per published point of the whole path (fetch, parse, map, publish, confirm)."""
    queue = f"bench.scrape.{uuid.uuid4().hex[:8]}"
    settings = load_settings(env={}, overrides={"broker_url": BROKER, "queue_name": queue})
    with exporters(targets, gpus) as urls:
        options = ScrapeOptions(
            targets=command_line_targets(urls),
            interval_s=1.0,
            timeout_s=0.9,
            scrapes=rounds,
            max_backlog=10_000_000,
        )
        publisher = open_publisher(settings)
        try:
            started, cpu_at_start = time.monotonic(), time.process_time()
            report = Scraper(options).run(publisher)
            cpu_s = time.process_time() - cpu_at_start
            elapsed = time.monotonic() - started
        finally:
            publisher.close()
            delete_queues(queue)
    return {
        "points": report.confirmed,
        "samples": report.samples,
        "elapsed_s": elapsed,
        "cpu_us_per_point": cpu_s / max(1, report.confirmed) * 1e6,
    }


def fleet(count: int, gpus: int, interval_s: float, rounds: int, workdir: Path) -> dict[str, Any]:
    """``telemetry scrape`` against ``count`` exporters: rounds on time and CPU used."""
    queue = f"bench.fleet.{uuid.uuid4().hex[:8]}"
    with exporters(count, gpus) as urls:
        targets_file = workdir / "targets.json"
        hosts = [url.removeprefix("http://").removesuffix("/metrics") for url in urls]
        targets_file.write_text(json.dumps([{"targets": hosts, "labels": {"bench": "fleet"}}]))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        result = subprocess.run(
            [
                *(PYTHON, "-m", "telemetry.cli", "scrape", "--targets-file", str(targets_file)),
                *("--interval", str(interval_s), "--scrapes", str(rounds)),
                *("--timeout", str(min(10.0, interval_s * 0.66))),
            ],
            env=clean_env(
                CELERY_BROKER_URL=BROKER,
                TELEMETRY_QUEUE=queue,
                SCRAPER_PORT="0",
                STREAM_MAX_BACKLOG="100000000",
            ),
            capture_output=True,
            text=True,
            timeout=rounds * interval_s * 4 + 120,
        )
        elapsed = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    delete_queues(queue)
    if result.returncode != 0:
        raise RuntimeError(f"the scraper failed: {result.stderr[-2000:]}")
    summary = result.stdout
    numbers = {
        "scrapes": _number(r"([\d,]+) scrapes", summary),
        "failed_scrapes": _number(r"scrapes in [\d.]+s, ([\d,]+) failed", summary),
        "points": _number(r"confirmed by the broker: ([\d,]+)", summary),
        "samples": _number(r"samples read: ([\d,]+)", summary),
        "overruns": _number(r"overruns \(.*?\): ([\d,]+)", summary),
    }
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "exporters": count,
        "samples_per_scrape": numbers["samples"] // max(1, numbers["scrapes"]),
        "points_per_scrape": numbers["points"] // max(1, numbers["scrapes"]),
        "interval_s": interval_s,
        "rounds": rounds,
        **numbers,
        "on_time": numbers["overruns"] == 0
        and numbers["failed_scrapes"] == 0
        and numbers["scrapes"] == count * rounds,
        "elapsed_s": round(elapsed, 1),
        "cpu_s": round(cpu_s, 2),
        "cpu_share_of_one_core": round(cpu_s / elapsed, 3),
        "cpu_us_per_point": round(cpu_s / max(1, numbers["points"]) * 1e6, 1),
    }


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match[1].replace(",", "")) if match else 0


def main() -> None:
    """Run the three parts and print a table and the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=20, help="scrape-and-publish: exporters")
    parser.add_argument("--rounds", type=int, default=5, help="scrape-and-publish: rounds")
    parser.add_argument("--exporters", type=int, default=200, help="fleet: exporters")
    parser.add_argument("--gpus", type=int, default=12, help="fleet: GPUs per exporter")
    parser.add_argument("--interval", type=float, default=15.0, help="fleet: interval, s")
    parser.add_argument("--fleet-rounds", type=int, default=2, help="fleet: rounds")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    workdir = Path(f"/tmp/bench-scrape-{uuid.uuid4().hex[:8]}")
    workdir.mkdir()
    print("parse…", file=sys.stderr, flush=True)
    parsing = parse.run()
    print("scrape and publish…", file=sys.stderr, flush=True)
    path = scrape_and_publish(args.targets, 8, args.rounds)
    print("bare publisher…", file=sys.stderr, flush=True)
    baseline = bare_publisher(int(path["points"]))
    print("fleet…", file=sys.stderr, flush=True)
    fleet_run = fleet(args.exporters, args.gpus, args.interval, args.fleet_rounds, workdir)
    result = {
        "parse": parsing,
        "scrape_and_publish": path,
        "bare_publisher": baseline,
        "scrape_cpu_ratio_to_bare_publisher": round(
            path["cpu_us_per_point"] / baseline["cpu_us_per_point"], 2
        ),
        "fleet": fleet_run,
    }
    print_table(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


def print_table(result: dict[str, Any]) -> None:
    """The figures a reader wants first."""
    print("\nParse, µs per sample (CPU; warm label cache / cold)")
    for name, figures in result["parse"].items():
        print(
            f"  {name:32} ours {figures['ours_us_per_sample']:6.2f} / "
            f"{figures['ours_cold_us_per_sample']:6.2f}   prometheus_client "
            f"{figures['prometheus_client_us_per_sample']:6.2f}   x{figures['speedup']:.1f} / "
            f"x{figures['speedup_cold']:.1f}"
        )
    path, bare_run = result["scrape_and_publish"], result["bare_publisher"]
    print(
        f"\nScrape and publish: {path['points']:,.0f} points, "
        f"{path['cpu_us_per_point']:.0f} µs CPU/point; bare publisher "
        f"{bare_run['cpu_us_per_point']:.0f} µs (x{result['scrape_cpu_ratio_to_bare_publisher']})"
    )
    run = result["fleet"]
    print(
        f"Fleet: {run['exporters']} exporters x {run['samples_per_scrape']} samples "
        f"({run['points_per_scrape']} points) every "
        f"{run['interval_s']:g}s, {run['rounds']} rounds: {run['scrapes']} scrapes, "
        f"{run['failed_scrapes']} failed, {run['overruns']} overruns "
        f"({'on time' if run['on_time'] else 'NOT on time'}); scraper CPU {run['cpu_s']}s "
        f"over {run['elapsed_s']}s ({run['cpu_share_of_one_core']:.1%} of a core), "
        f"{run['cpu_us_per_point']} µs/point"
    )


if __name__ == "__main__":
    main()
