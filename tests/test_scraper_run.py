"""The scraper's loop with a fake fetch and publisher: rounds, health, shards, reloads, stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from telemetry.scraper.fetch import FailureReason, ScrapeFailed
from telemetry.scraper.metrics import ScraperMetrics
from telemetry.scraper.run import ScrapeOptions, Scraper
from telemetry.scraper.targets import Shard, command_line_targets
from tests.fakes import FakePublisher
from tests.scrape_support import GOOD_BODY

FAST = {"interval_s": 0.05, "timeout_s": 0.04, "stats_interval_s": 60.0}


def body_for(node: str, temperature: int) -> bytes:
    return (
        GOOD_BODY.replace(b"bench-node", node.encode())
        .replace(b"000000000001", f"{abs(hash(node)) % 10**12:012d}".encode())
        .replace(b"} 41", f"}} {temperature}".encode())
    )


class FakeFetch:
    """Answers each URL from a function of the URL and how often it was asked."""

    def __init__(self, answer: Callable[[str, int], bytes]) -> None:
        self._answer = answer
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, url: str, timeout_s: float, max_bytes: int, user_agent: str) -> bytes:
        with self._lock:
            count = self.calls[url] = self.calls.get(url, 0) + 1
        return self._answer(url, count)


def changing(url: str, count: int) -> bytes:
    return body_for(url, 40 + count)


def value(metrics: ScraperMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_target_is_scraped_as_often_as_asked_and_every_point_published() -> None:
    # given
    targets = command_line_targets(["a:1", "b:2", "c:3"])
    fetch, publisher = FakeFetch(changing), FakePublisher()
    scraper = Scraper(ScrapeOptions(targets=targets, scrapes=2, **FAST), fetch=fetch)
    # when
    report = scraper.run(publisher)
    # then
    assert fetch.calls == {target.url: 2 for target in targets}
    assert (report.rounds, report.scrapes, report.failed_scrapes) == (2, 6, 0)
    assert report.published == report.confirmed == len(publisher.sent) == 6
    points = [message.body[1]["point"] for message in publisher.sent]
    assert all(point["labels_raw"].count("instance=") == 1 for point in points)


def test_a_down_target_is_counted_by_reason_logged_once_each_way_and_spares_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given: b refuses its 2nd to 4th scrapes, then answers again
    def answer(url: str, count: int) -> bytes:
        if "b:2" in url and 2 <= count <= 4:
            raise ScrapeFailed(FailureReason.REFUSED, "connection refused")
        return changing(url, count)

    targets = command_line_targets(["a:1", "b:2"])
    metrics = ScraperMetrics()
    scraper = Scraper(
        ScrapeOptions(targets=targets, scrapes=6, **FAST), metrics, fetch=FakeFetch(answer)
    )
    # when
    with caplog.at_level(logging.WARNING, "telemetry.scraper.health"):
        report = scraper.run(FakePublisher())
    # then
    assert report.failures == {"refused": 3}
    lines = [record.getMessage() for record in caplog.records]
    assert [line for line in lines if "is down" in line] == [
        "Target http://b:2/metrics is down: connection refused (refused)"
    ]
    assert [line for line in lines if "up again" in line] == [
        "Target http://b:2/metrics is up again after 3 failed scrape(s)"
    ]
    b, a = "http://b:2/metrics", "http://a:1/metrics"
    assert value(metrics, "telemetry_scrape_failures_total", target=b, reason="refused") == 3
    assert value(metrics, "telemetry_scrape_failures_total", target=a, reason="refused") is None
    assert value(metrics, "telemetry_scrape_target_up", target=b) == 1
    assert value(metrics, "telemetry_scrape_points_published_total", target=a) == 6
    assert value(metrics, "telemetry_scrape_points_published_total", target=b) == 3


def test_a_target_whose_payload_stops_changing_is_flagged_frozen_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    targets = command_line_targets(["a:1"])
    metrics = ScraperMetrics()
    fetch = FakeFetch(lambda url, count: body_for(url, 40 + min(count, 2)))
    options = ScrapeOptions(targets=targets, scrapes=6, frozen_after=3, **FAST)
    with caplog.at_level(logging.WARNING, "telemetry.scraper.health"):
        Scraper(options, metrics, fetch=fetch).run(FakePublisher())
    assert value(metrics, "telemetry_scrape_target_frozen", target=targets[0].url) == 1
    assert sum("looks frozen" in record.getMessage() for record in caplog.records) == 1


def test_a_changing_payload_is_never_frozen() -> None:
    targets = command_line_targets(["a:1"])
    metrics = ScraperMetrics()
    options = ScrapeOptions(targets=targets, scrapes=5, frozen_after=2, **FAST)
    Scraper(options, metrics, fetch=FakeFetch(changing)).run(FakePublisher())
    assert value(metrics, "telemetry_scrape_target_frozen", target=targets[0].url) == 0


def test_a_shard_scrapes_only_its_own_targets() -> None:
    targets = command_line_targets([f"node-{n}:9400" for n in range(12)])
    seen: set[str] = set()
    for index in range(3):
        fetch = FakeFetch(changing)
        shard = Shard(index, 3)
        Scraper(ScrapeOptions(targets=targets, scrapes=1, shard=shard, **FAST), fetch=fetch).run(
            FakePublisher()
        )
        assert set(fetch.calls) == {t.url for t in targets if t.in_shard(shard)}
        assert not seen & set(fetch.calls)
        seen |= set(fetch.calls)
    assert seen == {target.url for target in targets}


def test_a_target_added_to_the_file_is_scraped_within_one_interval(tmp_path: Path) -> None:
    # given: a scraper running on a one-target file
    path = tmp_path / "targets.yml"
    path.write_text("- targets: ['a:1']\n")
    stop = threading.Event()
    fetch = FakeFetch(changing)
    options = ScrapeOptions(targets_file=path, interval_s=0.3, timeout_s=0.2, targets_check_s=0.05)
    scraper = Scraper(options, fetch=fetch, stop=stop)
    runner = threading.Thread(target=scraper.run, args=(FakePublisher(),))
    runner.start()
    try:
        deadline = time.monotonic() + 5
        while "http://a:1/metrics" not in fetch.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        # when
        path.write_text("- targets: ['a:1', 'b:2']\n")
        edited = time.monotonic()
        while "http://b:2/metrics" not in fetch.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        # then
        assert "http://b:2/metrics" in fetch.calls
        assert time.monotonic() - edited < 0.3 + 0.05 + 0.2
    finally:
        stop.set()
        runner.join(5)
    assert scraper.report.stopped


def test_stop_lets_the_scrapes_in_flight_finish_and_publishes_their_points() -> None:
    # given: a slow target, and a stop while its scrape is in flight
    stop = threading.Event()
    started = threading.Event()

    def slow(url: str, count: int) -> bytes:
        started.set()
        time.sleep(0.3)
        return changing(url, count)

    publisher = FakePublisher()
    options = ScrapeOptions(targets=command_line_targets(["a:1"]), interval_s=1, timeout_s=0.5)
    scraper = Scraper(options, fetch=FakeFetch(slow), stop=stop)
    runner = threading.Thread(target=scraper.run, args=(publisher,))
    runner.start()
    assert started.wait(10)
    # when
    stop.set()
    runner.join(5)
    # then
    assert not runner.is_alive()
    assert scraper.report.stopped and scraper.report.scrapes == 1
    assert publisher.confirmed == 1


def test_a_scrape_still_running_when_due_again_skips_that_turn_and_counts_an_overrun() -> None:
    def slow(url: str, count: int) -> bytes:
        time.sleep(0.25)
        return changing(url, count)

    metrics = ScraperMetrics()
    options = ScrapeOptions(
        targets=command_line_targets(["a:1"]), scrapes=2, interval_s=0.1, timeout_s=0.09
    )
    report = Scraper(options, metrics, fetch=FakeFetch(slow)).run(FakePublisher())
    assert report.overruns >= 1
    assert value(metrics, "telemetry_scrape_overruns_total") == report.overruns


def test_a_bug_while_parsing_fails_that_scrape_and_the_target_is_scraped_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given: the mapping raises once
    from telemetry.scraper import run

    real = run.points_from_samples
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(run, "points_from_samples", flaky)
    options = ScrapeOptions(targets=command_line_targets(["a:1"]), scrapes=3, **FAST)
    # when
    report = Scraper(options, fetch=FakeFetch(changing)).run(FakePublisher())
    # then
    assert report.failures == {"internal_error": 1}
    assert report.scrapes == 3 and report.published == 2


def test_backpressure_holds_publishing_while_the_queue_is_over_its_bound() -> None:
    depths = iter([500, 500, 10] + [0] * 100)
    options = ScrapeOptions(
        targets=command_line_targets(["a:1"]), scrapes=1, max_backlog=100, **FAST
    )
    report = Scraper(options, fetch=FakeFetch(changing)).run(
        FakePublisher(), backlog=lambda: next(depths)
    )
    assert report.backpressure_pauses == 2


def test_with_no_targets_a_counted_run_ends_at_once() -> None:
    lonely = ScrapeOptions(targets=[], scrapes=3, **FAST)
    report = Scraper(lonely, fetch=FakeFetch(changing)).run(FakePublisher())
    assert (report.targets, report.scrapes) == (0, 0)
