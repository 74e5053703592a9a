"""Fixtures over real sockets: RabbitMQ on 127.0.0.1:5672 and SecantusDB subprocesses."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from pymongo import MongoClient
from pymongo.database import Database

from telemetry.celery_app import app
from telemetry.embedded import SecantusServer, free_port
from telemetry.errors import TelemetryError
from telemetry.publisher import ConfirmingPublisher, build_task_message
from telemetry.queues import dead_exchange_name, dead_queue_name
from tests.conftest import COLLECTOR_ENV, server_missing

REPO = Path(__file__).resolve().parents[2]
BROKER_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    state: Callable[[], object] | None = None,
) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` and ``state()`` if it never does."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            seen = f"; last seen: {state()}" if state is not None else ""
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}{seen}")
        time.sleep(0.1)


def cli_env(**settings: str) -> dict[str, str]:
    """Environment for a ``telemetry`` command: ours cleaned, ``settings`` set, repo importable."""
    env = {key: value for key, value in os.environ.items() if key not in COLLECTOR_ENV}
    env["PYTHONPATH"] = str(REPO)
    env.update(settings)
    return env


@pytest.fixture(scope="session")
def broker_url() -> str:
    """The real RabbitMQ, pinged."""
    with Connection(BROKER_URL) as connection:
        try:
            connection.ensure_connection(max_retries=2, interval_start=0.5)
        except Exception as exc:
            server_missing(f"RabbitMQ at {BROKER_URL}", exc)
    return BROKER_URL


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecantusServer]:
    """One SecantusDB server for the session, in memory."""
    log = tmp_path_factory.mktemp("secantus") / "server.log"
    server = SecantusServer(":memory:", log_path=log)
    try:
        server.start()
    except TelemetryError as exc:
        server_missing("SecantusDB", exc)
    yield server
    server.stop()


@pytest.fixture
def database_name() -> str:
    """A database of this test's own."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def database(mongo_server: SecantusServer, database_name: str) -> Iterator[Database[Any]]:
    """This test's database on the session server, dropped afterwards."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_server.uri, tz_aware=True)
    yield client[database_name]
    client.drop_database(database_name)
    client.close()


@pytest.fixture
def queue_name(broker_url: str) -> Iterator[str]:
    """A queue of this test's own; it and its dead-letter queue are deleted afterwards."""
    name = f"t.{uuid.uuid4().hex[:12]}"
    yield name
    with Connection(broker_url) as connection:
        channel = connection.channel()
        for queue in (name, dead_queue_name(name)):
            channel.queue_delete(queue)
        for exchange in (name, dead_exchange_name(name)):
            channel.exchange_delete(exchange)


def queue_depth(broker_url: str, name: str) -> int:
    """Messages ready in a queue (unacked ones are not counted)."""
    with Connection(broker_url) as connection:
        ok = connection.channel().queue_declare(name, passive=True)
        return int(ok.message_count)


class WorkerProcess:
    """A real ``celery -A telemetry worker`` process and its log."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "telemetry",
                "worker",
                f"--concurrency={concurrency}",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        """Everything the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Block until the worker logs that it is consuming."""
        wait_for(
            lambda: " ready." in self.log() or self.process.poll() is not None,
            timeout_s,
            "the worker to start",
        )
        if self.process.poll() is not None:
            pytest.fail(f"worker exited with {self.process.returncode}:\n{self.log()}")

    def last_stats(self) -> dict[str, Any]:
        """The statistics line the worker logged last (the final one, once stopped)."""
        lines = [line for line in self.log().splitlines() if '"Collector statistics"' in line]
        assert lines, "the worker logged no statistics line"
        stats: dict[str, Any] = json.loads(lines[-1])
        return stats

    def rss_kb(self) -> int:
        """The worker's resident memory now, in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        """Send ``sig`` and wait for the process to end; return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture
