"""Secrets given through *_FILE variables reach every command, and none of them prints one.

RabbitMQ gets a user of this test's own (a random password, deleted afterwards) and
SecantusDB a user with another; the API token and Flower's login are random too. Every
command then runs on them (a worker, stream, scrape, stats, dlq, api, demo, Flower and
Celery's own inspect), and everything they print, log or serve is searched for each
secret. Each output must be non-empty and show what it should, so the search cannot
pass on nothing.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from telemetry.demo.embedded import SecantusServer, free_port
from tests.conftest import server_missing
from tests.integration.conftest import cli_env
from tests.scrape_support import static_exporters
from tools.launchers import (
    REPO,
    LaunchError,
    WorkerProcess,
    end_process,
    spawn_celery,
    telemetry_command,
    wait_for,
)

SAMPLE = REPO / "telemetry" / "data" / "dcgm_metrics_20250718_134233.csv"
STREAM_ROWS = 12
# A few lines of dcgm-exporter text: two GPUs of one node, two metrics each.
GPU_LABELS = (
    'gpu="{index}",UUID="GPU-5ec2e7a0-0000-4000-8000-00000000000{index}",device="nvidia{index}",'
    'modelName="NVIDIA A100-SXM4-40GB",Hostname="secrets-node"'
)
EXPORTER_TEXT = "".join(
    f"# HELP {metric} {about}\n# TYPE {metric} gauge\n"
    + "".join(f"{metric}{{{GPU_LABELS.format(index=index)}}} {40 + index}\n" for index in (0, 1))
    for metric, about in (
        ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)."),
        ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)."),
    )
).encode()
SCRAPED_POINTS = 4


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    """``rabbitmqctl ARGS`` against the shared broker (users only: it is never stopped)."""
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )


@contextmanager
def rabbitmq_user() -> Iterator[tuple[str, str]]:
    """A RabbitMQ user of this test's own on the shared broker, deleted afterwards."""
    if shutil.which("rabbitmqctl") is None:
        server_missing("rabbitmqctl (to add a user to RabbitMQ)", FileNotFoundError("rabbitmqctl"))
    name = f"t-secrets-{uuid.uuid4().hex[:8]}"
    password = f"rabbit{secrets.token_hex(12)}"
    added = rabbitmqctl("add_user", name, password)
    if added.returncode != 0:
        server_missing("rabbitmqctl add_user", RuntimeError(added.stderr.strip()))
    try:
        allowed = rabbitmqctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
        assert allowed.returncode == 0, allowed.stderr
        yield name, password
    finally:
        rabbitmqctl("delete_user", name)


@contextmanager
def mongo_user(server: SecantusServer) -> Iterator[tuple[str, str]]:
    """A database user of this test's own, dropped afterwards."""
    name = f"t-secrets-{uuid.uuid4().hex[:8]}"
    password = f"mongo{secrets.token_hex(12)}"
    client: MongoClient[dict[str, Any]] = MongoClient(server.uri)
    try:
        client.admin.command("createUser", name, pwd=password, roles=["root"])
        yield name, password
    finally:
        client.admin.command("dropUser", name)
        client.close()


def write_secret(path: Path, value: str, newline: str = "\n") -> str:
    """Write ``value`` as a mounted secret would hold it; return the path, for a _FILE."""
    path.write_bytes((value + newline).encode())
    return str(path)


def small_csv(path: Path, rows: int) -> Path:
    """The bundled sample's header and its first ``rows`` rows."""
    with SAMPLE.open(newline="") as source:
        lines = list(csv.reader(source))[: rows + 1]
    out = io.StringIO()
    csv.writer(out).writerows(lines)
    path.write_text(out.getvalue())
    return path


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Status and body of GET ``url``; an error status is returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def answers(url: str) -> bool:
    try:
        return http_get(url)[0] == 200
    except OSError:
        return False


class Outputs:
    """Everything the processes printed, logged or served, by where it came from."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def add(self, where: str, text: str, shows: str) -> None:
        """Keep ``text``; it must be non-empty and contain ``shows``, proof it is the real one."""
        assert text.strip(), f"{where} is empty"
        assert shows in text, f"{where} does not show {shows!r}:\n{text[-2000:]}"
        self.texts[where] = text

    def add_command(self, where: str, result: subprocess.CompletedProcess[str], shows: str) -> None:
        """A command's exit code (0), and its stdout and stderr together."""
        output = f"{result.stdout}\n{result.stderr}"
        assert result.returncode == 0, f"{where} exited {result.returncode}:\n{output[-3000:]}"
        self.add(where, output, shows)

    def leaks(self, values: dict[str, str]) -> list[str]:
        """Which secret shows in which output."""
        return [
            f"{secret} in {where}"
            for where, text in self.texts.items()
            for secret, value in values.items()
            if value in text
        ]


