"""Metrics and probes of real workers: exact counts from /metrics, /readyz with the DB down."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo.database import Database

from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.demo.embedded import SecantusServer, free_port
from tests.integration.conftest import confirming, make_points, publish_points
from tests.integration.latency_proxy import LatencyProxy, shut_down
from tools.launchers import WorkerProcess, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def endpoint_settings(port: int) -> dict[str, str]:
    """Worker settings: endpoints on ``port``, and a node name no concurrent test run shares."""
    return {"metrics_port": str(port), "instance_id": f"ops-{uuid.uuid4().hex[:8]}"}


def get(url: str) -> tuple[int, str]:
    """Status and body of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> Samples:
    """Every sample the worker's /metrics serves, by name and labels."""
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {
        (found.name, frozenset(found.labels.items())): float(found.value)
        for family in text_string_to_metric_families(body)
        for found in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample, which must be there."""
    return samples[(name, frozenset(labels.items()))]


def processed(port: int) -> float:
    return value(scrape(port), "telemetry_messages_processed_total")


@pytest.mark.parametrize("batch_size", ["1", "50"])
def test_metrics_count_every_outcome_exactly_and_the_url_is_logged(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    broker_url: str,
    queue_name: str,
    batch_size: str,
) -> None:
    # given
    port = free_port()
    worker = start_worker(batch_size=batch_size, **endpoint_settings(port))
    valid = make_points(20)
    invalid = [dict(valid[0], value="NaN"), dict(valid[1], gpu_uuid="")]
    # when: 20 valid points, one of them twice, two invalid ones and an undecodable body
    publish_points(publisher, valid + valid[:1] + invalid)
    with confirming(broker_url) as connection:
        connection.Producer().publish(
            b"{not json",
            exchange=queue_name,
            routing_key=queue_name,
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": "telemetry.ingest", "id": "garbage-1"},
        )
    wait_for(lambda: processed(port) == 24, 60, "24 processed messages", lambda: processed(port))
    # then
    samples = scrape(port)
    assert f":{port}/metrics (/healthz, /readyz)" in worker.log()
    assert value(samples, "telemetry_messages_delivered_total") == 24
    assert value(samples, "telemetry_points_stored_total") == 20
    assert value(samples, "telemetry_duplicates_total") == 1
    assert value(samples, "telemetry_messages_errors_total", reason="invalid_point") == 2
    assert value(samples, "telemetry_messages_errors_total", reason="undecodable") == 1
    assert value(samples, "telemetry_messages_errors_total", reason="invalid_metadata") == 0
    assert value(samples, "telemetry_retries_total") == 0
    assert value(samples, "telemetry_dead_lettered_total") == 0
    # every valid message (the duplicate too) is in one commit; one latency per stored point
    assert value(samples, "telemetry_db_write_batch_size_sum") == 21
    assert value(samples, "telemetry_ingest_latency_seconds_count") == 20
    commits = value(samples, "telemetry_db_write_seconds_count")
    batched = value(samples, "telemetry_messages_batched_total")
    if batch_size == "1":
        assert commits == 21
        assert batched == 0
    else:
        assert 1 <= commits < 21, "points were written in batches"
        # Every task message (the invalid ones too) was settled by a batch commit:
        # none fell back to the slower per-task path.
        assert batched == 23
    wait_for(
        lambda: value(scrape(port), "telemetry_messages_in_flight") == 0, 10, "no task running"
    )
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert get(f"http://127.0.0.1:{port}/readyz") == (200, '{"status": "ready"}\n')


def test_readyz_is_503_with_the_reason_while_the_database_is_down_and_healthz_stays_200(
    start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # given: a worker on a database server of its own
    server = SecantusServer(":memory:", log_path=tmp_path / "db.log")
    restarted = SecantusServer(":memory:", port=server.port, log_path=tmp_path / "db2.log")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server.start()
    try:
        start_worker(mongodb_uri=server.uri, **endpoint_settings(port))
        assert get(base + "/readyz") == (200, '{"status": "ready"}\n')
        # when
        server.stop()
        # then
        status, body = get(base + "/readyz")
        assert status == 503
        reasons = json.loads(body)["reasons"]
        assert len(reasons) == 1
        assert reasons[0].startswith("database unreachable: ")
        assert get(base + "/healthz") == (200, '{"status": "ok"}\n')
        # and when the database is back, so is readiness
        restarted.start()
        wait_for(
            lambda: get(base + "/readyz")[0] == 200,
            20,
            "/readyz to answer 200 again",
            lambda: get(base + "/readyz"),
        )
    finally:
        server.stop()
        restarted.stop()


class CuttableProxy(LatencyProxy):
    """A proxy without delay whose open connections can be cut, as when a broker goes away."""

    def __init__(self, upstream_port: int) -> None:
        self.sockets: list[socket.socket] = []
        super().__init__(upstream_port, 0.0)

    def _pump(self, source: socket.socket, target: socket.socket, delay_s: float) -> None:
        self.sockets += [source, target]
        if self._closed.is_set():  # accepted just before a cut that missed it: cut it too
            shut_down(source, target)
        LatencyProxy._pump(source, target, delay_s)

    def cut(self) -> None:
        """Stop accepting and end every open connection."""
        self.close()
        shut_down(*self.sockets)


def test_readyz_is_503_with_the_reason_while_the_broker_connection_is_lost(
    start_worker: Callable[..., WorkerProcess], broker_url: str
) -> None:
    # given: a worker that reaches the broker through a proxy
    proxy = CuttableProxy(urlsplit(broker_url).port or 5672)
    port = free_port()
    worker = start_worker(
        celery_broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//", **endpoint_settings(port)
    )
    base = f"http://127.0.0.1:{port}"
    assert get(base + "/readyz") == (200, '{"status": "ready"}\n')
    # when
    proxy.cut()
    # then
    lost = {
        "status": "not ready",
        "reasons": ["broker connection lost: the worker is reconnecting"],
    }
    wait_for(
        lambda: get(base + "/readyz") == (503, json.dumps(lost) + "\n"),
        20,
        "/readyz to say the broker is gone",
        lambda: get(base + "/readyz"),
    )
    assert get(base + "/healthz")[0] == 200
    worker.stop(timeout_s=20)


def test_prefork_children_are_summed_in_one_scrape(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
) -> None:
    # given: two pool processes ("-P prefork" would be replaced by celeryconfig's threads),
    # each message a task of its own, so both of them take work
    port = free_port()
    worker = start_worker(
        concurrency=2, celery_worker_pool="processes", batch_size="1", **endpoint_settings(port)
    )
    assert "(prefork)" in worker.log() or '"pool": "prefork"' in worker.log()
    # when
    publish_points(publisher, make_points(60))
    publisher.send(build_task_message({"gpu_uuid": ""}, None))
    publisher.flush()
    # then
    wait_for(lambda: processed(port) == 61, 60, "61 processed messages", lambda: processed(port))
    samples = scrape(port)
    found = re.search(r"keep their metrics in (\S+),", worker.log())
    assert found is not None
    # One file of counters for the main process and one for each pool process that worked.
    assert len(list(Path(found.group(1)).glob("counter_*.db"))) == 3
    assert value(samples, "telemetry_points_stored_total") == 60
    assert value(samples, "telemetry_messages_errors_total", reason="invalid_point") == 1
    assert value(samples, "telemetry_db_write_batch_size_sum") == 60
    assert database["telemetry"].count_documents({}) == 60
    # The main process only hands out work; its own statistics stay at zero.
    assert worker.stop() == 0
    assert worker.last_stats()["telemetry_stored"] == 0
    assert not Path(found.group(1)).exists(), "the files are deleted when the worker stops"
