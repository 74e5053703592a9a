"""The storage port's promises, one suite for every backend (see conftest.py).

Writes go through :class:`TelemetryWrites` and reads through
:class:`TelemetryReads`, as the worker and the read API use them; the raw
database is only looked at for the stored format that docs/storage.md names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from telemetry.config import Settings
from telemetry.demo.embedded import free_port
from telemetry.errors import StorageUnavailable
from telemetry.models import GpuMetadata, Point, epoch_ms
from telemetry.store.client import MongoProbe
from telemetry.store.mongo import GpuUpdate, RejectedMessage, open_store, point_document
from telemetry.store.mongo_reads import open_reader
from telemetry.store.port import PageAfter, PointWindow
from tests.contract.conftest import SERVER_BACKENDS, Backend

pytestmark = pytest.mark.contract

UUID = "GPU-contract-0"
OTHER = "GPU-contract-1"
TEMP = "DCGM_FI_DEV_GPU_TEMP"
UTIL = "DCGM_FI_DEV_GPU_UTIL"
T0 = datetime(2025, 7, 18, 20, 0, 0, tzinfo=UTC)
NOW = datetime(2025, 7, 18, 21, 0, 0, tzinfo=UTC)
HOST_A = GpuMetadata(hostname="host-a", model_name="H100")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def document(
    seconds: float,
    metric: str = TEMP,
    value: float = 40.0,
    gpu_uuid: str = UUID,
    instance: str | None = None,
    metadata: GpuMetadata = HOST_A,
) -> dict[str, Any]:
    point = Point(
        gpu_uuid=gpu_uuid,
        metric_name=metric,
        value=value,
        timestamp=at(seconds),
        labels_raw='gpu="0"',
        gpu_instance=instance,
    )
    return point_document(point, metadata, NOW)


def upsert(backend: Backend, *points: tuple[Point, GpuMetadata]) -> None:
    backend.writes.upsert_gpus(GpuUpdate.merge(points), NOW)


def point(seconds: float, instance: str | None = None, gpu_uuid: str = UUID) -> Point:
    return Point(
        gpu_uuid=gpu_uuid, metric_name=TEMP, value=1.0, timestamp=at(seconds), gpu_instance=instance
    )


# Writes


def test_ensure_indexes_makes_the_page_index_and_may_run_again(backend: Backend) -> None:
    backend.writes.ensure_indexes()
    backend.writes.ensure_indexes()
    assert "gpu_time_metric_instance" in backend.database["telemetry"].index_information()


def test_the_same_point_twice_is_stored_once_and_the_second_is_a_duplicate(
    backend: Backend,
) -> None:
    # when
    first = backend.writes.insert_points([document(0)])
    second = backend.writes.insert_points([document(0)])
    # then
    assert (first, second) == (["stored"], ["duplicate"])
    assert len(backend.reads.point_page(PointWindow(UUID), None, 10)) == 1


def test_a_batch_stores_the_new_points_and_names_each_duplicate(backend: Backend) -> None:
    backend.writes.insert_points([document(1)])
    outcomes = backend.writes.insert_points([document(0), document(1), document(2)])
    assert outcomes == ["stored", "duplicate", "stored"]
    assert len(backend.reads.point_page(PointWindow(UUID), None, 10)) == 3


def test_a_mig_instance_is_part_of_the_point_id_and_the_whole_gpu_keeps_three_keys(
    backend: Backend,
) -> None:
    # when: the whole GPU and two instances, same metric and time
    outcomes = backend.writes.insert_points(
        [document(0), document(0, instance="1"), document(0, instance="2")]
    )
    # then
    assert outcomes == ["stored"] * 3
    ids = [stored["_id"] for stored in backend.database["telemetry"].find()]
    assert sorted(list(key) for key in ids) == [
        ["gpu_uuid", "metric_name", "timestamp"],
        ["gpu_uuid", "metric_name", "timestamp", "gpu_instance"],
        ["gpu_uuid", "metric_name", "timestamp", "gpu_instance"],
    ]
    assert backend.writes.insert_points([document(0, instance="2")]) == ["duplicate"]


def test_gpu_upserts_widen_first_and_last_seen_and_keep_the_metadata_given(
    backend: Backend,
) -> None:
    # given
    upsert(backend, (point(10), HOST_A))
    # when: an earlier and a later point, the later one without metadata
    upsert(backend, (point(5), HOST_A), (point(20), GpuMetadata()))
    upsert(backend, (point(15), GpuMetadata()))
    # then
    gpu = backend.reads.find_gpu(UUID)
    assert gpu is not None
    assert (gpu["first_seen"], gpu["last_seen"]) == (at(5), at(20))
    assert (gpu["hostname"], gpu["model_name"]) == ("host-a", "H100")
    assert "mig_instances" not in gpu


def test_gpu_upserts_record_each_mig_instance_with_its_profile_and_span(
    backend: Backend,
) -> None:
    # given
    profile = GpuMetadata(hostname="host-a", gpu_instance_profile="1g.10gb")
    # when: instance "1" twice (the second without profile), and an id with a dot
    upsert(backend, (point(10, "1"), profile), (point(12, "a.b"), HOST_A))
    upsert(backend, (point(30, "1"), HOST_A))
    # then
    gpu = backend.reads.find_gpu(UUID)
    assert gpu is not None
    assert gpu["mig_instances"] == {
        "1": {"profile": "1g.10gb", "first_seen": at(10), "last_seen": at(30)},
        "a.b": {"first_seen": at(12), "last_seen": at(12)},
    }
    assert "gpu_instance_profile" not in gpu
    stored = backend.database["gpus"].find_one({"_id": UUID})
    assert stored is not None and set(stored["mig_instances"]) == {"1", "a%2Eb"}


def test_rejected_messages_are_kept_with_their_reason(backend: Backend) -> None:
    backend.writes.ensure_indexes()
    backend.writes.record_rejected([RejectedMessage("no gpu_uuid", "invalid_point", "m-1", "{}")])
    [kept] = backend.database["rejected"].find()
    assert (kept["reason"], kept["kind"], kept["message_id"]) == (
        "no gpu_uuid",
        "invalid_point",
        "m-1",
    )


# Reads


def test_gpu_pages_follow_the_uuid_order_filters_and_counts(backend: Backend) -> None:
    # given
    host_b = GpuMetadata(hostname="host-b", model_name="H100")
    upsert(
        backend,
        *[
            (point(0, gpu_uuid=f"GPU-{index}"), HOST_A if index % 2 else host_b)
            for index in range(5)
        ],
    )
    # when
    first = backend.reads.gpu_page(None, None, None, 2)
    rest = backend.reads.gpu_page(None, None, first[-1]["_id"], 10)
    on_a = backend.reads.gpu_page("host-a", "H100", None, 10)
    # then
    assert [gpu["_id"] for gpu in first + rest] == [f"GPU-{index}" for index in range(5)]
    assert [gpu["_id"] for gpu in on_a] == ["GPU-1", "GPU-3"]
    assert backend.reads.count_gpus("host-a", None) == 2
    assert backend.reads.count_gpus(None, "A100") == 0
    assert backend.reads.count_gpus(None, None) == 5


def test_a_gpu_is_found_by_uuid_and_an_unknown_one_is_not(backend: Backend) -> None:
    upsert(backend, (point(0), HOST_A))
    assert backend.reads.gpu_exists(UUID)
    assert not backend.reads.gpu_exists(OTHER)
    assert backend.reads.find_gpu(OTHER) is None


def test_latest_values_are_per_series_newest_first_whole_gpu_before_its_instances(
    backend: Backend,
) -> None:
    # given
    backend.writes.insert_points(
        [
            document(0, TEMP, 40.0),
            document(9, TEMP, 49.0),
            document(5, TEMP, 55.0, instance="2"),
            document(1, UTIL, 10.0),
            document(3, TEMP, 33.0, gpu_uuid=OTHER),
        ]
    )
    # when
    latest = backend.reads.latest_values(UUID)
    # then
    assert [(row.metric_name, row.gpu_instance, row.value, row.timestamp) for row in latest] == [
        (TEMP, None, 49.0, at(9)),
        (TEMP, "2", 55.0, at(5)),
        (UTIL, None, 10.0, at(1)),
    ]
    assert backend.reads.latest_values("GPU-none") == []


def test_point_pages_continue_strictly_after_their_key_across_instance_ties(
    backend: Backend,
) -> None:
    # given: at each second the whole GPU and two instances, over two metrics
    backend.writes.insert_points(
        [
            document(second, metric, float(second), instance=instance)
            for second in range(3)
            for metric in (TEMP, UTIL)
            for instance in (None, "1", "2")
        ]
    )
    expected = [
        (at(second), metric, instance)
        for second in range(3)
        for metric in (TEMP, UTIL)
        for instance in (None, "1", "2")
    ]
    # when: pages of 4, no more pages than points (a page that does not move on fails)
    seen: list[tuple[datetime, str, str | None]] = []
    after: PageAfter | None = None
    for _ in expected:
        page = backend.reads.point_page(PointWindow(UUID), after, 4)
        if not page:
            break
        seen.extend((row.timestamp, row.metric_name, row.gpu_instance) for row in page)
        last = page[-1]
        after = PageAfter(last.timestamp, last.metric_name, last.gpu_instance or "")
    # then: every point once, in (time, metric, instance) order, the whole GPU first
    assert seen == expected


def test_point_pages_filter_by_metric_instance_and_an_inclusive_window(backend: Backend) -> None:
    # given
    backend.writes.insert_points(
        [document(second, metric) for second in range(6) for metric in (TEMP, UTIL)]
        + [document(second, TEMP, instance="1") for second in range(6)]
    )
    # when
    window = PointWindow(UUID, (TEMP,), None, at(1), at(3))
    only_instance = PointWindow(UUID, (), "1", None, None)
    # then
    rows = backend.reads.point_page(window, None, 100)
    assert [(row.timestamp, row.gpu_instance) for row in rows] == [
        (at(1), None),
        (at(1), "1"),
        (at(2), None),
        (at(2), "1"),
        (at(3), None),
        (at(3), "1"),
    ]
    assert {row.metric_name for row in rows} == {TEMP}
    assert [row.value for row in rows][:1] == [40.0]
    assert {row.gpu_instance for row in backend.reads.point_page(only_instance, None, 100)} == {"1"}
    assert backend.reads.point_page(PointWindow(OTHER), None, 100) == []


def test_stored_points_keep_their_parsed_labels(backend: Backend) -> None:
    backend.writes.insert_points([document(0)])
    [row] = backend.reads.point_page(PointWindow(UUID), None, 10)
    assert row.labels == {"gpu": "0"}


# Not on mongomock: it lacks date arithmetic ($toLong of a date), which bucket pages use.
@pytest.mark.parametrize("backend", SERVER_BACKENDS, indirect=True)
def test_bucket_pages_summarise_each_series_per_step_and_continue_after_their_key(
    backend: Backend,
) -> None:
    # given: one value a second for 10 s, the whole GPU and instance "1"
    backend.writes.insert_points(
        [document(second, value=float(second)) for second in range(10)]
        + [document(second, value=100.0, instance="1") for second in range(10)]
    )
    window = PointWindow(UUID, (TEMP,), None, at(0), at(9))
    # when: 5 s buckets, a page of 3 then the rest
    first = backend.reads.bucket_page(window, 5_000, "avg", None, 3)
    last = first[-1]
    after = PageAfter(at((last.start_ms - epoch_ms(T0)) / 1000), last.metric_name, "")
    rest = backend.reads.bucket_page(window, 5_000, "avg", after, 10)
    # then
    start = epoch_ms(T0)
    assert [(b.start_ms - start, b.gpu_instance, b.value, b.points) for b in first + rest] == [
        (0, None, 2.0, 5),
        (0, "1", 100.0, 5),
        (5_000, None, 7.0, 5),
        (5_000, "1", 100.0, 5),
    ]
    assert [b.value for b in backend.reads.bucket_page(window, 5_000, "last", None, 10)] == [
        4.0,
        100.0,
        9.0,
        100.0,
    ]


def test_points_written_since_a_moment_are_counted(backend: Backend) -> None:
    backend.writes.insert_points([document(0), document(1)])
    assert backend.reads.count_points_since(NOW) == 2
    assert backend.reads.count_points_since(NOW + timedelta(seconds=1)) == 0


# Errors: an unreachable server is the project's storage error, in one line


def unreachable(settings: Settings) -> Settings:
    uri = f"mongodb://127.0.0.1:{free_port()}/?retryWrites=false"
    return settings.model_copy(update={"mongodb_uri": uri, "mongo_timeout_ms": 300})


def test_a_write_to_an_unreachable_server_is_storage_unavailable_in_one_line(
    settings: Settings,
) -> None:
    store = open_store(unreachable(settings))
    try:
        with pytest.raises(StorageUnavailable) as raised:
            store.insert_points([document(0)])
    finally:
        store.close()
    assert str(raised.value).startswith("creating indexes: ")
    assert "\n" not in str(raised.value)
    assert "Topology Description" not in str(raised.value)


@pytest.mark.parametrize("read", ["ping", "point_page", "latest_values"])
def test_a_read_of_an_unreachable_server_is_storage_unavailable_in_one_line(
    settings: Settings, read: str
) -> None:
    reads = open_reader(unreachable(settings))
    calls: dict[str, Callable[[], object]] = {
        "ping": reads.ping,
        "point_page": lambda: reads.point_page(PointWindow(UUID), None, 10),
        "latest_values": lambda: reads.latest_values(UUID),
    }
    try:
        with pytest.raises(StorageUnavailable) as raised:
            calls[read]()
    finally:
        reads.close()
    assert "\n" not in str(raised.value)
    assert "Topology Description" not in str(raised.value)


def test_a_probe_of_an_unreachable_server_gives_up_within_its_own_time_out(
    settings: Settings,
) -> None:
    # given: a URI asking for 30 s, which the probe's 300 ms overrides
    probe = MongoProbe(
        f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=30000", 300, "t"
    )
    started = time.monotonic()
    # when
    try:
        with pytest.raises(StorageUnavailable) as raised:
            probe.ping()
    finally:
        probe.close()
    # then
    assert time.monotonic() - started < 5
    assert str(raised.value).startswith("pinging the database: ")
