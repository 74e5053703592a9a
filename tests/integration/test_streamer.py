"""The streamer and the demo against real processes and the real RabbitMQ."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kombu import Connection, Queue
from pymongo.database import Database

from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.cli import SAMPLE_CSV
from telemetry.config import load_settings
from telemetry.dcgm import Row, read_dcgm_csv
from telemetry.streamer.run import StreamOptions, run_stream
from tests.integration.conftest import cli_env, queue_depth
from tools.launchers import WorkerProcess, wait_for

TELEMETRY = [sys.executable, "-m", "telemetry.cli"]


def test_sample_file_is_confirmed_by_the_broker_row_for_row(
    broker_url: str, queue_name: str
) -> None:
    # given
    settings = load_settings(env={}, overrides={"broker_url": broker_url, "queue_name": queue_name})
    # when
    report = run_stream(settings, StreamOptions(paths=[SAMPLE_CSV]), show_progress=False)
    # then
    assert (report.rows_sent, report.confirmed, report.errors) == (2470, 2470, 0)
    assert queue_depth(broker_url, queue_name) == 2470


def test_a_new_message_reads_as_kombus_producer_would_have_sent_it(
    broker_url: str, queue_name: str, publisher: ConfirmingPublisher
) -> None:
    # given: one point, sent on py-amqp's own publish (the streamer's way)...
    row = next(row for row in read_dcgm_csv(SAMPLE_CSV) if isinstance(row, Row))
    message = build_task_message(row.point.wire(), row.metadata.known())
    publisher.send(message)
    # ...and again through kombu's Producer, as compressed or replayed messages go
    publisher._amqp_direct = False
    publisher.send(message)
    publisher.flush()
    # when
    with Connection(broker_url) as connection:
        work = Queue(queue_name, no_declare=True, channel=connection.channel())
        direct, through_kombu = work.get(no_ack=True), work.get(no_ack=True)
    # then: the same body, headers and properties, but for kombu's explicit priority 0
    assert direct is not None and through_kombu is not None
    assert direct.body == through_kombu.body
    assert direct.decode() == through_kombu.decode() == json.loads(json.dumps(message.body))
    # (A quorum queue may add its delivery count to what it hands out.)
    headers = [
        {name: value for name, value in got.headers.items() if name != "x-delivery-count"}
        for got in (direct, through_kombu)
    ]
    assert headers[0] == headers[1] == message.headers
    kombu_properties = dict(through_kombu.properties)
    assert kombu_properties.pop("priority") == 0
    assert direct.properties == kombu_properties
    assert direct.properties["delivery_mode"] == 2
    assert direct.properties["correlation_id"] == message.task_id
    assert (direct.content_type, direct.content_encoding) == ("application/json", "utf-8")


def test_stream_command_stores_good_rows_and_reports_bad_ones_by_line(
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
    broker_url: str,
    queue_name: str,
    mongo_server: Any,
    tmp_path: Path,
) -> None:
    # given: 40 rows of the sample, two of them broken
    lines = SAMPLE_CSV.read_text().splitlines()[:41]
    lines[5] = lines[5].replace('"GPU-', '"" ,"GPU-', 1)
    lines[9] = lines[9].replace('","DCGM_FI_DEV_GPU_UTIL","', '","","', 1)
    path = tmp_path / "injected.csv"
    path.write_text("\n".join(lines) + "\n")
    start_worker()
    # when
    result = subprocess.run(
        [*TELEMETRY, "stream", str(path), "--timestamps", "csv"],
        env=cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # then
    assert result.returncode == 0, result.stderr
    assert f"bad row  {path}:6: expected 12 fields, got 13" in result.stdout
    assert f"bad row  {path}:10: metric_name:" in result.stdout
    assert "confirmed by the broker: 38" in result.stdout
    assert '"component": "streamer"' in result.stderr
    wait_for(
        lambda: database["telemetry"].count_documents({}) == 38,
        60,
        "38 stored points",
        lambda: database["telemetry"].count_documents({}),
    )


def test_stream_command_with_broker_down_fails_at_once_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [*TELEMETRY, "stream", str(SAMPLE_CSV)],
        env=cli_env(CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:1//"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    # stderr is not a terminal, so the one line is a JSON log line.
    (line,) = result.stderr.splitlines()
    logged = json.loads(line)
    assert logged["level"] == "ERROR"
    assert logged["message"].startswith("cannot use the broker at amqp://guest:***@127.0.0.1:1//")
    assert "Traceback" not in result.stderr


def test_demo_runs_the_whole_pipeline_with_no_servers(tmp_path: Path, broker_url: str) -> None:
    # broker_url is requested only so that the suite's server checks run first.
    # The whole sample, as `make demo` streams it: more points than the worker's
    # prefetch, so a message left unacked would stall the demo here.
    result = subprocess.run(
        [
            *TELEMETRY,
            "demo",
            "--data-dir",
            str(tmp_path / "data"),
            "--no-progress",
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Broker:   memory://localhost/ (in-process)" in result.stdout
    assert f"data in {tmp_path / 'data'}" in result.stdout
    assert (
        "OK: 2,470 points sent, 2,470 confirmed by the broker, 2,470 stored "
        "(2,470 new documents in the database)" in result.stdout
    )
    rows = [row for row in read_dcgm_csv(SAMPLE_CSV) if isinstance(row, Row)]
    hosts = {row.metadata.hostname for row in rows}
    gpus = {row.point.gpu_uuid for row in rows}
    assert f"GPUs per host ({len(hosts)} hosts, {len(gpus)} GPUs)" in result.stdout
