"""Prometheus metrics: what the recorder makes of the write path, reasons, multiprocess files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from telemetry.errors import RejectionKind
from telemetry.models import format_timestamp
from telemetry.observe import metrics
from telemetry.observe.metrics import CollectorMetrics
from telemetry.observe.stats import Count
from telemetry.store.mongo import MongoTelemetryStore
from telemetry.worker.ingest import DecodedMessage, ingest, reject_undecodable
from telemetry.worker.recorder import Recorder
from tests.fakes import UncachedGpus


def sample(collected: CollectorMetrics, name: str, **labels: str) -> float:
    """One sample of ``collected``, from the scrape text (0 if absent)."""
    body, _ = metrics.exposition(collected.registry)
    for family in text_string_to_metric_families(body.decode()):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


def test_rejected_messages_are_counted_by_reason_and_every_reason_starts_at_zero(
    collector_metrics: CollectorMetrics,
    recorder: Recorder,
    mock_store: MongoTelemetryStore,
    sample_point: dict[str, Any],
) -> None:
    # when: the kind travels with the rejection, never parsed back from its text
    bad = [
        DecodedMessage("bad-1", (), {"point": dict(sample_point, value="NaN")}),
        DecodedMessage("bad-2", (), {"point": dict(sample_point, gpu_uuid="")}),
        DecodedMessage("bad-3", (), {"point": sample_point, "metadata": "x"}),
    ]
    recorder.ingested(ingest(mock_store, bad, UncachedGpus()))
    recorder.ingested(
        reject_undecodable(
            mock_store, "cannot decode body: x", RejectionKind.UNDECODABLE, "bad-4", b"{"
        )
    )
    # then
    errors = "telemetry_messages_errors_total"
    assert sample(collector_metrics, errors, reason="invalid_point") == 2
    assert sample(collector_metrics, errors, reason="invalid_metadata") == 1
    assert sample(collector_metrics, errors, reason="undecodable") == 1
    assert sample(collector_metrics, "telemetry_messages_processed_total") == 4
    body, _ = metrics.exposition(collector_metrics.registry)
    for kind in RejectionKind:
        assert f'telemetry_messages_errors_total{{reason="{kind.value}"}}' in body.decode()


def test_every_statistics_counter_but_errors_has_its_prometheus_twin(
    collector_metrics: CollectorMetrics, recorder: Recorder
) -> None:
    # when
    recorder.arrived()
    recorder.retried()
    recorder.dead_lettered()
    recorder.unknown_task()
    # then: the statistics and the metrics say the same
    assert recorder.stats.snapshot()["queue_delivered"] == 1
    assert sample(collector_metrics, "telemetry_messages_delivered_total") == 1
    assert sample(collector_metrics, "telemetry_retries_total") == 1
    assert sample(collector_metrics, "telemetry_dead_lettered_total") == 2
    assert recorder.stats.snapshot()["dead_lettered"] == 2
    errors = "telemetry_messages_errors_total"
    assert sample(collector_metrics, errors, reason="unknown_task") == 1
    assert set(metrics.STAT_COUNTERS) == set(Count) - {Count.MESSAGES_ERRORS}


def test_a_stored_point_records_its_latency_and_one_write_of_one_point(
    collector_metrics: CollectorMetrics,
    recorder: Recorder,
    mock_store: MongoTelemetryStore,
    sample_point: dict[str, Any],
) -> None:
    # given: a point published three seconds ago
    published = datetime.now(UTC) - timedelta(seconds=3)
    point = dict(sample_point, timestamp=format_timestamp(published))
    # when: it arrives twice
    for _ in range(2):
        recorder.ingested(
            ingest(mock_store, [DecodedMessage("m-1", (), {"point": point})], UncachedGpus())
        )
    # then: two writes of one point each, one latency (the duplicate stored nothing)
    assert sample(collector_metrics, "telemetry_db_write_seconds_count") == 2
    assert sample(collector_metrics, "telemetry_db_write_batch_size_sum") == 2
    assert sample(collector_metrics, "telemetry_db_write_batch_size_bucket", le="1.0") == 2
    assert sample(collector_metrics, "telemetry_ingest_latency_seconds_count") == 1
    assert 3 <= sample(collector_metrics, "telemetry_ingest_latency_seconds_sum") < 30
    assert sample(collector_metrics, "telemetry_ingest_latency_seconds_bucket", le="2.5") == 0
    assert sample(collector_metrics, "telemetry_ingest_latency_seconds_bucket", le="5.0") == 1
    assert sample(collector_metrics, "telemetry_points_stored_total") == 1
    assert sample(collector_metrics, "telemetry_duplicates_total") == 1


def test_a_write_that_fails_is_not_timed(
    collector_metrics: CollectorMetrics,
    recorder: Recorder,
    mock_store: MongoTelemetryStore,
    sample_point: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from telemetry.errors import StorageUnavailable

    def down(*_: Any) -> None:
        raise StorageUnavailable("storing points: connection refused")

    monkeypatch.setattr(mock_store, "insert_points", down)
    recorder.ingested(
        ingest(mock_store, [DecodedMessage("m-1", (), {"point": sample_point})], UncachedGpus())
    )
    assert sample(collector_metrics, "telemetry_db_write_seconds_count") == 0
    assert sample(collector_metrics, "telemetry_messages_processed_total") == 0


def test_in_flight_goes_up_one_at_a_time_and_down_by_a_batch(
    collector_metrics: CollectorMetrics, recorder: Recorder
) -> None:
    for _ in range(11):
        recorder.in_flight_inc()
    recorder.in_flight_dec(4)
    assert sample(collector_metrics, "telemetry_messages_in_flight") == 7


def test_latency_is_never_negative() -> None:
    now = datetime(2025, 7, 18, tzinfo=UTC)
    assert metrics.seconds_since(now + timedelta(seconds=5), now) == 0
    assert metrics.seconds_since(now - timedelta(seconds=5), now) == 5


def latency_samples(collected: CollectorMetrics) -> dict[tuple[str, str], float]:
    body, _ = metrics.exposition(collected.registry)
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
    one_at_a_time = CollectorMetrics.fresh()
    for amount in seconds:
        one_at_a_time.latency.observe(amount)
    batched = CollectorMetrics.fresh()
    batched.observe_latencies(seconds)
    batched.observe_latencies([])
    assert latency_samples(batched) == latency_samples(one_at_a_time)
    assert latency_samples(batched)[("telemetry_ingest_latency_seconds_count", "")] == len(seconds)


def test_multiprocess_mode_keeps_values_in_files_and_cleans_them_up(tmp_path: Path) -> None:
    # given
    directory = tmp_path / "prom"
    directory.mkdir()
    metrics.enable_multiprocess(directory)
    try:
        # when: metrics made after the switch
        collected = CollectorMetrics.fresh()
        collected.count(Count.TELEMETRY_STORED, 4)
        collected.in_flight.inc(2)
        collected.observe_db_write(0.01, 4)
        # then: the values are in files, and the scrape reads them from there
        assert any(directory.glob("counter_*.db"))
        assert sample(CollectorMetrics.fresh(), "telemetry_points_stored_total") == 4
        assert sample(collected, "telemetry_messages_in_flight") == 2
        assert sample(collected, "telemetry_db_write_batch_size_sum") == 4
        assert metrics.multiprocess_dir() == directory
    finally:
        metrics.disable_multiprocess()
    # and afterwards the files are gone and values live in this process again
    assert not directory.exists()
    assert metrics.multiprocess_dir() is None
    in_process = CollectorMetrics.fresh()
    in_process.count(Count.TELEMETRY_STORED, 1)
    assert sample(in_process, "telemetry_points_stored_total") == 1
