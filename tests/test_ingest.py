"""Ingest logic against mongomock: the seed's cases, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from telemetry.errors import InvalidMessage, RejectionKind, StorageRejected, StorageUnavailable
from telemetry.models import split_arguments
from telemetry.observe.metrics import CollectorMetrics
from telemetry.observe.stats import Stats
from telemetry.store.gpucache import GpuCache
from telemetry.store.mongo import MongoTelemetryStore
from telemetry.worker.ingest import DecodedMessage, Outcome, ingest
from telemetry.worker.recorder import Recorder
from tests.fakes import UncachedGpus


def ingest_batch(
    store: MongoTelemetryStore,
    stats: Stats,
    messages: list[DecodedMessage],
    gpu_cache: GpuCache | None = None,
) -> list[Outcome]:
    """The write path, and its outcomes counted into ``stats`` as a worker counts them."""
    result = ingest(store, messages, gpu_cache or UncachedGpus())
    Recorder(stats, CollectorMetrics.fresh()).ingested(result)
    return result.outcomes


def decoded(point: Any, metadata: Any = None, message_id: str = "msg-1") -> DecodedMessage:
    kwargs = {"point": point} if metadata is None else {"point": point, "metadata": metadata}
    return DecodedMessage(message_id, (), kwargs)


def ingest_one(store: MongoTelemetryStore, stats: Stats, point: Any, metadata: Any = None) -> str:
    """One message through the write path, as the per-task path sends it: a batch of one."""
    [outcome] = ingest_batch(store, stats, [decoded(point, metadata)])
    return outcome.describe()


def at(point: dict[str, Any], second: int, **changes: Any) -> dict[str, Any]:
    return dict(point, timestamp=f"2025-07-18T20:42:{second:02d}Z", **changes)


def test_valid_point_is_stored_with_labels_and_its_gpu_recorded(
    mock_store: MongoTelemetryStore,
    stats: Stats,
    sample_point: dict[str, Any],
    sample_metadata: dict[str, Any],
) -> None:
    # when
    outcome = ingest_one(mock_store, stats, sample_point, sample_metadata)
    # then
    assert outcome == "stored"
    stored = mock_store.database["telemetry"].find_one({}, {"_id": 0, "ingested_at": 0})
    assert stored == {
        "gpu_uuid": sample_point["gpu_uuid"],
        "metric_name": "DCGM_FI_DEV_GPU_UTIL",
        "value": 87.5,
        "timestamp": datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC),
        "hostname": "mtv5-dgx1-hgpu-031",
        "labels": {
            "DCGM_FI_DRIVER_VERSION": "535.129.03",
            "Hostname": "mtv5-dgx1-hgpu-031",
            "gpu": "0",
        },
    }
    gpu = mock_store.database["gpus"].find_one({"_id": sample_point["gpu_uuid"]})
    assert gpu is not None
    assert gpu["model_name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["gpu_index"] == 0
    assert gpu["first_seen"] == gpu["last_seen"] == datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)
    assert stats.snapshot()["telemetry_stored"] == 1


def test_message_without_metadata_still_stores_point_and_gpu(
    mock_store: MongoTelemetryStore, stats: Stats, sample_point: dict[str, Any]
) -> None:
    assert ingest_one(mock_store, stats, sample_point) == "stored"
    assert mock_store.database["telemetry"].count_documents({}) == 1
    gpu = mock_store.database["gpus"].find_one({"_id": sample_point["gpu_uuid"]})
    assert gpu is not None and "hostname" not in gpu


def test_message_without_metadata_keeps_what_was_known_of_the_gpu(
    mock_store: MongoTelemetryStore,
    stats: Stats,
    sample_point: dict[str, Any],
    sample_metadata: dict[str, Any],
) -> None:
    # given
    ingest_one(mock_store, stats, sample_point, sample_metadata)
    # when
    later = dict(sample_point, timestamp="2025-07-18T20:43:34Z")
    ingest_one(mock_store, stats, later)
    # then
    gpu = mock_store.database["gpus"].find_one({"_id": sample_point["gpu_uuid"]})
    assert gpu is not None
    assert gpu["hostname"] == "mtv5-dgx1-hgpu-031"
    assert gpu["first_seen"] == datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)
    assert gpu["last_seen"] == datetime(2025, 7, 18, 20, 43, 34, tzinfo=UTC)


def test_redelivered_message_is_stored_once_and_counted_as_duplicate(
    mock_store: MongoTelemetryStore, stats: Stats, sample_point: dict[str, Any]
) -> None:
    assert ingest_one(mock_store, stats, sample_point) == "stored"
    assert ingest_one(mock_store, stats, sample_point) == "duplicate"
    assert mock_store.database["telemetry"].count_documents({}) == 1
    counts = stats.snapshot()
    assert (counts["duplicates"], counts["telemetry_stored"], counts["messages_errors"]) == (
        1,
        1,
        0,
    )


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("gpu_uuid", None, "gpu_uuid: is required"),
        ("metric_name", None, "metric_name: is required"),
        ("timestamp", None, "timestamp: is required"),
        ("timestamp", "0001-01-01T00:00:00Z", "timestamp: not a real time"),
        ("gpu_uuid", "", "gpu_uuid"),
        ("metric_name", "", "metric_name"),
    ],
)
def test_message_without_required_field_is_counted_recorded_and_not_stored(
    mock_store: MongoTelemetryStore,
    stats: Stats,
    sample_point: dict[str, Any],
    field: str,
    value: Any,
    reason: str,
) -> None:
    # given
    point = dict(sample_point)
    if value is None:
        del point[field]
    else:
        point[field] = value
    # when
    outcome = ingest_one(mock_store, stats, point)
    # then
    assert outcome.startswith(f"rejected: {reason}")
    assert mock_store.database["telemetry"].count_documents({}) == 0
    rejected = list(mock_store.database["rejected"].find())
    assert len(rejected) == 1
    assert rejected[0]["reason"].startswith(reason)
    assert rejected[0]["message_id"] == "msg-1"
    assert sample_point["metric_name"] in rejected[0]["raw"] or field == "metric_name"
    assert stats.snapshot()["messages_errors"] == 1


def test_several_messages_give_matching_statistics(
    mock_store: MongoTelemetryStore, stats: Stats, sample_point: dict[str, Any]
) -> None:
    # given: 5 points of 2 GPUs, one of them sent twice, and 2 invalid messages
    for second in range(5):
        uuid = f"GPU-{second % 2}"
        ingest_one(
            mock_store,
            stats,
            dict(sample_point, gpu_uuid=uuid, timestamp=f"2025-07-18T20:42:0{second}Z"),
        )
    ingest_one(
        mock_store, stats, dict(sample_point, gpu_uuid="GPU-0", timestamp="2025-07-18T20:42:00Z")
    )
    ingest_one(mock_store, stats, dict(sample_point, gpu_uuid=""))
    ingest_one(mock_store, stats, "not an object")
    # then
    assert mock_store.database["telemetry"].count_documents({}) == 5
    assert mock_store.database["gpus"].count_documents({}) == 2
    assert stats.snapshot() == {
        "messages_processed": 8,
        "messages_errors": 2,
        "gpus_stored": 6,
        "telemetry_stored": 5,
        "queue_delivered": 0,
        "duplicates": 1,
        "retries": 0,
        "dead_lettered": 0,
    }


def test_unparseable_labels_are_kept_raw(
    mock_store: MongoTelemetryStore, stats: Stats, sample_point: dict[str, Any]
) -> None:
    ingest_one(mock_store, stats, dict(sample_point, labels_raw="not labels"))
    stored = mock_store.database["telemetry"].find_one()
    assert stored is not None
    assert stored["labels"] == {}
    assert stored["labels_raw"] == "not labels"


def test_storage_outage_fails_every_point_for_retry_and_nothing_is_counted(
    mock_store: MongoTelemetryStore,
    stats: Stats,
    sample_point: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def down(*_: Any) -> None:
        raise StorageUnavailable("upserting GPUs: connection refused")

    monkeypatch.setattr(mock_store, "upsert_gpus", down)
    outcomes = ingest_batch(mock_store, stats, [decoded(at(sample_point, s)) for s in range(3)])
    assert [outcome.kind for outcome in outcomes] == ["failed"] * 3
    assert all(isinstance(outcome.error, StorageUnavailable) for outcome in outcomes)
    assert not any(outcome.settled for outcome in outcomes)
    assert stats.snapshot()["messages_processed"] == 0
    assert mock_store.database["telemetry"].count_documents({}) == 0


def test_a_batch_gives_one_outcome_per_message_in_order(
    mock_store: MongoTelemetryStore, stats: Stats, sample_point: dict[str, Any]
) -> None:
    # given: one point stored before, so its second delivery is a duplicate
    ingest_one(mock_store, stats, at(sample_point, 1))
    batch = [
        decoded(at(sample_point, 2), message_id="a"),
        decoded(at(sample_point, 1), message_id="b"),
        decoded(dict(sample_point, value="hot"), message_id="c"),
        decoded(at(sample_point, 3), {"gpu_index": -1}, message_id="d"),
        DecodedMessage("e", (), {"colour": "red"}),
        decoded(at(sample_point, 4), message_id="f"),
    ]
    # when
    outcomes = ingest_batch(mock_store, stats, batch)
    # then
    assert [outcome.kind for outcome in outcomes] == [
        "stored",
        "duplicate",
        "rejected",
        "rejected",
        "rejected",
        "stored",
    ]
    assert [outcome.rejection for outcome in outcomes[2:5]] == [
        RejectionKind.INVALID_POINT,
        RejectionKind.INVALID_METADATA,
        RejectionKind.INVALID_ARGUMENTS,
    ]
    assert outcomes[2].describe().startswith("rejected: value: not a number")
    rejected = {doc["message_id"]: doc for doc in mock_store.database["rejected"].find()}
    assert sorted(rejected) == ["c", "d", "e"]
    assert rejected["d"]["kind"] == "invalid_metadata"
    assert mock_store.database["telemetry"].count_documents({}) == 3
    counts = stats.snapshot()
    assert (counts["telemetry_stored"], counts["duplicates"], counts["messages_errors"]) == (
        3,
        1,
        3,
    )
    assert counts["messages_processed"] == 7


def test_a_batch_upserts_each_gpu_once_with_the_span_of_its_points(
    mock_store: MongoTelemetryStore,
    stats: Stats,
    sample_point: dict[str, Any],
    sample_metadata: dict[str, Any],
) -> None:
    batch = [
        decoded(at(sample_point, 5), sample_metadata),
        decoded(at(sample_point, 1), {**sample_metadata, "hostname": "moved"}),
        decoded(at(sample_point, 3, gpu_uuid="GPU-other")),
    ]
    ingest_batch(mock_store, stats, batch, GpuCache(lag_s=60))
    assert stats.snapshot()["gpus_stored"] == 2
    gpu = mock_store.database["gpus"].find_one({"_id": sample_point["gpu_uuid"]})
    assert gpu is not None
    assert gpu["hostname"] == "moved"
    assert gpu["first_seen"] == datetime(2025, 7, 18, 20, 42, 1, tzinfo=UTC)
    assert gpu["last_seen"] == datetime(2025, 7, 18, 20, 42, 5, tzinfo=UTC)


def test_a_point_the_database_refuses_fails_alone(
    mock_store: MongoTelemetryStore,
    stats: Stats,
    sample_point: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refused = StorageRejected("storing point: document too large")

    def insert_points(documents: list[dict[str, Any]]) -> list[Any]:
        return ["stored", refused]

    monkeypatch.setattr(mock_store, "insert_points", insert_points)
    outcomes = ingest_batch(
        mock_store, stats, [decoded(at(sample_point, 1)), decoded(at(sample_point, 2))]
    )
    assert outcomes == [Outcome("stored"), Outcome("failed", error=refused)]
    assert stats.snapshot()["telemetry_stored"] == 1


def test_invalid_messages_that_cannot_be_recorded_fail_for_retry(
    mock_store: MongoTelemetryStore, stats: Stats, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_: Any) -> None:
        raise StorageUnavailable("recording rejected messages: connection refused")

    monkeypatch.setattr(mock_store, "record_rejected", down)
    [outcome] = ingest_batch(mock_store, stats, [DecodedMessage("x", (), {})])
    assert outcome.kind == "failed"
    assert isinstance(outcome.error, StorageUnavailable)
    assert stats.snapshot()["messages_errors"] == 0


def test_positional_arguments_are_accepted_like_keywords(sample_point: dict[str, Any]) -> None:
    assert split_arguments([sample_point, {"hostname": "h"}], {}) == (
        sample_point,
        {"hostname": "h"},
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        ((), {}, "point: is required"),
        ((1, 2, 3), {}, "at most 2 positional"),
        ((), {"point": {}, "colour": "red"}, "unexpected task arguments"),
        (({},), {"point": {}}, "given twice"),
    ],
)
def test_task_arguments_of_the_wrong_shape_are_invalid(
    args: tuple[Any, ...], kwargs: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        split_arguments(args, kwargs)
