"""Least privilege on the broker: each account of ``tools/rabbitmq_accounts.py`` does its job
and nothing else (docs/security.md#accounts-and-permissions).

Against the shared RabbitMQ, on a virtual host and users of each test's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp
import pytest
from amqp.exceptions import AccessRefused, NotFound, ResourceLocked
from kombu import Connection
from pymongo.database import Database

from telemetry.broker.connect import Broker
from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.status import StatusResponder
from telemetry.cli import SAMPLE_CSV
from tests.integration.conftest import (
    BrokerAccounts,
    cli_env,
    make_points,
    publish_points,
    queue_depth,
)
from tools.launchers import WorkerProcess, telemetry_command, wait_for
from tools.rabbitmq_accounts import layout, rabbitmqctl

Action = Callable[[Any], object]


def cli(url: str, queue_name: str, *args: str) -> tuple[int, str]:
    """``telemetry ARGS`` with the broker URL of one account; exit code and what it printed."""
    env = cli_env(CELERY_BROKER_URL=url, TELEMETRY_QUEUE=queue_name, LOG_FORMAT="text")
    result = telemetry_command(*args, env=env)
    return result.returncode, result.stdout + result.stderr


def outcome(url: str, action: Action, probe_queue: str) -> str:
    """``refused`` if RabbitMQ refuses ``action`` to this account, else ``allowed``.

    A refused publish closes the channel only later: a passive declare after it
    (which needs no rights) is the round trip that brings the refusal back.
    """
    with Connection(url) as connection:
        channel = connection.channel()
        try:
            action(channel)
            channel.queue_declare(probe_queue, passive=True)
        except AccessRefused:
            return "refused"
    return "allowed"


def queue_exists(accounts: BrokerAccounts, name: str) -> bool:
    """Whether the queue ``name`` exists on the accounts' virtual host."""
    with Connection(accounts.admin_url) as connection:
        try:
            connection.channel().queue_declare(name, passive=True)
        except NotFound:
            return False
        except ResourceLocked:  # exclusive to the connection that declared it: it exists
            return True
    return True


def ignore(message: Any) -> None:
    """A consumer's callback that does nothing."""


def publish_to(exchange: str, routing_key: str = "") -> Action:
    return lambda channel: channel.basic_publish(
        amqp.Message('{"method": "shutdown"}', content_type="application/json"),
        exchange=exchange,
        routing_key=routing_key,
    )


def test_a_producer_streams_and_a_worker_stores_with_their_own_accounts(
    broker_accounts: BrokerAccounts,
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
    queue_name: str,
    tmp_path: Path,
) -> None:
    # given: a worker on its account (it declares its queues), 40 rows of the sample
    urls = broker_accounts.urls
    start_worker(celery_broker_url=urls["worker"])
    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join(SAMPLE_CSV.read_text().splitlines()[:41]) + "\n")
    # when
    streamed = cli(urls["producer"], queue_name, "stream", str(rows), "--timestamps", "csv")
    # then
    assert streamed[0] == 0, streamed[1]
    assert "confirmed by the broker: 40" in streamed[1]
    wait_for(
        lambda: database["telemetry"].count_documents({}) == 40,
        60,
        "40 stored points",
        lambda: database["telemetry"].count_documents({}),
    )
    # and the operator's account asks the worker (remote control) and a scraper's status
    # node on the producer's account, and reads the queues
    scraper = StatusResponder(
        Broker(urls["producer"]),
        f"scraper@{queue_name}",
        lambda: {"component": "scraper", "queue": queue_name, "targets": 3},
    )
    scraper.start()
    try:
        wait_for(
            lambda: queue_exists(broker_accounts, f"scraper@{queue_name}.celery.pidbox"),
            10,
            "the scraper's node",
        )
        code, printed = cli(urls["operator"], queue_name, "stats", "--json")
    finally:
        scraper.stop()
    assert code == 0, printed
    stats = json.loads(printed)
    [(node, counters)] = stats["workers"].items()
    assert node.startswith("telemetry@") and counters["telemetry_stored"] == 40
    assert stats["scrapers"][f"scraper@{queue_name}"]["targets"] == 3
    assert stats["queues"] == {queue_name: 0, f"{queue_name}.dead": 0}
    code, printed = cli(urls["operator"], queue_name, "dlq", "list")
    assert code == 0, printed
    assert printed.startswith(f"0 dead-lettered message(s) in {queue_name}.dead"), printed


