"""One scrape's HTTP GET: every way a target can fail ends as one reason, never an exception."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from telemetry.scraper.fetch import FailureReason, ScrapeFailed, fetch_metrics
from tests.scrape_support import GOOD_BODY, misbehaving_server

MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with misbehaving_server(huge_bytes=MAX_BYTES) as url:
        yield url


def failure_of(url: str, timeout_s: float = 2.0) -> ScrapeFailed:
    with pytest.raises(ScrapeFailed) as caught:
        fetch_metrics(url, timeout_s, MAX_BYTES, "test")
    return caught.value


def test_a_metrics_page_is_returned_as_it_was_sent(base_url: str) -> None:
    assert fetch_metrics(f"{base_url}/metrics", 2.0, MAX_BYTES, "test") == GOOD_BODY


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/404", FailureReason.HTTP_STATUS),
        ("/500", FailureReason.HTTP_STATUS),
        ("/html", FailureReason.NOT_METRICS),
        ("/html-as-text", FailureReason.NOT_METRICS),
        ("/empty", FailureReason.EMPTY),
        ("/blank", FailureReason.EMPTY),
        ("/huge", FailureReason.TOO_LARGE),
        ("/huge-chunked", FailureReason.TOO_LARGE),
    ],
)
def test_each_bad_answer_fails_with_its_reason(base_url: str, path: str, reason: str) -> None:
    assert failure_of(base_url + path).reason == reason


def test_http_status_failure_names_the_status(base_url: str) -> None:
    assert "404" in str(failure_of(f"{base_url}/404"))


def test_a_body_sent_slowly_is_cut_off_at_the_deadline_not_per_read(base_url: str) -> None:
    # given: a server that sends two bytes every 0.2 s for 20 s; each read alone is quick
    started = time.monotonic()
    # when
    failure = failure_of(f"{base_url}/slow", timeout_s=1.0)
    # then
    assert failure.reason == FailureReason.TIMEOUT
    assert time.monotonic() - started < 2.0


def test_a_server_that_does_not_answer_in_time_is_a_timeout(base_url: str) -> None:
    assert failure_of(f"{base_url}/stall", timeout_s=0.5).reason == FailureReason.TIMEOUT


def test_a_refused_connection_is_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert failure_of(f"http://127.0.0.1:{port}/metrics").reason == FailureReason.REFUSED


def test_an_unknown_host_is_unknown_host() -> None:
    failure = failure_of("http://no-such-host.invalid:9400/metrics")
    assert failure.reason == FailureReason.UNKNOWN_HOST
