"""Prometheus metrics: what the ingest logic records, reason labels, multiprocess files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from telemetry.errors import RejectionKind
from telemetry.models import format_timestamp
from telemetry.observe import metrics
from telemetry.observe.stats import Stats
from telemetry.store.mongo import MongoTelemetryStore
from telemetry.worker.ingest import Delivery, ingest, reject_undecodable


@pytest.fixture
def collector_metrics() -> Iterator[metrics.CollectorMetrics]:
    """Fresh metrics for this test, in an in-process registry."""
    yield metrics.reset()
    metrics.reset()


def sample(name: str, **labels: str) -> float:
    """One sample of this process's metrics, from the scrape text (0 if absent)."""
    body, _ = metrics.exposition()
    for family in text_string_to_metric_families(body.decode()):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


def test_rejected_messages_are_counted_by_reason_and_every_reason_starts_at_zero(
    collector_metrics: metrics.CollectorMetrics,
    mock_store: MongoTelemetryStore,
    stats: Stats,
    sample_point: dict[str, Any],
) -> None:
    # when: the kind travels with the rejection, never parsed back from its text
    bad = [
        Delivery("bad-1", (), {"point": dict(sample_point, value="NaN")}),
        Delivery("bad-2", (), {"point": dict(sample_point, gpu_uuid="")}),
        Delivery("bad-3", (), {"point": sample_point, "metadata": "x"}),
    ]
    ingest(mock_store, stats, bad)
    reject_undecodable(
        mock_store, stats, "cannot decode body: x", RejectionKind.UNDECODABLE, "bad-4", b"{"
    )
    # then
    assert sample("telemetry_messages_errors_total", reason="invalid_point") == 2
    assert sample("telemetry_messages_errors_total", reason="invalid_metadata") == 1
    assert sample("telemetry_messages_errors_total", reason="undecodable") == 1
    body, _ = metrics.exposition()
    for kind in RejectionKind:
        assert f'telemetry_messages_errors_total{{reason="{kind.value}"}}' in body.decode()


def test_stats_counters_are_mirrored_once_subscribed(
    collector_metrics: metrics.CollectorMetrics, stats: Stats
) -> None:
    # given
    stats.subscribe(metrics.count_stat)
    stats.subscribe(metrics.count_stat)
    # when
    stats.incr("telemetry_stored", "messages_processed", by=3)
    stats.incr("retries", "dead_lettered", "queue_delivered", "duplicates", "gpus_stored")
    stats.incr("messages_errors")
    # then
    assert sample("telemetry_points_stored_total") == 3
    assert sample("telemetry_messages_processed_total") == 3
    for name in ("retries", "dead_lettered", "messages_delivered", "duplicates", "gpus_stored"):
        assert sample(f"telemetry_{name}_total") == 1
    # Errors are counted with their kind by the write path, not from the bare counter.
    errors = [sample("telemetry_messages_errors_total", reason=k.value) for k in RejectionKind]
    assert sum(errors) == 0


def test_a_stored_point_records_its_latency_and_one_write_of_one_point(
    collector_metrics: metrics.CollectorMetrics,
    mock_store: MongoTelemetryStore,
    stats: Stats,
    sample_point: dict[str, Any],
) -> None:
    # given: a point published three seconds ago
    published = datetime.now(UTC) - timedelta(seconds=3)
    point = dict(sample_point, timestamp=format_timestamp(published))
    # when: it arrives twice
    for _ in range(2):
        ingest(mock_store, stats, [Delivery("m-1", (), {"point": point})])
    # then: two writes of one point each, one latency (the duplicate stored nothing)
    assert sample("telemetry_db_write_seconds_count") == 2
    assert sample("telemetry_db_write_batch_size_sum") == 2
    assert sample("telemetry_db_write_batch_size_bucket", le="1.0") == 2
    assert sample("telemetry_ingest_latency_seconds_count") == 1
    assert 3 <= sample("telemetry_ingest_latency_seconds_sum") < 30
    assert sample("telemetry_ingest_latency_seconds_bucket", le="2.5") == 0
    assert sample("telemetry_ingest_latency_seconds_bucket", le="5.0") == 1


def test_a_write_that_fails_is_not_timed(collector_metrics: metrics.CollectorMetrics) -> None:
    with pytest.raises(RuntimeError), metrics.db_write_timer(batch_size=5):
        raise RuntimeError("storage down")
    with metrics.db_write_timer(batch_size=5):
        pass
    assert sample("telemetry_db_write_seconds_count") == 1
    assert sample("telemetry_db_write_batch_size_sum") == 5


def test_in_flight_goes_up_and_down_by_n(collector_metrics: metrics.CollectorMetrics) -> None:
    metrics.in_flight_inc()
    metrics.in_flight_inc(10)
    metrics.in_flight_dec(4)
    assert sample("telemetry_messages_in_flight") == 7


def test_latency_is_never_negative() -> None:
    now = datetime(2025, 7, 18, tzinfo=UTC)
    assert metrics.seconds_since(now + timedelta(seconds=5), now) == 0
    assert metrics.seconds_since(now - timedelta(seconds=5), now) == 5


def latency_samples() -> dict[tuple[str, str], float]:
    body, _ = metrics.exposition()
    return {
        (found.name, found.labels.get("le", "")): float(found.value)
        for family in text_string_to_metric_families(body.decode())
        if family.name == "telemetry_ingest_latency_seconds"
        for found in family.samples
        if not found.name.endswith("_created")
    }


def test_a_batch_of_latencies_is_recorded_as_observing_each_would() -> None:
    # On and between bucket bounds, below the first and above the last.
    seconds = [0.0, 0.01, 0.010001, 0.3, 0.3, 2.5, 7.0, 1799.9, 1800.0, 5000.0]
    try:
        fresh = metrics.reset()
        for amount in seconds:
            fresh.latency.observe(amount)
        one_by_one = latency_samples()
        metrics.reset()
        metrics.observe_latencies(seconds)
        metrics.observe_latencies([])
        assert latency_samples() == one_by_one
        assert one_by_one[("telemetry_ingest_latency_seconds_count", "")] == len(seconds)
    finally:
        metrics.reset()


def test_multiprocess_mode_keeps_values_in_files_and_cleans_them_up(tmp_path: Path) -> None:
    # given
    directory = tmp_path / "prom"
    directory.mkdir()
    metrics.enable_multiprocess(directory)
    try:
        # when
        metrics.count_stat("telemetry_stored", 4)
        metrics.in_flight_inc(2)
        metrics.observe_db_write(0.01, 4)
        # then: the values are in files, and the scrape reads them from there
        assert any(directory.glob("counter_*.db"))
        assert sample("telemetry_points_stored_total") == 4
        assert sample("telemetry_messages_in_flight") == 2
        assert sample("telemetry_db_write_batch_size_sum") == 4
        assert metrics.multiprocess_dir() == directory
    finally:
        metrics.disable_multiprocess()
    # and afterwards the files are gone and values live in this process again
    assert not directory.exists()
    assert metrics.multiprocess_dir() is None
    metrics.count_stat("telemetry_stored", 1)
    assert sample("telemetry_points_stored_total") == 1
