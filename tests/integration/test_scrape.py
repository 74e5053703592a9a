"""`telemetry scrape` end to end: local exporters, the real RabbitMQ, a worker and SecantusDB."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database

from telemetry.broker.backlog import open_publisher
from telemetry.demo.exporter import StandInExporter, serve_exporters
from telemetry.scraper.metrics import ScraperMetrics
from telemetry.scraper.run import ScrapeOptions, Scraper
from tests.integration.conftest import cli_env, settings_for
from tests.scrape_support import EXPORTER_FIXTURES as FIXTURES
from tests.scrape_support import misbehaving_server, static_exporters
from tools.launchers import WorkerProcess, wait_for

TELEMETRY = [sys.executable, "-m", "telemetry.cli"]
MIG_GPU = "GPU-00000000-0000-0000-0000-00000000e000"
SHARED_GPU = "GPU-00000000-0000-0000-0000-00000000f000"


def scrape_command(
    broker_url: str, queue_name: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TELEMETRY, "scrape", *args],
        env=cli_env(
            CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name, SCRAPER_PORT="0", **env
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_three_exporters_are_stored_once_per_scrape_mig_apart_and_time_sliced_once(
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given: exporters serving a MIG GPU (8 points a scrape: 2 whole-GPU, 6 of three
    # instances), a GPU time-sliced between 3 pods (2 points; 4 copies skipped) and a node
    # with pods (8 points)
    bodies = [(FIXTURES / name).read_bytes() for name in ("mig.prom", "time-sliced.prom")]
    bodies.append((FIXTURES / "v3-per-family-pods.prom").read_bytes())
    start_worker()
    with static_exporters(bodies) as urls:
        # when: two rounds
        targets = [arg for url in urls for arg in ("--target", url)]
        result = scrape_command(
            broker_url,
            queue_name,
            *targets,
            "--scrapes",
            "2",
            "--interval",
            "1",
            "--timeout",
            "0.9",
        )
    # then
    assert result.returncode == 0, result.stderr
    assert "points published: 36   confirmed by the broker: 36" in result.stdout
    assert "samples skipped: duplicate_series 8" in result.stdout
    telemetry = database["telemetry"]
    wait_for(
        lambda: telemetry.count_documents({}) == 36,
        60,
        "36 stored points",
        lambda: telemetry.count_documents({}),
    )
    scrape_times = telemetry.distinct("timestamp", {"gpu_uuid": MIG_GPU})
    assert len(scrape_times) == 2
    for stamp in scrape_times:
        mig = list(telemetry.find({"gpu_uuid": MIG_GPU, "timestamp": stamp}))
        assert sorted(doc.get("gpu_instance", "-") for doc in mig) == [
            "-",
            "-",
            "1",
            "1",
            "13",
            "13",
            "5",
            "5",
        ]
    # each exporter is scraped at a time of its own, so the shared GPU's scrapes are its own
    shared_times = telemetry.distinct("timestamp", {"gpu_uuid": SHARED_GPU})
    assert len(shared_times) == 2
    for stamp in shared_times:
        shared = list(telemetry.find({"gpu_uuid": SHARED_GPU, "timestamp": stamp}))
        assert sorted(doc["metric_name"] for doc in shared) == [
            "DCGM_FI_DEV_FB_USED",
            "DCGM_FI_DEV_GPU_UTIL",
        ]
    gpu = database["gpus"].find_one({"_id": MIG_GPU})
    assert gpu is not None and gpu["hostname"] == "mig-node"
    assert gpu["driver_version"] == "535.129.03"
    assert {key: value["profile"] for key, value in gpu["mig_instances"].items()} == {
        "1": "3g.20gb",
        "5": "2g.10gb",
        "13": "1g.5gb",
    }
    assert telemetry.find_one({"gpu_uuid": MIG_GPU})["labels"]["instance"].startswith("127.0.0.1:")


def up(metrics: ScraperMetrics, url: str) -> float | None:
    return metrics.registry.get_sample_value("telemetry_scrape_target_up", {"target": url})


def published(metrics: ScraperMetrics, url: str) -> float:
    value = metrics.registry.get_sample_value(
        "telemetry_scrape_points_published_total", {"target": url}
    )
    return value or 0.0


def test_a_killed_exporter_is_down_then_up_with_one_line_each_way_and_a_new_target_is_picked_up(
    broker_url: str, queue_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given: three stand-in exporters, two of them in the targets file, scraped every 0.5 s
    settings = settings_for(queue_name, CELERY_BROKER_URL=broker_url)
    exporters = [StandInExporter(f"node-{n}") for n in range(3)]
    with serve_exporters(exporters) as fleet:
        first, second, third = fleet.urls
        targets_file = tmp_path / "targets.yml"
        hosts = [url.removeprefix("http://").removesuffix("/metrics") for url in fleet.urls]
        targets_file.write_text(f"- targets: ['{hosts[0]}', '{hosts[1]}']\n")
        metrics = ScraperMetrics()
        stop = threading.Event()
        options = ScrapeOptions(
            targets_file=targets_file, interval_s=0.5, timeout_s=0.4, targets_check_s=0.1
        )
        scraper = Scraper(options, metrics, stop=stop)
        publisher = open_publisher(settings)
        runner = threading.Thread(target=scraper.run, args=(publisher,))
        with caplog.at_level(logging.WARNING, "telemetry.scraper.health"):
            runner.start()
            try:
                wait_for(lambda: up(metrics, first) == 1 and up(metrics, second) == 1, 10, "up")
                # when: the second exporter dies
                fleet.stop_exporter(1)
                wait_for(lambda: up(metrics, second) == 0, 10, "the second target down")
                before = published(metrics, first)
                time.sleep(1.2)
                # then: the first goes on; the second stays down
                assert published(metrics, first) > before
                assert up(metrics, second) == 0
                # when: it comes back, and the third is added to the file
                fleet.start_exporter(1)
                wait_for(lambda: up(metrics, second) == 1, 10, "the second target up again")
                targets_file.write_text(f"- targets: ['{hosts[0]}', '{hosts[1]}', '{hosts[2]}']\n")
                edited = time.monotonic()
                wait_for(lambda: up(metrics, third) == 1, 10, "the new target scraped")
                assert time.monotonic() - edited < 0.5 + 0.1 + 0.4 + 0.5
            finally:
                stop.set()
                runner.join(30)
                publisher.close()
    lines = [record.getMessage() for record in caplog.records]
    assert sum(f"Target {second} is down" in line for line in lines) == 1
    assert sum(f"Target {second} is up again" in line for line in lines) == 1
    assert not any(first in line for line in lines)
    assert scraper.report.confirmed == scraper.report.published > 0


def test_every_bad_answer_is_a_failed_scrape_by_reason_and_the_run_still_exits_0(
    broker_url: str, queue_name: str
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with misbehaving_server(huge_bytes=65_536) as base:
        paths = ["/metrics", "/404", "/500", "/html", "/empty", "/huge", "/slow"]
        targets = [f"{base}{path}" for path in paths]
        targets += [f"127.0.0.1:{closed_port}", "no-such-host.invalid:9400"]
        result = scrape_command(
            broker_url,
            queue_name,
            *[arg for target in targets for arg in ("--target", target)],
            "--scrapes",
            "1",
            "--interval",
            "2",
            "--timeout",
            "1",
            "--max-body-bytes",
            "65536",
        )
    assert result.returncode == 0, result.stderr
    assert "9 scrapes" in result.stdout and "8 failed" in result.stdout
    assert (
        "failed scrapes: empty 1, http_status 2, not_metrics 1, refused 1, timeout 1, "
        "too_large 1, unknown_host 1" in result.stdout
    )
    assert "confirmed by the broker: 1" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--targets-file", "{tmp}/absent.yml"], "cannot read the targets file"),
        (["--targets-file", "{tmp}/bad.yml"], "not valid JSON or YAML"),
        ([], "no targets"),
        (["--target", "a:1", "--interval", "5", "--timeout", "5"], "must be less than"),
        (["--target", "a:1", "--shard", "3/3"], "--shard"),
    ],
)
def test_bad_flags_or_targets_file_are_one_line_and_exit_2(
    broker_url: str, queue_name: str, tmp_path: Path, args: list[str], words: str
) -> None:
    (tmp_path / "bad.yml").write_text("- targets: [[[\n")
    result = scrape_command(
        broker_url, queue_name, *[arg.format(tmp=tmp_path) for arg in args], LOG_FORMAT="text"
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert words in result.stderr


def test_a_broker_that_cannot_be_used_is_one_line_and_exit_1(queue_name: str) -> None:
    result = scrape_command(
        "amqp://guest:secret@127.0.0.1:1//", queue_name, "--target", "a:1", LOG_FORMAT="text"
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "cannot use the broker at amqp://guest:***@127.0.0.1:1//" in line
    assert "secret" not in result.stderr


def test_stats_shows_a_running_scraper_and_sigterm_ends_it_after_its_round(
    start_worker: Callable[..., WorkerProcess],
    broker_url: str,
    queue_name: str,
    tmp_path: Path,
) -> None:
    # given: a worker, and a scraper running with no round limit
    start_worker()
    exporters = [StandInExporter("stats-node")]
    with serve_exporters(exporters) as fleet:
        log = (tmp_path / "scraper.log").open("w")
        scraper = subprocess.Popen(
            [
                *TELEMETRY,
                "scrape",
                "--target",
                fleet.urls[0],
                "--interval",
                "1",
                "--timeout",
                "0.5",
                "--instance-id",
                f"s-{queue_name}",
            ],
            env=cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name, SCRAPER_PORT="0"),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            wait_for(lambda: fleet.scrapes(0) >= 2, 30, "two scrapes")
            # when
            stats = subprocess.run(
                [*TELEMETRY, "stats", "--json"],
                env=cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name),
                capture_output=True,
                text=True,
                timeout=60,
            )
            table = subprocess.run(
                [*TELEMETRY, "stats"],
                env=cli_env(CELERY_BROKER_URL=broker_url, TELEMETRY_QUEUE=queue_name),
                capture_output=True,
                text=True,
                timeout=60,
            )
            scraper.send_signal(signal.SIGTERM)
            out, _ = scraper.communicate(timeout=30)
        finally:
            if scraper.poll() is None:
                scraper.kill()
                scraper.wait()
            log.close()
    # then
    assert stats.returncode == 0, stats.stderr
    answer = json.loads(stats.stdout)
    node = f"scraper@s-{queue_name}"
    status = answer["scrapers"][node]
    assert (status["targets"], status["up"], status["down"], status["frozen"]) == (1, 1, 0, 0)
    assert status["published"] > 0
    assert node not in answer["workers"]
    assert f"{node}: 1 targets, 1 up, 0 down, 0 frozen;" in table.stdout
    assert scraper.returncode == 0
    assert "stopped early" in out


def test_demo_scrape_runs_the_whole_pipeline_and_shows_it_through_the_read_api(
    tmp_path: Path, broker_url: str
) -> None:
    # broker_url is requested only so that the suite's server checks run first.
    result = subprocess.run(
        [
            *TELEMETRY,
            "demo",
            "--scrape",
            "--scrapes",
            "2",
            "--data-dir",
            str(tmp_path / "d"),
            "--no-progress",
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # 3 nodes x 2 rounds x (92 samples - 14 time-sliced copies)
    assert "Scraped 3 target(s): 6 scrapes" in result.stdout
    assert "OK: 468 points sent, 468 confirmed by the broker, 468 stored" in result.stdout
    assert "/api/v1/gpus (12 GPUs)" in result.stdout
    assert result.stdout.count("MIG: 3 instances") == 3
    assert "instance 13" in result.stdout
