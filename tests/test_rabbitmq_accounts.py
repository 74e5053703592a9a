"""The broker account layout of tools/rabbitmq_accounts.py, name by name.

RabbitMQ matches the rights with Erlang's PCRE; for these expressions Python's
``re`` matches the same names. tests/integration/test_accounts.py checks them
against RabbitMQ itself.
"""

from __future__ import annotations

import re

import pytest

from tools.rabbitmq_accounts import Account, broker_url, layout

ACCOUNTS = {account.role: account for account in layout("t.q-1")}


def allows(account: Account, right: str, name: str) -> bool:
    return re.search(getattr(account, right), name) is not None


@pytest.mark.parametrize(
    ("role", "right", "name", "allowed"),
    [
        ("producer", "write", "t.q-1", True),
        ("producer", "write", "t.q-1.retry", False),
        ("producer", "write", "celery.pidbox", False),
        ("producer", "write", "amq.default", False),
        ("producer", "read", "t.q-1", False),
        ("producer", "configure", "t.q-1", False),
        ("producer", "configure", "scraper@gpu-1.celery.pidbox", True),
        ("producer", "configure", "telemetry@w1.celery.pidbox", False),
        ("worker", "read", "t.q-1", True),
        ("worker", "read", "t.q-1.dead", False),
        ("worker", "write", "t.q-1.retry", True),
        ("worker", "write", "celery.pidbox", False),
        ("worker", "write", "amq.default", False),
        ("worker", "configure", "t.q-1.retry.16000ms", True),
        ("worker", "configure", "t.q-1x", False),
        ("worker", "configure", "telemetry@host.example.com.celery.pidbox", True),
        ("operator", "write", "celery.pidbox", True),
        ("operator", "read", "t.q-1.dead", True),
        ("operator", "read", "t.q-1", False),
        ("operator", "configure", "t.q-1", False),
        ("operator", "configure", "celeryev.5b8c0c1e", True),
        # The shards of QUEUE_SHARDS > 1: the same rights, queue by queue.
        ("producer", "write", "t.q-1.2-of-3", True),
        ("producer", "write", "t.q-1.2-of-3.dead", False),
        ("worker", "read", "t.q-1.0-of-3", True),
        ("worker", "read", "t.q-1.0-of-3.dead", False),
        ("worker", "configure", "t.q-1.1-of-3.retry.1000ms", True),
        ("worker", "configure", "t.q-1.x-of-3", False),
        ("operator", "read", "t.q-1.1-of-3.dead", True),
        ("operator", "read", "t.q-1.1-of-3", False),
    ],
)
def test_each_account_may_touch_only_the_names_of_its_job(
    role: str, right: str, name: str, allowed: bool
) -> None:
    assert allows(ACCOUNTS[role], right, name) is allowed


def test_only_the_worker_may_send_task_events_and_only_the_operator_read_them() -> None:
    assert [a.role for a in ACCOUNTS.values() if a.events_write != "^$"] == ["worker"]
    assert [a.role for a in ACCOUNTS.values() if a.events_read != "^$"] == ["operator"]


def test_a_broker_url_quotes_the_password_and_the_virtual_host() -> None:
    url = broker_url("telemetry-worker", "a/b:c@d", "rabbit:5672", "/telemetry")
    assert url == "amqp://telemetry-worker:a%2Fb%3Ac%40d@rabbit:5672/%2Ftelemetry"
