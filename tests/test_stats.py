"""Counters and the periodic statistics line."""

from __future__ import annotations

import json
import threading

import pytest

from telemetry.observe.stats import COUNTERS, Count, Stats, StatsReporter, stats_line


def test_counters_add_up_across_threads(stats: Stats) -> None:
    def work() -> None:
        for _ in range(1000):
            stats.incr(Count.MESSAGES_PROCESSED, Count.TELEMETRY_STORED)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stats.snapshot()["messages_processed"] == 8000
    assert stats.snapshot()["telemetry_stored"] == 8000


def test_unknown_counter_is_an_error(stats: Stats) -> None:
    with pytest.raises(KeyError):
        stats.incr("messages_lost")  # type: ignore[arg-type]


def test_several_counters_are_added_at_once(stats: Stats) -> None:
    stats.add({Count.DUPLICATES: 2, Count.GPUS_STORED: 3})
    assert stats.snapshot()["duplicates"] == 2
    assert stats.snapshot()["gpus_stored"] == 3


def test_statistics_line_is_json_with_component_instance_and_every_counter(stats: Stats) -> None:
    stats.incr(Count.RETRIES, by=3)
    line = json.loads(stats_line(stats, "collector-1"))
    assert line["message"] == "Collector statistics"
    assert line["component"] == "collector"
    assert line["instance_id"] == "collector-1"
    assert set(COUNTERS) <= set(line)
    assert line["retries"] == 3


def test_reporter_reports_periodically_and_once_more_on_stop(stats: Stats) -> None:
    # given
    lines: list[str] = []
    reported = threading.Event()

    def emit(line: str) -> None:
        lines.append(line)
        if len(lines) >= 2:
            reported.set()

    reporter = StatsReporter(stats, "c1", interval_s=0.05, emit=emit)
    # when
    reporter.start()
    assert reported.wait(5)
    stats.incr(Count.TELEMETRY_STORED)
    reporter.stop()
    # then
    assert json.loads(lines[-1])["telemetry_stored"] == 1
    count = len(lines)
    threading.Event().wait(0.2)
    assert len(lines) == count
