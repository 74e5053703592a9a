"""What the fault scenarios share: the accounting identity and running a command."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from pymongo.database import Database

from telemetry.broker.topology import dead_queue_name
from tests.integration.conftest import queue_depth
from tools.launchers import telemetry_command, wait_for


def rabbitmqctl_rows(*args: str) -> list[dict[str, Any]]:
    """``rabbitmqctl -q ARGS --formatter json`` on the shared broker (read-only listings)."""
    output = subprocess.run(
        ["rabbitmqctl", "-q", *args, "--formatter", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows: list[dict[str, Any]] = json.loads(output)
    return rows


def queue_total(queue_name: str) -> int:
    """Messages in a queue of the shared broker, ready and unacked alike (read-only rabbitmqctl)."""
    rows = rabbitmqctl_rows("list_queues", "name", "messages")
    return sum(int(row["messages"]) for row in rows if row["name"] == queue_name)


def run_cli(*args: str, env: Mapping[str, str], timeout_s: float = 120) -> str:
    """Run a ``telemetry`` command that must succeed; return what it printed."""
    result = telemetry_command(*args, env=env, timeout_s=timeout_s)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def wait_for_dead_letters(broker_url: str, queue_name: str, count: int, timeout_s: float) -> None:
    """Wait until ``count`` messages are ready in the queue's dead letters."""
    dead = dead_queue_name(queue_name)
    wait_for(
        lambda: queue_depth(broker_url, dead) == count,
        timeout_s,
        f"{count} dead letters",
        lambda: queue_depth(broker_url, dead),
    )


def stored(database: Database[Any]) -> int:
    return database["telemetry"].count_documents({})


def assert_accounted(
    database: Database[Any],
    broker_url: str,
    queue_name: str,
    published: int,
    rejected: int = 0,
    dead: int = 0,
) -> None:
    """published = stored + rejected + dead-lettered, each exactly as expected."""
    counts = (
        stored(database),
        database["rejected"].count_documents({}),
        queue_depth(broker_url, dead_queue_name(queue_name)),
    )
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
    print(
        f"\n[{test}] published={published} stored={counts[0]} rejected={counts[1]} "
        f"dead-lettered={counts[2]}"
    )
    assert counts == (published - rejected - dead, rejected, dead)
    assert sum(counts) == published
