"""Fixtures over real sockets: RabbitMQ on 127.0.0.1:5672 and SecantusDB subprocesses."""

from __future__ import annotations

import os
import shutil
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from pymongo import MongoClient
from pymongo.database import Database

from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.shards import ShardLayout, consumed_layout
from telemetry.broker.topology import Topology
from telemetry.config import ENV_NAMES, Settings, load_settings
from telemetry.demo.embedded import SecantusServer
from tests.conftest import server_missing
from tools import rabbitmq_accounts
from tools.launchers import (
    REPO,
    FlowerProcess,
    WorkerProcess,
    clean_env,
)

NAMES = frozenset(ENV_NAMES.values())
BROKER_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def cli_env(**settings: str) -> dict[str, str]:
    """Environment for a ``telemetry`` command: ours cleaned, the test queue type (as the
    workers get it), ``settings`` set, repo importable."""
    if os.environ.get("TEST_QUEUE_TYPE"):
        settings = {"QUEUE_TYPE": os.environ["TEST_QUEUE_TYPE"], **settings}
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


def settings_for(queue_name: str, **environment: str) -> Settings:
    """The settings a test's workers run with: defaults, the queue type `make test` asks for
    (TEST_QUEUE_TYPE, quorum unless set), then ``environment`` (variable names as keys)."""
    env = {"TELEMETRY_QUEUE": queue_name}
    if os.environ.get("TEST_QUEUE_TYPE"):
        env["QUEUE_TYPE"] = os.environ["TEST_QUEUE_TYPE"]
    env.update(environment)
    return load_settings(env=env)


# The topologies each test declared (its workers' retry settings and shards differ), for
# the clean-up.
_declared: dict[str, list[Topology]] = {}


def declared_shards(queue_name: str, **environment: str) -> ShardLayout:
    """The shard layout of these settings on the test's queue, deleted after the test."""
    layout = ShardLayout.of(settings_for(queue_name, **environment))
    _declared.setdefault(queue_name, []).extend(layout.topologies)
    return layout


@pytest.fixture
def queue_name(broker_url: str) -> Iterator[str]:
    """A queue of this test's own; every queue of its topology is deleted afterwards."""
    name = f"t.{uuid.uuid4().hex[:12]}"
    _declared[name] = [Topology.of(settings_for(name))]
    yield name
    delete_topologies(broker_url, _declared.pop(name))


def delete_topologies(url: str, topologies: Sequence[Topology]) -> None:
    """Delete every queue and exchange of ``topologies`` on the broker at ``url``."""
    names = {queue for topology in topologies for queue in topology.queue_names()}
    exchanges = {exchange for topology in topologies for exchange in topology.exchange_names()}
    with Connection(url) as connection:
        channel = connection.channel()
        for queue in sorted(names):
            channel.queue_delete(queue)
        for exchange in sorted(exchanges):
            channel.exchange_delete(exchange)


def confirming(url: str) -> Connection:
    """A kombu connection whose publishes wait for the broker's confirm (raise on nack).

    Tests publishing raw messages use it: without a confirm, a message whose
    connection closes at once can be dropped before a quorum queue has it.
    """
    return Connection(url, transport_options={"confirm_publish": True}, connect_timeout=5)


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
        concurrency: int = 10,
        mongodb_uri: str | None = None,
        app: str = "telemetry",
        wait: bool = True,
        cwd: Path = REPO,
        **settings: str,
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
        # `make test` runs the worker and fault tests once more with TEST_BATCH_SIZE=1
        # and TEST_QUEUE_TYPE=classic, so both write strategies and both queue types
        # pass the same tests.
        if os.environ.get("TEST_BATCH_SIZE"):
            env["BATCH_SIZE"] = os.environ["TEST_BATCH_SIZE"]
        if os.environ.get("TEST_QUEUE_TYPE"):
            env["QUEUE_TYPE"] = os.environ["TEST_QUEUE_TYPE"]
        env.update({key.upper(): value for key, value in settings.items()})
        _declared.setdefault(queue_name, []).extend(
            consumed_layout(
                settings_for(queue_name, **{k: v for k, v in env.items() if k in NAMES})
            ).topologies
        )
        log = tmp_path / f"worker-{len(started) + 1}.log"
        worker = WorkerProcess(env, log, concurrency, app=app, cwd=cwd)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def publisher(broker_url: str, queue_name: str) -> Iterator[ConfirmingPublisher]:
    """A confirming publisher on this test's queue."""
    sender = ConfirmingPublisher(Connection(broker_url), Topology.of(settings_for(queue_name)))
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


@dataclass(frozen=True)
class BrokerAccounts:
    """The collector's accounts on a virtual host of a test's own, and an admin's URL there."""

    vhost: str
    urls: dict[str, str]  # by role: producer, worker, operator
    admin_url: str
    topology: Topology

    def declare_queues(self) -> None:
        """Declare the queues as an administrator, as ``tools.rabbitmq_accounts`` does."""
        rabbitmq_accounts.declare_topology(self.admin_url, self.topology)


@pytest.fixture
def broker_accounts(broker_url: str, queue_name: str) -> Iterator[BrokerAccounts]:
    """The layout of ``tools/rabbitmq_accounts.py`` for this test's queue, on a virtual host
    of its own (random passwords); users and virtual host are deleted afterwards.

    Nothing is declared yet: a worker declares its queues, or the test calls
    :meth:`BrokerAccounts.declare_queues`.
    """
    if shutil.which("rabbitmqctl") is None:
        server_missing("rabbitmqctl (to add users to RabbitMQ)", FileNotFoundError("rabbitmqctl"))
    ctl = rabbitmq_accounts.rabbitmqctl()
    token = uuid.uuid4().hex[:10]
    vhost = f"t_{token}"
    accounts = rabbitmq_accounts.layout(queue_name, prefix=f"t{token}")
    host = urllib.parse.urlsplit(broker_url.split(";")[0]).netloc.rsplit("@", 1)[-1]
    try:
        try:
            urls = rabbitmq_accounts.create(accounts, vhost, ctl, host)
            ctl(["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], None)
        except rabbitmq_accounts.AccountsError as exc:
            server_missing("rabbitmqctl allowed to add users and virtual hosts", exc)
        admin_url = rabbitmq_accounts.broker_url("guest", "guest", host, vhost)
        yield BrokerAccounts(vhost, urls, admin_url, Topology.of(settings_for(queue_name)))
    finally:
        rabbitmq_accounts.delete(accounts, vhost, ctl)
