"""A MIG GPU instance is part of a point's identity; the whole GPU keeps the old identity."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from telemetry.models import GpuMetadata, Point
from telemetry.store.gpucache import GpuCache
from telemetry.store.mongo import (
    GpuUpdate,
    MongoTelemetryStore,
    instance_key,
    instance_of_key,
    point_document,
)
from telemetry.worker.ingest import DecodedMessage, ingest
from tests.fakes import UncachedGpus

UUID = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
METRIC = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
WHEN = datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)


def wire_point(second: int = 34, **fields: Any) -> dict[str, Any]:
    return {
        "gpu_uuid": UUID,
        "metric_name": METRIC,
        "value": 0.5,
        "timestamp": f"2025-07-18T20:42:{second:02d}Z",
        **fields,
    }


def store_all(
    store: MongoTelemetryStore,
    messages: list[tuple[dict[str, Any], dict[str, Any] | None]],
    gpu_cache: GpuCache | None = None,
) -> list[str]:
    """Messages through the write path as one batch; their outcomes."""
    messages = [
        DecodedMessage(f"msg-{index}", (), {"point": point, "metadata": metadata})
        for index, (point, metadata) in enumerate(messages)
    ]
    return [
        outcome.kind for outcome in ingest(store, messages, gpu_cache or UncachedGpus()).outcomes
    ]


def test_two_instances_of_one_gpu_metric_and_time_are_both_stored(
    mock_store: MongoTelemetryStore,
) -> None:
    # when
    outcomes = store_all(
        mock_store,
        [
            (wire_point(gpu_instance="1"), {"gpu_instance_profile": "1g.10gb"}),
            (wire_point(gpu_instance="2"), {"gpu_instance_profile": "3g.40gb"}),
        ],
    )
    # then
    assert outcomes == ["stored", "stored"]
    stored = list(mock_store.database["telemetry"].find({}).sort("gpu_instance", 1))
    assert [document["_id"] for document in stored] == [
        {"gpu_uuid": UUID, "metric_name": METRIC, "timestamp": WHEN, "gpu_instance": "1"},
        {"gpu_uuid": UUID, "metric_name": METRIC, "timestamp": WHEN, "gpu_instance": "2"},
    ]
    assert [list(document["_id"]) for document in stored] == [
        ["gpu_uuid", "metric_name", "timestamp", "gpu_instance"]
    ] * 2
    assert [(d["gpu_instance"], d["gpu_instance_profile"]) for d in stored] == [
        ("1", "1g.10gb"),
        ("2", "3g.40gb"),
    ]


def test_the_same_instance_point_twice_is_a_duplicate(mock_store: MongoTelemetryStore) -> None:
    # given
    assert store_all(mock_store, [(wire_point(gpu_instance="13"), None)]) == ["stored"]
    # when: redelivered, alone and in a batch with itself ("13 " strips to "13")
    again = store_all(
        mock_store, [(wire_point(gpu_instance="13"), None), (wire_point(gpu_instance="13 "), None)]
    )
    # then
    assert again == ["duplicate", "duplicate"]
    assert mock_store.database["telemetry"].count_documents({}) == 1


def test_a_point_without_instance_keeps_the_old_id_byte_for_byte(
    mock_store: MongoTelemetryStore,
) -> None:
    # given: a point stored before instances existed, with the _id the store wrote then
    old_id = {"gpu_uuid": UUID, "metric_name": METRIC, "timestamp": WHEN}
    mock_store.database["telemetry"].insert_one({"_id": old_id, "value": 0.5})
    point = Point.model_validate(wire_point(gpu_instance="  "))
    # when
    document = point_document(point, GpuMetadata(), WHEN)
    outcome = store_all(mock_store, [(wire_point(), None)])
    # then
    assert point.gpu_instance is None
    assert list(document["_id"].items()) == list(old_id.items())
    assert "gpu_instance" not in document and "gpu_instance_profile" not in document
    assert outcome == ["duplicate"]


def test_time_sliced_copies_of_one_gpu_are_stored_once(mock_store: MongoTelemetryStore) -> None:
    """Time slicing shares a whole GPU between pods; each pod's copy is the same point."""
    # when
    outcomes = store_all(
        mock_store,
        [
            (wire_point(), {"hostname": "h1", "pod": "trainer-a", "namespace": "ml"}),
            (wire_point(), {"hostname": "h1", "pod": "trainer-b", "namespace": "ml"}),
            (wire_point(), {"hostname": "h1", "pod": "notebook-c", "namespace": "lab"}),
        ],
    )
    # then
    assert outcomes == ["stored", "duplicate", "duplicate"]
    assert mock_store.database["telemetry"].count_documents({}) == 1


