"""``telemetry stats`` against live workers and the real broker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from pymongo.database import Database

from telemetry.broker.publisher import ConfirmingPublisher
from tests.integration.conftest import cli_env, make_points, publish_points
from tools.launchers import WorkerProcess, wait_for


def stats_command(broker_url: str, queue_name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name)
    return subprocess.run(
        [sys.executable, "-m", "telemetry.cli", "stats", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_stats_lists_each_worker_of_the_queue_with_its_counters_and_the_depths(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given: two workers on this test's queue, which stored 40 points between them
    start_worker()
    start_worker()
    publish_points(publisher, make_points(40))
    wait_for(lambda: database["telemetry"].count_documents({}) == 40, 60, "40 stored points")
    # when
    result = stats_command(broker_url, queue_name, "--json")
    table = stats_command(broker_url, queue_name)
    # then
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert set(stats["workers"]) == {
        f"telemetry@worker-1-{queue_name}",
        f"telemetry@worker-2-{queue_name}",
    }
    assert sum(w["telemetry_stored"] for w in stats["workers"].values()) == 40
    assert stats["queues"] == {queue_name: 0, f"{queue_name}.dead": 0}
    assert table.returncode == 0
    assert "TOTAL" in table.stdout and f"queue {queue_name}: 0 waiting" in table.stdout


def test_stats_exits_1_when_no_worker_serves_the_queue(broker_url: str, queue_name: str) -> None:
    result = stats_command(broker_url, queue_name, "--timeout", "1")
    assert result.returncode == 1
    assert "(no worker answered)" in result.stdout
