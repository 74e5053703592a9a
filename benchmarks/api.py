"""``python -m benchmarks.api``: the read API's latency against bare pymongo, in the same run.

Stores one GPU x 10 metrics x 1 hour at 1 Hz (36,000 points, in the store's
document shapes and indexes) in a SecantusDB server this script starts, serves
the API with uvicorn on a local port, and times, interleaved, each ``--repeats``
times after a warm-up:

``raw``      one metric over the hour, 3,600 points: the API following every page
             (default limit 1,000: four requests), against one pymongo ``find``
             of the same points;
             and against pymongo sending the same four keyset queries;
``raw-1p``   the same with ``limit=10000``: one request;
``step=60s`` all ten metrics over the hour averaged per minute (600 buckets),
             against the same ``$group`` pipeline sent by pymongo;
``gpus``     the GPU list, against ``find`` plus ``count_documents`` on ``gpus``.

The API is timed end to end as a client sees it: HTTP over a kept-alive
connection, JSON decoded. Prints a table of p50/p99 in milliseconds and the
API/bare ratio. The issue's target: the API within 1.5x of bare for the raw
window. Run one benchmark at a time; the machine is small.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from pymongo import ASCENDING, MongoClient
from pymongo.database import Database

from telemetry.api import ApiServer
from telemetry.config import load_settings
from telemetry.store.mongo import POINT_PAGE_INDEX, POINT_PAGE_INDEX_NAME

GPU = "GPU-bench-0000"
HOST = "bench-host"
METRICS = [f"DCGM_FI_BENCH_{index:02d}" for index in range(10)]
START = datetime(2025, 7, 18, 20, 0, 0, tzinfo=UTC)
SECONDS = 3_600
END = START + timedelta(seconds=SECONDS - 1)
TARGET_RAW_RATIO = 1.5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_secantus(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A SecantusDB server in memory on a free port, answering pings."""
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(port)),
            *("--storage-path", ":memory:", "--log-level", "WARNING"),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    uri = f"mongodb://127.0.0.1:{port}/?retryWrites=false"
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=500)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.admin.command("ping")
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SecantusDB did not start; see {log}") from None
            time.sleep(0.1)
    client.close()
    return process, uri


def fill(database: Database[dict[str, Any]]) -> int:
    """36,000 points and their GPU, as the collector stores them, with the API's index."""
    points = database["telemetry"]
    points.create_index([("gpu_uuid", ASCENDING), ("timestamp", ASCENDING)], name="gpu_time")
    points.create_index(POINT_PAGE_INDEX, name=POINT_PAGE_INDEX_NAME)
    database["gpus"].create_index("hostname", name="hostname")
    now = datetime.now(UTC)
    batch: list[dict[str, Any]] = []
    stored = 0
    for second in range(SECONDS):
        moment = START + timedelta(seconds=second)
        for index, metric in enumerate(METRICS):
            batch.append(
                {
                    "_id": {"gpu_uuid": GPU, "metric_name": metric, "timestamp": moment},
                    "gpu_uuid": GPU,
                    "metric_name": metric,
                    "value": float((second * 7 + index) % 101),
                    "timestamp": moment,
                    "hostname": HOST,
                    "ingested_at": now,
                    "labels": {"gpu": "0", "Hostname": HOST},
                }
            )
        if len(batch) >= 2_000:
            stored += len(points.insert_many(batch, ordered=False).inserted_ids)
            batch = []
    if batch:
        stored += len(points.insert_many(batch, ordered=False).inserted_ids)
    database["gpus"].insert_one(
        {
            "_id": GPU,
            "hostname": HOST,
            "device": "nvidia0",
            "gpu_index": 0,
            "model_name": "NVIDIA H100 80GB HBM3",
            "first_seen": START,
            "last_seen": END,
            "updated_at": now,
        }
    )
    return stored


