"""Fault injection on the broker: restarted mid-stream.

Against real workers, the real RabbitMQ and SecantusDB processes.

Each scenario checks the accounting identity with exact numbers:
published = stored + rejected + dead-lettered, with no point stored twice
(the point's ``_id`` makes a second copy impossible, so "stored" is compared
with the number of distinct points published).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database

from tests.integration.conftest import cli_env, queue_depth
from tests.integration.faults_support import assert_accounted, stored
from tools.launchers import REPO, WorkerProcess, wait_for

pytestmark = pytest.mark.faults


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def test_broker_restarted_mid_stream_every_confirmed_point_is_stored(
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
    broker_url: str,
    queue_name: str,
    tmp_path: Path,
) -> None:
    # given: a worker, and a streamer sending 3000 points at 300/s
    worker = start_worker()
    env = cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name)
    log = (tmp_path / "streamer.log").open("w")
    streamer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "telemetry.cli",
            "stream",
            "--loop",
            "--limit",
            "3000",
            "--rate",
            "300",
            "--no-progress",
            str(REPO / "telemetry/data/dcgm_metrics_20250718_134233.csv"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    # when: RabbitMQ's application stops for a few seconds mid-stream
    try:
        time.sleep(3)
        rabbitmqctl("stop_app")
        time.sleep(3)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    # then
    assert streamer.wait(timeout=180) == 0, (tmp_path / "streamer.log").read_text()
    log.close()
    output = (tmp_path / "streamer.log").read_text()
    assert "confirmed by the broker: 3,000" in output
    wait_for(
        lambda: stored(database) == 3000,
        180,
        "all 3000 points",
        lambda: (stored(database), queue_depth(broker_url, queue_name), worker.log()[-4000:]),
    )
    worker.stop()
    assert_accounted(database, broker_url, queue_name, published=3000)
