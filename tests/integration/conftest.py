"""Fixtures over real sockets: RabbitMQ on 127.0.0.1:5672 and SecantusDB subprocesses."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from pymongo import MongoClient
from pymongo.database import Database

from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.topology import dead_exchange_name, dead_queue_name
from telemetry.demo.embedded import SecantusServer
from telemetry.errors import TelemetryError
from tests.conftest import server_missing
from tools.launchers import (
    FlowerProcess,
    WorkerProcess,
    clean_env,
)

BROKER_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def cli_env(**settings: str) -> dict[str, str]:
    """Environment for a ``telemetry`` command: ours cleaned, ``settings`` set, repo importable."""
    return clean_env(**settings)


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
        env = clean_env(
            **{
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
        message = build_task_message(point, metadata)
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


@pytest.fixture
def flower(broker_url: str, tmp_path: Path) -> Iterator[FlowerProcess]:
    """Flower on the real RabbitMQ with basic auth (as in docker-compose), answering."""
    process = FlowerProcess(clean_env(CELERY_BROKER_URL=broker_url), tmp_path / "flower.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
