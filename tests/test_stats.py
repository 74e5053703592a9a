"""Counters and the periodic statistics line."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from telemetry.observe.stats import COUNTERS, Count, Stats, StatsReporter, stats_fields


class Reports(logging.Handler):
    """The statistics log records, as the reporter writes them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.two = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if len(self.records) >= 2:
            self.two.set()


@pytest.fixture
def reports() -> Iterator[Reports]:
    """The statistics logger's records, captured while the test runs."""
    logger = logging.getLogger("telemetry.stats")
    handler, level = Reports(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_counters_add_up_across_threads(stats: Stats) -> None:
    def work() -> None:
        for _ in range(1000):
            stats.incr(Count.MESSAGES_PROCESSED)
            stats.add({Count.TELEMETRY_STORED: 1})

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


def test_statistics_fields_are_component_instance_and_every_counter(stats: Stats) -> None:
    stats.add({Count.RETRIES: 3})
    line = stats_fields(stats, "collector-1")
    assert line["component"] == "collector"
    assert line["instance_id"] == "collector-1"
    assert set(COUNTERS) <= set(line)
    assert line["retries"] == 3


def test_reporter_reports_periodically_and_once_more_on_stop(
    stats: Stats, reports: Reports
) -> None:
    # given
    reporter = StatsReporter(stats, "c1", interval_s=0.05)
    # when
    reporter.start()
    assert reports.two.wait(5)
    stats.incr(Count.TELEMETRY_STORED)
    reporter.stop()
    # then: the last report has the counters as fields of the record
    last = reports.records[-1]
    assert last.getMessage() == "Collector statistics"
    assert last.__dict__["instance_id"] == "c1"
    assert last.__dict__["telemetry_stored"] == 1
    count = len(reports.records)
    threading.Event().wait(0.2)
    assert len(reports.records) == count
