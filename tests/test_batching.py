"""Batch commits against mongomock: per-message outcomes, GPU merging, the buffer's triggers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from telemetry.batching import Batcher, Pending, merge_gpu_updates, store_batch
from telemetry.errors import StorageUnavailable
from telemetry.gpucache import GpuCache
from telemetry.models import parse_message
from telemetry.stats import Stats
from telemetry.storage import GpuUpdate, MongoTelemetryStore


@pytest.fixture(autouse=True)
def one_by_one_gpu_upserts(
    mock_store: MongoTelemetryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mongomock's bulk_write rejects pymongo 4.20's UpdateOne, so GPU upserts go one by one.

    The real bulk write is exercised against SecantusDB by the integration tests.
    """

    def upsert_gpus(updates: list[GpuUpdate], now: datetime) -> None:
        for update in updates:
            mock_store.database["gpus"].update_one(
                {"_id": update.gpu_uuid}, update.spec(now), upsert=True
            )

    monkeypatch.setattr(mock_store, "upsert_gpus", upsert_gpus)


def item(point: dict[str, Any], metadata: dict[str, Any] | None = None) -> tuple[str, Any, Any]:
    kwargs: dict[str, Any] = {"point": point}
    if metadata is not None:
        kwargs["metadata"] = metadata
    return (f"task-{point['timestamp']}-{point['metric_name']}", [], kwargs)


def at(point: dict[str, Any], second: int, **changes: Any) -> dict[str, Any]:
    return {**point, "timestamp": f"2025-07-18T20:42:{second:02d}Z", **changes}


def test_batch_stores_every_valid_point_and_one_gpu_upsert_per_gpu(
    mock_store: MongoTelemetryStore,
    stats: Stats,
    sample_point: dict[str, Any],
    sample_metadata: dict[str, Any],
) -> None:
    items = [item(at(sample_point, second), sample_metadata) for second in range(10)]
    # when
    results = store_batch(mock_store, stats, items)
    # then
    assert results == ["stored"] * 10
    assert mock_store.database["telemetry"].count_documents({}) == 10
    gpu = mock_store.database["gpus"].find_one({"_id": sample_point["gpu_uuid"]})
    assert gpu is not None
    assert gpu["first_seen"] == datetime(2025, 7, 18, 20, 42, 0, tzinfo=UTC)
    assert gpu["last_seen"] == datetime(2025, 7, 18, 20, 42, 9, tzinfo=UTC)
    assert gpu["model_name"] == sample_metadata["model_name"]
    counted = stats.snapshot()
    assert counted["gpus_stored"] == 1
    assert counted["telemetry_stored"] == counted["messages_processed"] == 10
    assert counted["queue_delivered"] == 10


def test_redelivered_points_are_duplicates_beside_new_ones(
    mock_store: MongoTelemetryStore, stats: Stats, sample_point: dict[str, Any]
) -> None:
    store_batch(mock_store, stats, [item(at(sample_point, 1)), item(at(sample_point, 2))])
    # when
    results = store_batch(mock_store, stats, [item(at(sample_point, 1)), item(at(sample_point, 3))])
    # then
    assert results == ["duplicate", "stored"]
    assert mock_store.database["telemetry"].count_documents({}) == 3
    assert stats.snapshot()["duplicates"] == 1


def test_invalid_message_is_left_to_the_per_task_path_and_does_not_fail_its_neighbours(
    mock_store: MongoTelemetryStore, stats: Stats, sample_point: dict[str, Any]
) -> None:
    bad = at(sample_point, 2, gpu_uuid="")
    # when
    results = store_batch(
        mock_store, stats, [item(at(sample_point, 1)), item(bad), item(at(sample_point, 3))]
    )
    # then: the per-task path records and counts the rejection, not the batch
    assert results == ["stored", None, "stored"]
    assert stats.snapshot()["messages_errors"] == 0
    assert mock_store.database["telemetry"].count_documents({}) == 2


def test_unavailable_storage_hands_every_message_to_the_per_task_path(
    mock_store: MongoTelemetryStore,
    stats: Stats,
    sample_point: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def down(*_: Any) -> None:
        raise StorageUnavailable("storing points: connection refused")

    monkeypatch.setattr(mock_store, "insert_points", down)
    # when
    results = store_batch(mock_store, stats, [item(at(sample_point, s)) for s in range(3)])
    # then
    assert results == [None, None, None]
    assert stats.snapshot()["messages_processed"] == 0


def test_per_document_write_error_fails_only_that_message(
    mock_store: MongoTelemetryStore,
    stats: Stats,
    sample_point: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        mock_store, "insert_points", lambda documents: ["stored", "failed", "duplicate"]
    )
    # when
    results = store_batch(mock_store, stats, [item(at(sample_point, s)) for s in range(3)])
    # then
    assert results == ["stored", None, "duplicate"]
    assert stats.snapshot()["messages_processed"] == 2


def test_gpu_cache_skips_upserts_a_previous_batch_already_made(
    mock_store: MongoTelemetryStore, stats: Stats, sample_point: dict[str, Any]
) -> None:
    cache = GpuCache(lag_s=60)
    store_batch(mock_store, stats, [item(at(sample_point, 1))], cache)
    # when
    store_batch(mock_store, stats, [item(at(sample_point, 2))], cache)
    # then
    assert stats.snapshot()["gpus_stored"] == 1


def test_merged_gpu_update_spans_the_batch_and_keeps_the_latest_metadata(
    sample_point: dict[str, Any], sample_metadata: dict[str, Any]
) -> None:
    first = parse_message(at(sample_point, 5), sample_metadata)
    second = parse_message(at(sample_point, 1), {**sample_metadata, "hostname": "moved"})
    # when
    (update,) = merge_gpu_updates([first, second])
    # then
    assert update.first_seen == datetime(2025, 7, 18, 20, 42, 1, tzinfo=UTC)
    assert update.last_seen == datetime(2025, 7, 18, 20, 42, 5, tzinfo=UTC)
    assert update.fields["hostname"] == "moved"


def pending(received: float) -> Pending:
    return Pending(None, None, None, None, None, f"t{received}", [], {}, received, 0.0)


def test_batcher_hands_over_a_full_batch_at_once() -> None:
    submitted: list[list[Pending]] = []
    batcher = Batcher(3, 0.2, submitted.append, clock=lambda: 0.0)
    # when
    for _ in range(7):
        batcher.add(pending(0.0))
    # then
    assert [len(batch) for batch in submitted] == [3, 3]
    assert len(batcher) == 1


def test_batcher_flushes_a_partial_batch_only_once_its_oldest_waited_the_interval() -> None:
    now = [10.0]
    submitted: list[list[Pending]] = []
    batcher = Batcher(100, 0.2, submitted.append, clock=lambda: now[0])
    batcher.add(pending(10.0))
    batcher.add(pending(10.1))
    # when
    now[0] = 10.15
    batcher.flush_due()
    # then
    assert submitted == []
    # when
    now[0] = 10.25
    batcher.flush_due()
    # then
    assert [len(batch) for batch in submitted] == [2]
    assert len(batcher) == 0