class Http:
    """GETs over one kept-alive connection, JSON decoded, as a client program would."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self._connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)

    def get(self, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        target = f"{path}?{urlencode(params)}" if params else path
        try:
            self._connection.request("GET", target)
            response = self._connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # uvicorn closes a connection idle for 5 s, e.g. while a slow bare run went on;
            # reconnecting on localhost costs well under a millisecond.
            self._connection.close()
            self._connection.request("GET", target)
            response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path} {params}: {response.status} {body[:200]!r}")
        decoded: dict[str, Any] = json.loads(body)
        return decoded

    def all_points(self, path: str, params: list[tuple[str, str]]) -> int:
        """Follow every page; return how many points came back."""
        count = 0
        cursor = None
        while True:
            body = self.get(path, params + ([("cursor", cursor)] if cursor else []))
            count += len(body["points"])
            cursor = body["next_cursor"]
            if cursor is None:
                return count

    def close(self) -> None:
        self._connection.close()


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile (with few samples, p99 is the slowest run)."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def timed(run: Callable[[], int], expected: int) -> float:
    started = time.perf_counter()
    got = run()
    elapsed = time.perf_counter() - started
    if got != expected:
        raise RuntimeError(f"expected {expected} results, got {got}")
    return elapsed * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per case first")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        secantus, uri = start_secantus(Path(scratch) / "secantus.log")
        try:
            results = run(uri, args.repeats, args.warmup)
        finally:
            secantus.terminate()
            secantus.wait(timeout=30)
    print_table(results, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def run(uri: str, repeats: int, warmup: int) -> list[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True)
    database = client["bench_api"]
    started = time.perf_counter()
    stored = fill(database)
    print(f"stored {stored:,} points in {time.perf_counter() - started:.1f}s", flush=True)
    points = database["telemetry"]
    window = {"$gte": START, "$lte": END}
    step_ms = 60_000
    millis = {"$toLong": "$timestamp"}

    def bare_raw() -> int:
        cursor = (
            points.find(
                {"gpu_uuid": GPU, "metric_name": {"$in": [METRICS[0]]}, "timestamp": window},
                {"_id": 0, "metric_name": 1, "value": 1, "timestamp": 1, "labels": 1},
            )
            .sort([("timestamp", ASCENDING), ("metric_name", ASCENDING)])
            .max_time_ms(10_000)
        )
        return len(list(cursor))

    def bare_raw_paged() -> int:
        # The API's own keyset queries, pages of 1,000, sent by pymongo: the same server work.
        total = 0
        after: tuple[datetime, str] | None = None
        while True:
            selector: dict[str, Any] = {
                "gpu_uuid": GPU,
                "metric_name": {"$in": [METRICS[0]]},
                "timestamp": {"$gte": after[0] if after else START, "$lte": END},
            }
            if after is not None:
                selector["$or"] = [
                    {"timestamp": {"$gt": after[0]}},
                    {"timestamp": after[0], "metric_name": {"$gt": after[1]}},
                ]
            page = list(
                points.find(selector, {"_id": 0, "metric_name": 1, "value": 1, "timestamp": 1})
                .sort([("timestamp", ASCENDING), ("metric_name", ASCENDING)])
                .limit(1_001)
                .max_time_ms(10_000)
            )
            total += min(len(page), 1_000)
            if len(page) <= 1_000:
                return total
            after = (page[999]["timestamp"], page[999]["metric_name"])

    def bare_step() -> int:
        pipeline: list[dict[str, Any]] = [
            {"$match": {"gpu_uuid": GPU, "timestamp": window}},
            {
                "$group": {
                    "_id": {
                        "m": "$metric_name",
                        "b": {"$subtract": [millis, {"$mod": [millis, step_ms]}]},
                    },
                    "v": {"$avg": "$value"},
                    "n": {"$sum": 1},
                }
            },
            {"$sort": {"_id.b": 1, "_id.m": 1}},
        ]
        return len(list(points.aggregate(pipeline, maxTimeMS=10_000)))

    def bare_gpus() -> int:
        found = list(database["gpus"].find({}).sort("_id", ASCENDING).limit(101))
        database["gpus"].count_documents({})
        return len(found)

    settings = load_settings(env={}, overrides={"mongodb_uri": uri, "mongodb_db": "bench_api"})
    results = []
    with ApiServer(settings) as server:
        http = Http(server.url)
        path = f"/api/v1/gpus/{GPU}/telemetry"
        span = [("start_time", "2025-07-18T20:00:00Z"), ("end_time", "2025-07-18T20:59:59Z")]
        raw = [("metric_name", METRICS[0]), *span]
        paged = lambda: http.all_points(path, raw)  # noqa: E731
        cases: list[tuple[str, Callable[[], int], Callable[[], int], int]] = [
            ("raw 1 metric x 1 h, pages of 1,000", paged, bare_raw, 3_600),
            ("  same, bare paged alike", paged, bare_raw_paged, 3_600),
            (
                "raw 1 metric x 1 h, limit=10000",
                lambda: http.all_points(path, [*raw, ("limit", "10000")]),
                bare_raw,
                3_600,
            ),
            (
                "10 metrics x 1 h, step=60s avg",
                lambda: http.all_points(path, [*span, ("step", "60s")]),
                bare_step,
                600,
            ),
            ("GPU list", lambda: len(http.get("/api/v1/gpus", [])["gpus"]), bare_gpus, 1),
        ]
        for name, api_run, bare_run, expected in cases:
            for _ in range(warmup):
                timed(api_run, expected)
                timed(bare_run, expected)
            api_ms: list[float] = []
            bare_ms: list[float] = []
            # Interleaved, so a slow moment of the shared machine hits both sides alike.
            for _ in range(repeats):
                api_ms.append(timed(api_run, expected))
                bare_ms.append(timed(bare_run, expected))
            results.append(
                {
                    "case": name,
                    "results": expected,
                    "api_p50_ms": statistics.median(api_ms),
                    "api_p99_ms": percentile(api_ms, 0.99),
                    "bare_p50_ms": statistics.median(bare_ms),
                    "bare_p99_ms": percentile(bare_ms, 0.99),
                }
            )
            print(f"  done: {name}", flush=True)
        http.close()
    client.close()
    return results


def print_table(results: list[dict[str, Any]], repeats: int) -> None:
    print(f"\nRead API vs bare pymongo, same data and run ({repeats} runs each; ms)")
    header = (
        f"{'case':<36} {'n':>6} {'API p50':>9} {'API p99':>9} {'bare p50':>9} "
        f"{'bare p99':>9} {'p50 ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in results:
        ratio = row["api_p50_ms"] / row["bare_p50_ms"]
        print(
            f"{row['case']:<36} {row['results']:>6,} {row['api_p50_ms']:>9.1f} "
            f"{row['api_p99_ms']:>9.1f} {row['bare_p50_ms']:>9.1f} {row['bare_p99_ms']:>9.1f} "
            f"{ratio:>9.2f}x"
        )
    print()
    for row in results[:3]:
        ratio = row["api_p50_ms"] / row["bare_p50_ms"]
        verdict = "meets" if ratio <= TARGET_RAW_RATIO else "misses"
        print(f"{row['case'].strip()}: {ratio:.2f}x, {verdict} the {TARGET_RAW_RATIO}x target")


if __name__ == "__main__":
    main()
