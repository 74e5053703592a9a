"""The metrics and probe endpoints, served for real on a local port, with fake checks."""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from telemetry.config import Settings
from telemetry.demo.embedded import free_port
from telemetry.errors import BrokerUnavailable, StorageUnavailable
from telemetry.observe import health
from telemetry.observe.metrics import CollectorMetrics


def fresh_registry() -> CollectorRegistry:
    """The registry of a worker's metrics, at zero."""
    return CollectorMetrics.fresh().registry


def get(url: str) -> tuple[int, str, str]:
    """Status, content type and body of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


class Switch:
    """A readiness check that fails with ``reason`` while one is set."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self) -> None:
        if self.reason is not None:
            raise StorageUnavailable(self.reason)


@pytest.fixture
def database_switch() -> Switch:
    """A fake database check, up until told otherwise."""
    return Switch()


@pytest.fixture
def server(database_switch: Switch) -> Iterator[health.HealthServer]:
    """A server on a port of the system's choosing, with a fake scrape."""
    served = health.HealthServer(
        0,
        [database_switch],
        host="127.0.0.1",
        scrape=lambda accept: (b"fake_total 1.0\n", "text/plain; version=0.0.4"),
    )
    served.start()
    yield served
    served.stop()


def test_healthz_and_readyz_answer_200_when_everything_is_up(server: health.HealthServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    assert get(base + "/healthz") == (200, "application/json", '{"status": "ok"}\n')
    assert get(base + "/readyz") == (200, "application/json", '{"status": "ready"}\n')
    assert get(base + "/metrics") == (200, "text/plain; version=0.0.4", "fake_total 1.0\n")
    assert get(base + "/nope")[0] == 404


def test_readyz_answers_503_with_the_reason_while_liveness_stays_200(
    server: health.HealthServer, database_switch: Switch
) -> None:
    # given
    base = f"http://127.0.0.1:{server.port}"
    # when
    database_switch.reason = "database unreachable: connection refused"
    # then
    status, _, body = get(base + "/readyz")
    assert status == 503
    assert json.loads(body) == {
        "status": "not ready",
        "reasons": ["database unreachable: connection refused"],
    }
    assert get(base + "/healthz")[0] == 200
    # and when it comes back
    database_switch.reason = None
    assert get(base + "/readyz")[0] == 200


def test_the_url_names_this_host_and_the_port_listened_on(server: health.HealthServer) -> None:
    assert server.url("/metrics") == f"http://{socket.gethostname()}:{server.port}/metrics"
    assert server.port > 0


def test_broker_check_follows_the_consumer_connection() -> None:
    with pytest.raises(BrokerUnavailable, match="still starting"):
        health.check_consumer_connection(None)
    with pytest.raises(BrokerUnavailable, match="connection lost"):
        health.check_consumer_connection(SimpleNamespace(connection=None))
    with pytest.raises(BrokerUnavailable, match="connection lost"):
        health.check_consumer_connection(
            SimpleNamespace(connection=SimpleNamespace(connected=False))
        )
    health.check_consumer_connection(SimpleNamespace(connection=SimpleNamespace(connected=True)))


def test_database_check_fails_fast_with_a_short_reason_when_nothing_listens() -> None:
    # given
    check = health.DatabaseCheck(f"mongodb://127.0.0.1:{free_port()}/", timeout_s=0.3)
    started = time.monotonic()
    # when
    with pytest.raises(StorageUnavailable) as raised:
        check()
    check.close()
    # then
    assert time.monotonic() - started < 5
    assert str(raised.value).startswith("database unreachable: ")
    assert "Topology Description" not in str(raised.value)


def test_worker_endpoints_are_off_with_port_zero(settings: Settings) -> None:
    off = settings.model_copy(update={"metrics_port": 0})
    assert (
        health.start_worker_endpoints(
            off, forks=False, broker_check=lambda: None, registry=fresh_registry
        )
        is None
    )


def test_a_taken_port_is_one_error_line_and_no_endpoints(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # given
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        busy = settings.model_copy(update={"metrics_port": taken.getsockname()[1]})
        # when
        with caplog.at_level(logging.INFO, logger="telemetry.observe.health"):
            server = health.start_worker_endpoints(
                busy, forks=False, broker_check=lambda: None, registry=fresh_registry
            )
    # then
    assert server is None
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "METRICS_PORT of its own" in errors[0].getMessage()


def test_worker_endpoints_log_their_url_and_serve_the_collector_metrics(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # given
    port = free_port()
    configured = settings.model_copy(
        update={"metrics_port": port, "mongodb_uri": f"mongodb://127.0.0.1:{free_port()}/"}
    )

    def broker_down() -> None:
        raise BrokerUnavailable("broker connection lost: the worker is reconnecting")

    # when
    with caplog.at_level(logging.INFO, logger="telemetry.observe.health"):
        server = health.start_worker_endpoints(
            configured, forks=False, broker_check=broker_down, registry=fresh_registry
        )
    try:
        status, content_type, body = get(f"http://127.0.0.1:{port}/metrics")
        ready: tuple[int, Any, str] = get(f"http://127.0.0.1:{port}/readyz")
    finally:
        health.stop_worker_endpoints(server)
    # then
    assert server is not None
    assert f"http://{socket.gethostname()}:{port}/metrics (/healthz, /readyz)" in caplog.text
    assert status == 200 and content_type.startswith("text/plain")
    assert "telemetry_points_stored_total" in body
    reasons = json.loads(ready[2])["reasons"]
    assert ready[0] == 503
    assert reasons[0] == "broker connection lost: the worker is reconnecting"
    assert reasons[1].startswith("database unreachable: ")
