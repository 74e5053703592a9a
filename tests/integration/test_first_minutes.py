"""What a new user meets first: one-line errors, masked passwords, a demo that says why."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from telemetry.demo.embedded import SecantusServer
from tests.integration.conftest import cli_env
from tools.launchers import REPO, WorkerProcess, clean_env, telemetry_command

SAMPLE = str(REPO / "telemetry" / "data" / "dcgm_metrics_20250718_134233.csv")
WRONG_PASSWORD = "amqp://guest:not-the-password@127.0.0.1:5672//"


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed on stderr (text logs, as on a terminal)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "command", [("stream", SAMPLE), ("stats",), ("dlq", "list")], ids=lambda c: c[0]
)
def test_a_wrong_broker_password_is_one_line_and_exit_1(
    broker_url: str, command: tuple[str, ...]
) -> None:
    result = telemetry_command(
        *command, env=cli_env(CELERY_BROKER_URL=WRONG_PASSWORD, LOG_FORMAT="text")
    )
    assert result.returncode == 1
    line = one_line(result)
    assert "login refused" in line
    assert "not-the-password" not in result.stderr + result.stdout
    assert "guest:***@" in line


def test_an_unknown_virtual_host_is_one_line_and_exit_1(broker_url: str) -> None:
    result = telemetry_command(
        "dlq",
        "list",
        env=cli_env(CELERY_BROKER_URL=broker_url.rstrip("/") + "/no-such-vhost", LOG_FORMAT="text"),
    )
    assert result.returncode == 1
    assert "virtual host" in one_line(result)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (WRONG_PASSWORD, "login refused"),
        ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost", "virtual host"),
    ],
)
def test_a_worker_with_a_refused_login_says_so_in_one_line_at_start(
    broker_url: str, tmp_path: Path, url: str, reason: str
) -> None:
    worker = WorkerProcess(clean_env(CELERY_BROKER_URL=url), tmp_path / "worker.log")
    assert worker.process.wait(timeout=60) == 1
    worker.stop()
    lines = [line for line in worker.log().splitlines() if line.strip()]
    assert len(lines) == 1, worker.log()
    assert reason in lines[0]
    assert "not-the-password" not in lines[0]


def test_the_demo_on_a_real_broker_masks_its_password_and_says_why_it_stalls(
    broker_url: str,
    queue_name: str,
    mongo_server: SecantusServer,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    # given: another worker already consuming the queue the demo will use
    start_worker(mongodb_db="elsewhere")
    env = cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name, LOG_FORMAT="text")
    # when
    result = telemetry_command(
        "demo",
        "--data-dir",
        str(tmp_path / "data"),
        "--stall-timeout",
        "5",
        "--no-progress",
        env=env,
        timeout_s=180,
    )
    # then
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    password = broker_url.split("@")[0].rsplit(":", 1)[1]
    assert f":{password}@" not in output
    assert "guest:***@" in output
    assert "INCOMPLETE" in output
    assert "another worker on queue" in output
    assert "Traceback" not in output