def start_worker(
    broker_url: str,
    mongo_server: SecantusServer,
    database_name: str,
    queue_name: str,
    tmp_path: Path,
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real workers for this test's queue and database; all are stopped afterwards."""
    started: list[WorkerProcess] = []

    def start(
        concurrency: int = 10, mongodb_uri: str | None = None, **settings: str
    ) -> WorkerProcess:
        env = dict(os.environ)
        env.update(
            {
                "CELERY_BROKER_URL": broker_url,
                "MONGODB_URI": mongodb_uri or mongo_server.uri,
                "MONGODB_DB": database_name,
                "TELEMETRY_QUEUE": queue_name,
                # Unique per test: node names (telemetry@<id>) are broker-wide.
                "INSTANCE_ID": f"worker-{len(started) + 1}-{queue_name}",
                "STATS_INTERVAL_S": "1",
                # Off unless a test asks for a port: workers of one host would clash.
                "METRICS_PORT": "0",
                "MONGO_TIMEOUT_MS": "1000",
                "PYTHONPATH": str(REPO),
            }
        )
        # `make test` runs the integration tests once more with TEST_BATCH_SIZE=1,
        # so both the batch path and the per-message path pass the same tests.
        if os.environ.get("TEST_BATCH_SIZE"):
            env["BATCH_SIZE"] = os.environ["TEST_BATCH_SIZE"]
        env.update({key.upper(): value for key, value in settings.items()})
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started) + 1}.log", concurrency)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def publisher(broker_url: str, queue_name: str) -> Iterator[ConfirmingPublisher]:
    """A confirming publisher on this test's queue."""
    sender = ConfirmingPublisher(Connection(broker_url), queue_name)
    sender.open()
    yield sender
    sender.close()


def publish_points(
    sender: ConfirmingPublisher,
    points: list[dict[str, Any]],
    metadata: dict[str, Any] | None = None,
) -> list[str]:
    """Publish each point as one task and wait for every confirm; return the task ids."""
    ids = []
    for point in points:
        message = build_task_message(app, point, metadata)
        sender.send(message)
        ids.append(message.task_id)
    sender.flush()
    return ids


def make_points(count: int, gpus: int = 10) -> list[dict[str, Any]]:
    """``count`` distinct valid points spread over ``gpus`` GPUs."""
    return [
        {
            "gpu_uuid": f"GPU-{index % gpus:04d}",
            "metric_name": "DCGM_FI_DEV_GPU_TEMP",
            "value": float(index % 90),
            "timestamp": f"2025-07-18T{(index // 3600) % 24:02d}:{(index // 60) % 60:02d}:"
            f"{index % 60:02d}.{index // 86400:03d}Z",
        }
        for index in range(count)
    ]


FLOWER_USER = ("operator", "s3cret")


class FlowerProcess:
    """A real ``celery -A telemetry flower`` process, asked through its HTTP API."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "telemetry",
                "flower",
                "--address=127.0.0.1",
                f"--port={self.port}",
            ],
            cwd=REPO,
            env={**env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_USER)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        token = base64.b64encode(":".join(FLOWER_USER).encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}

    def get(self, path: str, **query: str) -> str:
        """The body of ``GET path?query``, authenticated like an operator."""
        url = f"http://127.0.0.1:{self.port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, headers=self._headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            body: bytes = response.read()
        return body.decode()

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"Flower exited with {self.process.returncode}:\n{self.log()}")
        try:
            return self.get("/healthcheck") == "OK"
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 30) -> None:
        """Block until Flower answers HTTP."""
        wait_for(self._answers, timeout_s, "Flower to answer", self.log)

    def log(self) -> str:
        """Everything Flower printed so far."""
        return self.log_path.read_text(errors="replace")

    def tasks(self, **query: str) -> dict[str, dict[str, Any]]:
        """``/api/tasks`` with these filters (``workername``, ``state``, ``search``…)."""
        found: dict[str, dict[str, Any]] = json.loads(self.get("/api/tasks", **query))
        return found

    def event_counts(self, node: str) -> dict[str, float]:
        """Flower's ``flower_events_total`` for one worker from ``/metrics``, by event type."""
        pattern = re.compile(
            r'^flower_events_total\{task="telemetry\.ingest",type="([^"]+)",'
            rf'worker="{re.escape(node)}"\}} (\S+)$'
        )
        counts = {}
        for line in self.get("/metrics").splitlines():
            matched = pattern.match(line)
            if matched:
                counts[matched[1]] = float(matched[2])
        return counts

    def sees_online(self, node: str) -> bool:
        """Whether Flower has had an online event or heartbeat from ``node``."""
        return f'flower_worker_online{{worker="{node}"}} 1.0' in self.get("/metrics")

    def stop(self) -> None:
        """Stop Flower."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def flower(broker_url: str, tmp_path: Path) -> Iterator[FlowerProcess]:
    """Flower on the real RabbitMQ with basic auth (as in docker-compose), answering."""
    env = dict(os.environ, CELERY_BROKER_URL=broker_url, PYTHONPATH=str(REPO))
    process = FlowerProcess(env, tmp_path / "flower.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