def test_a_worker_retries_and_dead_letters_with_its_own_account(
    broker_accounts: BrokerAccounts,
    start_worker: Callable[..., WorkerProcess],
    queue_name: str,
) -> None:
    # given: a worker whose database never answers, one retry, on its own account
    urls = broker_accounts.urls
    worker = start_worker(
        celery_broker_url=urls["worker"],
        mongodb_uri="mongodb://127.0.0.1:1/?retryWrites=false",
        max_retries="1",
        retry_backoff_s="0.1",
        mongo_timeout_ms="200",
    )
    # when: the producer's account sends two points
    sender = ConfirmingPublisher(Connection(urls["producer"]), broker_accounts.topology)
    sender.open()
    try:
        ids = publish_points(sender, make_points(2))
    finally:
        sender.close()
    # then: each was retried through <queue>.retry, then dead-lettered
    dead = f"{queue_name}.dead"
    wait_for(lambda: queue_depth(broker_accounts.admin_url, dead) == 2, 60, "2 dead letters")
    assert "ACCESS_REFUSED" not in worker.log()
    code, printed = cli(urls["operator"], queue_name, "dlq", "list")
    assert code == 0, printed
    assert all(task_id in printed for task_id in ids), printed
    assert "StorageUnavailable" in printed, "the retry copy carried its error"


def test_each_account_is_refused_what_is_not_its_job(
    broker_accounts: BrokerAccounts, queue_name: str
) -> None:
    # given: the queues, and the control mailbox as a worker declares it
    broker_accounts.declare_queues()
    with Connection(broker_accounts.admin_url) as admin:
        admin.channel().exchange_declare(
            "celery.pidbox", "fanout", durable=False, auto_delete=False
        )
    dead = f"{queue_name}.dead"
    checks: dict[str, Action] = {
        "consume the work queue": lambda ch: ch.basic_consume(queue_name, callback=ignore),
        "get from the work queue": lambda ch: ch.basic_get(queue_name),
        "purge the work queue": lambda ch: ch.queue_purge(queue_name),
        "delete the work queue": lambda ch: ch.queue_delete(queue_name),
        "get a dead letter": lambda ch: ch.basic_get(dead),
        "purge the dead letters": lambda ch: ch.queue_purge(dead),
        "declare a queue of its own": lambda ch: ch.queue_declare("mine", auto_delete=True),
        "publish to celery.pidbox": publish_to("celery.pidbox"),
        "publish through the default exchange": publish_to("", queue_name),
        "publish a point": lambda ch: ch.basic_publish(
            amqp.Message(json.dumps(build_task_message(make_points(1)[0], None).body)),
            exchange=queue_name,
            routing_key=queue_name,
        ),
    }
    expected = {
        "producer": {"publish a point"},
        "worker": {
            "consume the work queue",
            "get from the work queue",
            "purge the work queue",
            "delete the work queue",
            "publish a point",
        },
        "operator": {
            "get a dead letter",
            "purge the dead letters",
            "publish to celery.pidbox",
            "publish a point",
        },
    }
    # when
    seen: dict[str, set[str]] = {}
    for role in expected:
        broker_accounts.declare_queues()  # again: the worker's account may delete its queue
        url = broker_accounts.urls[role]
        seen[role] = {
            name for name, action in checks.items() if outcome(url, action, dead) == "allowed"
        }
    # then
    assert seen == expected


def test_a_producer_before_any_queue_exists_says_how_to_make_them(
    broker_accounts: BrokerAccounts, queue_name: str, tmp_path: Path
) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join(SAMPLE_CSV.read_text().splitlines()[:3]) + "\n")
    code, printed = cli(broker_accounts.urls["producer"], queue_name, "stream", str(rows))
    assert code == 2, printed
    [line] = printed.strip().splitlines()
    assert "does not exist, and this broker account may not declare it" in line
    assert "python -m tools.rabbitmq_accounts" in line


def test_a_producer_on_another_shard_count_than_the_workers_says_which_and_the_way_out(
    broker_accounts: BrokerAccounts, queue_name: str, tmp_path: Path
) -> None:
    # given: the single queue, declared, with points waiting in it
    broker_accounts.declare_queues()
    sender = ConfirmingPublisher(Connection(broker_accounts.admin_url), broker_accounts.topology)
    sender.open()
    publish_points(sender, make_points(3))
    sender.close()
    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join(SAMPLE_CSV.read_text().splitlines()[:3]) + "\n")
    # when: a producer, whose account may not declare queues, is told 3 shards
    env = cli_env(
        CELERY_BROKER_URL=broker_accounts.urls["producer"],
        TELEMETRY_QUEUE=queue_name,
        QUEUE_SHARDS="3",
        LOG_FORMAT="text",
    )
    result = telemetry_command("stream", str(rows), env=env)
    # then: one line names the count in use and the way out
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = (result.stdout + result.stderr).strip().splitlines()
    assert "QUEUE_SHARDS=3, but the broker's queue" in line
    assert "in use with 1 shard(s) (3 message(s) waiting" in line
    assert "set QUEUE_SHARDS=1 like the rest" in line


@pytest.mark.parametrize("role", ["producer", "worker", "operator"])
def test_the_accounts_layout_is_what_the_tool_shows(
    broker_accounts: BrokerAccounts, role: str
) -> None:
    listed = rabbitmqctl()(["list_permissions", "-p", broker_accounts.vhost], None)
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in listed.splitlines()}
    [user] = [name for name in rows if name.endswith(f"-{role}")]
    [account] = [a for a in layout(broker_accounts.topology.queue_name) if a.role == role]
    assert rows[user] == [account.configure, account.write, account.read]