def test_no_command_prints_a_secret_given_through_its_file(
    broker_url: str,
    mongo_server: SecantusServer,
    database: Database[Any],
    database_name: str,
    queue_name: str,
    tmp_path: Path,
) -> None:
    # given: every secret in a file, as Docker mounts them, and nothing else in the environment
    token = f"token{secrets.token_hex(12)}"
    flower_password = f"flower{secrets.token_hex(12)}"
    with rabbitmq_user() as (rabbit_name, rabbit_password), mongo_user(mongo_server) as mongo:
        mongo_name, mongo_password = mongo
        host = broker_url.split("@", 1)[1]
        files = tmp_path / "secrets"
        files.mkdir()
        env = cli_env(
            CELERY_BROKER_URL_FILE=write_secret(
                files / "broker_url", f"amqp://{rabbit_name}:{rabbit_password}@{host}"
            ),
            MONGODB_URI_FILE=write_secret(
                files / "mongodb_uri",
                f"mongodb://{mongo_name}:{mongo_password}@{mongo_server.host}:"
                f"{mongo_server.port}/?authSource=admin&retryWrites=false",
                "\r\n",
            ),
            API_TOKEN_FILE=write_secret(files / "api_token", token),
            FLOWER_BASIC_AUTH_FILE=write_secret(files / "flower", f"ops:{flower_password}"),
            TELEMETRY_QUEUE=queue_name,
            MONGODB_DB=database_name,
            LOG_FORMAT="text",
        )
        values = {
            "the RabbitMQ password": rabbit_password,
            "the MongoDB password": mongo_password,
            "the API token": token,
            "Flower's password": flower_password,
        }
        outputs = Outputs()
        instance = f"secrets-{queue_name}"

        # the demo first, on a database of its own, before any worker consumes the queue
        demo_db = f"{database_name}_demo"
        try:
            demo = telemetry_command(
                "demo",
                "--limit",
                "20",
                "--data-dir",
                str(tmp_path / "demo"),
                "--no-progress",
                env={**env, "MONGODB_DB": demo_db, "INSTANCE_ID": f"demo-{queue_name}"},
                timeout_s=240,
            )
        finally:
            with MongoClient(mongo_server.uri) as client:
                stored_by_demo = client[demo_db]["telemetry"].count_documents({})
                client.drop_database(demo_db)
        outputs.add_command("telemetry demo --limit 20", demo, "***@")
        assert stored_by_demo > 0

        metrics_port = free_port()
        worker = WorkerProcess(
            {**env, "INSTANCE_ID": instance, "METRICS_PORT": str(metrics_port)},
            tmp_path / "worker.log",
        )
        try:
            worker.wait_ready()

            # when: each command runs on the same secrets
            exported = tmp_path / "small.csv"
            outputs.add_command(
                "telemetry stream",
                telemetry_command("stream", str(small_csv(exported, STREAM_ROWS)), env=env),
                "confirmed",
            )
            with static_exporters([EXPORTER_TEXT]) as (target,):
                outputs.add_command(
                    "telemetry scrape --scrapes 1",
                    telemetry_command(
                        "scrape",
                        "--target",
                        target,
                        "--scrapes",
                        "1",
                        env={**env, "SCRAPER_PORT": "0"},
                    ),
                    "points published",
                )
            telemetry = database["telemetry"]
            wait_for(
                lambda: telemetry.count_documents({}) == STREAM_ROWS + SCRAPED_POINTS,
                60,
                "the streamed and scraped points to be stored",
                lambda: telemetry.count_documents({}),
            )
            node = f"telemetry@{instance}"
            outputs.add_command(
                "telemetry stats", telemetry_command("stats", "--timeout", "5", env=env), node
            )
            stats_json = telemetry_command("stats", "--json", "--timeout", "5", env=env)
            outputs.add_command("telemetry stats --json", stats_json, node)
            stored = json.loads(stats_json.stdout)["workers"][node]["telemetry_stored"]
            assert stored == STREAM_ROWS + SCRAPED_POINTS
            outputs.add_command(
                "telemetry dlq list",
                telemetry_command("dlq", "list", env=env),
                "0 dead-lettered message(s)",
            )
            outputs.add_command(
                "celery -A telemetry inspect telemetry_stats",
                subprocess.run(
                    [
                        sys.executable,
                        *("-m", "celery", "-A", "telemetry", "inspect", "telemetry_stats"),
                        *("-d", node, "--timeout", "5"),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    cwd=REPO,
                ),
                instance,
            )
            metrics_status, metrics_text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert metrics_status == 200
            outputs.add("the worker's /metrics", metrics_text, "telemetry_points_stored_total")
            run_api(env, token, outputs, tmp_path)
            run_flower(env, flower_password, outputs, tmp_path)
        finally:
            worker.stop()
        # The worker's whole log: its banner (the broker URL) first, then every line.
        outputs.add("the worker's log", worker.log(), f"amqp://{rabbit_name}:**@")

    # then
    assert set(outputs.texts) == {
        "telemetry demo --limit 20",
        "telemetry stream",
        "telemetry scrape --scrapes 1",
        "telemetry stats",
        "telemetry stats --json",
        "telemetry dlq list",
        "celery -A telemetry inspect telemetry_stats",
        "the worker's /metrics",
        "telemetry api (its output)",
        "telemetry api (its answers)",
        "Flower's log",
        "Flower's answers",
        "the worker's log",
    }
    assert outputs.leaks(values) == []


def run_api(env: dict[str, str], token: str, outputs: Outputs, tmp_path: Path) -> None:
    """``telemetry api`` for as long as a few requests take, then SIGINT."""
    port = free_port()
    log = (tmp_path / "api.log").open("wb+")
    process = subprocess.Popen(
        [sys.executable, "-m", "telemetry.cli", "api", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/readyz") or process.poll() is not None, 30, "the API")
        if process.poll() is not None:
            raise LaunchError(f"telemetry api exited {process.returncode}")
        bearer = {"Authorization": f"Bearer {token}"}
        refused = http_get(f"{base}/api/v1/gpus", {"Authorization": "Bearer wrong"})
        gpus = http_get(f"{base}/api/v1/gpus", bearer)
        config = http_get(f"{base}/dashboard/config.json")
        # The token is needed, and the one from the file is the one that works.
        assert refused[0] == 401 and gpus[0] == 200 and config[0] == 200
        answers_text = "\n".join(body for _, body in (refused, gpus, config))
        outputs.add("telemetry api (its answers)", answers_text, "secrets-node")
    finally:
        end_process(process, signal.SIGINT, timeout_s=30)
        log.seek(0)
        text = log.read().decode(errors="replace")
        outputs.add("telemetry api (its output)", text, "Telemetry API listening on")
        log.close()


def run_flower(env: dict[str, str], password: str, outputs: Outputs, tmp_path: Path) -> None:
    """Flower with its login from FLOWER_BASIC_AUTH_FILE, asked with and without it."""
    port = free_port()
    log_path = tmp_path / "flower.log"
    with log_path.open("wb") as log:
        process = spawn_celery(
            "telemetry", ["flower", "--address=127.0.0.1", f"--port={port}"], env, log
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(
                lambda: answers(f"{base}/healthcheck") or process.poll() is not None,
                60,
                "Flower",
            )
            if process.poll() is not None:
                raise LaunchError(f"Flower exited {process.returncode}:\n{log_path.read_text()}")
            login = base64.b64encode(f"ops:{password}".encode()).decode()
            anonymous = http_get(f"{base}/api/workers")
            page = http_get(f"{base}/workers")
            allowed = http_get(f"{base}/api/workers", {"Authorization": f"Basic {login}"})
            metrics = http_get(f"{base}/metrics")
            # Pages and API need the login from the file; /metrics needs none.
            assert anonymous[0] == 401 and page[0] == 401
            assert allowed[0] == 200 and metrics[0] == 200
            texts = (anonymous, page, allowed, metrics)
            outputs.add("Flower's answers", "\n".join(body for _, body in texts), "flower_")
        finally:
            end_process(process, signal.SIGTERM, timeout_s=30)
    outputs.add("Flower's log", log_path.read_text(errors="replace"), "Broker:")
