"""``make flower-screenshot``: Flower's task page as an operator sees it, saved as a PNG.

Starts a SecantusDB server, a collector worker and Flower (all on this
machine, RabbitMQ on 127.0.0.1:5672), ingests points from the bundled DCGM
sample: valid ones, invalid ones, and valid ones while the database is down
(so they fail and are dead-lettered), waits until Flower has seen every
outcome, then has headless Chromium photograph the task page. Chromium comes
from Debian's ``chromium`` package, which the Makefile target installs.
Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kombu import Connection

from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.topology import Topology, dead_exchange_name
from telemetry.cli import SAMPLE_CSV
from telemetry.config import load_settings
from telemetry.dcgm import Row, read_dcgm_csv
from telemetry.demo.embedded import SecantusServer
from telemetry.models import format_timestamp
from tools.launchers import FlowerProcess, WorkerProcess, clean_env, wait_for

REPO = Path(__file__).resolve().parents[1]
BROKER = os.environ.get("SCREENSHOT_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
INSTANCE_ID = "collector-1"
VALID = 6
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,900",
    "--virtual-time-budget=8000",
)


def flower_get(port: int, path: str, **query: str) -> str:
    """A page or API answer from the local Flower."""
    url = f"http://127.0.0.1:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def tasks_in(port: int, node: str, state: str) -> int:
    """How many tasks of ``node`` Flower shows in ``state``."""
    found: dict[str, Any] = json.loads(flower_get(port, "/api/tasks", workername=node, state=state))
    return len(found)


def sample_messages(count: int, skip: int = 0) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``count`` points and their metadata from the bundled sample, stamped a moment ago."""
    rows = [row for row in read_dcgm_csv(SAMPLE_CSV) if isinstance(row, Row)][skip : skip + count]
    now = datetime.now(UTC)
    return [
        (
            dict(
                row.point.wire(),
                timestamp=format_timestamp(now - timedelta(milliseconds=index)),
            ),
            row.metadata.known(),
        )
        for index, row in enumerate(rows)
    ]


def publish(sender: ConfirmingPublisher, messages: list[tuple[dict[str, Any], Any]]) -> None:
    """Publish each point as one task, confirmed, a little apart so the page reads in order."""
    for point, metadata in messages:
        sender.send(build_task_message(point, metadata))
        sender.flush()
        time.sleep(0.05)


def invalid_messages() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Three points a collector must refuse: no uuid, NaN, a time that is not one."""
    (point, metadata), (second, _), (third, _) = sample_messages(3, skip=100)
    return [
        (dict(point, gpu_uuid=""), metadata),
        (dict(second, value="NaN"), metadata),
        (dict(third, timestamp="yesterday"), metadata),
    ]


def screenshot(url: str, output: Path, chromium: str) -> None:
    """Have headless Chromium save ``url`` as a PNG, with a profile of its own."""
    with tempfile.TemporaryDirectory(prefix="flower-shot-") as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={output}",
                url,
            ],
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def run(output: Path, workdir: Path, chromium: str, page: str) -> None:
    """Start everything, ingest the three kinds of points, and photograph ``page``.

    Flower runs from the repository, so it reads ``flowerconfig.py`` as it
    would in the image.
    """
    queue = f"screenshot.{uuid.uuid4().hex[:8]}"
    node = f"telemetry@{INSTANCE_ID}"
    server = SecantusServer(":memory:", log_path=workdir / "secantus.log")
    server.start()
    env = clean_env(
        CELERY_BROKER_URL=BROKER,
        MONGODB_URI=server.uri,
        MONGODB_DB="screenshot",
        TELEMETRY_QUEUE=queue,
        INSTANCE_ID=INSTANCE_ID,
        MAX_RETRIES="1",
        RETRY_BACKOFF_S="0.5",
        MONGO_TIMEOUT_MS="1000",
    )
    worker = WorkerProcess(env, workdir / "worker.log", concurrency=4)
    flower = FlowerProcess(env, workdir / "flower.log", user=None)
    try:
        worker.wait_ready()
        flower.wait_ready()
        wait_for(lambda: flower.sees_online(node), 60, "the worker to come online in Flower")
        port = flower.port
        topology = Topology.of(load_settings(env={"TELEMETRY_QUEUE": queue}))
        sender = ConfirmingPublisher(Connection(BROKER), topology)
        sender.open()
        try:
            publish(sender, sample_messages(VALID))
            publish(sender, invalid_messages())
            wait_for(lambda: tasks_in(port, node, "SUCCESS") == VALID + 3, 60, "the successes")
            server.stop()
            publish(sender, sample_messages(2, skip=200))
            wait_for(lambda: tasks_in(port, node, "FAILURE") == 2, 90, "2 failures")
        finally:
            sender.close()
        output.parent.mkdir(parents=True, exist_ok=True)
        screenshot(f"http://127.0.0.1:{port}{page}", output, chromium)
    finally:
        flower.stop()
        worker.stop()
        server.stop()
        with Connection(BROKER) as connection:
            channel = connection.channel()
            for name in Topology.of(load_settings(env={"TELEMETRY_QUEUE": queue})).queue_names():
                channel.queue_delete(name)
            for exchange in (queue, dead_exchange_name(queue)):
                channel.exchange_delete(exchange)


def main() -> None:
    """Parse the arguments and take the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "flower-tasks.png")
    parser.add_argument(
        "--page",
        # Only this worker's tasks: others may share the broker.
        default=f"/tasks?worker=telemetry@{INSTANCE_ID}",
        help="Flower page to photograph",
    )
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flower-screenshot-") as workdir:
        run(args.output.resolve(), Path(workdir), args.chromium, args.page)
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