def test_the_gpu_record_keeps_each_instance_apart_and_the_gpu_fields_once(
    mock_store: MongoTelemetryStore,
) -> None:
    gpu = {"hostname": "h1", "pci_bus_id": "00000000:3B:00.0", "driver_version": "535.129.03"}
    # when: two instances in one batch, then one of them later without its profile
    store_all(
        mock_store,
        [
            (wire_point(30, gpu_instance="1"), {**gpu, "gpu_instance_profile": "1g.10gb"}),
            (wire_point(31, gpu_instance="2"), {**gpu, "gpu_instance_profile": "3g.40gb"}),
            (wire_point(32, gpu_instance="1"), {**gpu, "gpu_instance_profile": "1g.10gb"}),
            (wire_point(33), gpu),
        ],
    )
    store_all(mock_store, [(wire_point(40, gpu_instance="2"), None)])
    # then
    record = mock_store.database["gpus"].find_one({"_id": UUID})
    assert record is not None
    assert "gpu_instance_profile" not in record
    assert (record["pci_bus_id"], record["driver_version"]) == ("00000000:3B:00.0", "535.129.03")
    seconds = {
        key: (entry.get("profile"), entry["first_seen"].second, entry["last_seen"].second)
        for key, entry in record["mig_instances"].items()
    }
    assert seconds == {"1": ("1g.10gb", 30, 32), "2": ("3g.40gb", 31, 40)}
    assert (record["first_seen"].second, record["last_seen"].second) == (30, 40)


def test_merge_of_points_without_instance_has_no_instances() -> None:
    points = [(Point.model_validate(wire_point(second)), GpuMetadata()) for second in (1, 2)]
    [update] = GpuUpdate.merge(points)
    assert update.instances is None
    assert set(update.spec(WHEN)["$set"]) == {"updated_at"}


def test_a_later_profile_wins_and_a_missing_one_keeps_the_last() -> None:
    profile = GpuMetadata(gpu_instance_profile="1g.5gb")
    points = [
        (Point.model_validate(wire_point(5, gpu_instance="7")), profile),
        (Point.model_validate(wire_point(3, gpu_instance="7")), GpuMetadata()),
        (Point.model_validate(wire_point(4, gpu_instance="7")), GpuMetadata()),
    ]
    [update] = GpuUpdate.merge(points)
    assert update.fields == {}
    assert update.instances is not None
    seen = update.instances["7"]
    assert (seen.profile, seen.first_seen.second, seen.last_seen.second) == ("1g.5gb", 3, 5)
    spec = update.spec(WHEN)
    assert spec["$set"]["mig_instances.7.profile"] == "1g.5gb"
    assert spec["$min"]["mig_instances.7.first_seen"].second == 3
    assert spec["$max"]["mig_instances.7.last_seen"].second == 5


@pytest.mark.parametrize("instance", ["13", "a.b", "$x", "100%", "a\0b", "%2E"])
def test_instance_ids_become_safe_field_names_and_back(instance: str) -> None:
    key = instance_key(instance)
    assert "." not in key and not key.startswith("$") and "\0" not in key
    assert instance_of_key(key) == instance
    assert instance_key("13") == "13"


def test_the_cache_writes_a_new_instance_or_profile_and_skips_a_known_one() -> None:
    def update(second: int, instance: str, profile: str | None = None) -> GpuUpdate:
        point = Point.model_validate(wire_point(second, gpu_instance=instance))
        [merged] = GpuUpdate.merge([(point, GpuMetadata(gpu_instance_profile=profile))])
        return merged

    cache = GpuCache(lag_s=60)
    cache.remember(update(30, "1", "1g.10gb"))
    assert not cache.needs_write(update(31, "1"))
    assert not cache.needs_write(update(31, "1", "1g.10gb"))
    assert cache.needs_write(update(31, "1", "2g.20gb"))
    assert cache.needs_write(update(29, "1"))
    assert cache.needs_write(update(30, "2"))
    # The whole GPU's point says nothing of instances: nothing new.
    [whole] = GpuUpdate.merge([(Point.model_validate(wire_point(31)), GpuMetadata())])
    assert not cache.needs_write(whole)
