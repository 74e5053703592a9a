"""Skipping GPU upserts that would change nothing, with last_seen within the stated lag."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from telemetry.models import GpuMetadata, Point
from telemetry.observe.stats import Stats
from telemetry.store.gpucache import GpuCache
from telemetry.store.mongo import GpuUpdate, MongoTelemetryStore
from telemetry.worker.ingest import DecodedMessage, ingest
from telemetry.worker.recorder import Recorder

T0 = datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)


def point(seconds: float = 0, metric: str = "DCGM_FI_DEV_GPU_TEMP") -> Point:
    return Point(
        gpu_uuid="GPU-1", metric_name=metric, value=1.0, timestamp=T0 + timedelta(seconds=seconds)
    )


def update(seconds: float = 0, metadata: GpuMetadata | None = None) -> GpuUpdate:
    """What one point at ``seconds`` says of GPU-1."""
    [merged] = GpuUpdate.merge([(point(seconds), metadata or GpuMetadata())])
    return merged


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_unknown_gpu_needs_a_write_and_a_remembered_one_does_not() -> None:
    cache = GpuCache(lag_s=60)
    host = GpuMetadata(hostname="h1")
    assert cache.needs_write(update(0, host))
    cache.remember(update(0, host))
    assert not cache.needs_write(update(0, host))
    assert not cache.needs_write(update(0))


def test_changed_metadata_earlier_time_or_time_past_the_lag_need_a_write() -> None:
    cache = GpuCache(lag_s=60)
    cache.remember(update(0, GpuMetadata(hostname="h1")))
    assert cache.needs_write(update(0, GpuMetadata(hostname="h2")))
    assert cache.needs_write(update(0, GpuMetadata(pod="p")))
    assert cache.needs_write(update(-1))
    assert not cache.needs_write(update(60))
    assert cache.needs_write(update(60.5))


def test_entries_expire_so_a_lost_record_is_written_again() -> None:
    clock = Clock()
    cache = GpuCache(lag_s=60, ttl_s=300, clock=clock)
    cache.remember(update())
    clock.now = 299
    assert not cache.needs_write(update())
    clock.now = 301
    assert cache.needs_write(update())


def test_ingest_with_cache_writes_each_gpu_once_per_lag_window_and_last_seen_trails_by_at_most_it(
    mock_store: MongoTelemetryStore,
    stats: Stats,
    recorder: Recorder,
) -> None:
    # given: ten metrics at one instant, one message each, then the same 30 s and 90 s later
    cache = GpuCache(lag_s=60)
    metrics = [f"M{index}" for index in range(10)]
    for seconds in (0, 30, 90):
        for metric in metrics:
            body: dict[str, Any] = {
                "point": point(seconds, metric).wire(),
                "metadata": {"hostname": "h1"},
            }
            recorder.ingested(ingest(mock_store, [DecodedMessage("m", (), body)], cache))
    # then: one upsert at 0 s, none at 30 s (within the lag), one at 90 s
    assert stats.snapshot()["gpus_stored"] == 2
    assert stats.snapshot()["telemetry_stored"] == 30
    gpu = mock_store.database["gpus"].find_one({"_id": "GPU-1"})
    assert gpu is not None
    assert gpu["first_seen"] == T0
    assert gpu["last_seen"] == T0 + timedelta(seconds=90)


def test_a_merge_keeps_each_gpus_time_span_and_its_latest_metadata_field_by_field() -> None:
    first = GpuMetadata(hostname="h1", model_name="H100")
    moved = GpuMetadata(hostname="h2")
    other = point(2).model_copy(update={"gpu_uuid": "GPU-2"})
    updates = GpuUpdate.merge(
        [(point(5), first), (point(1), first), (other, moved), (point(9), moved), (point(3), first)]
    )
    assert [(u.gpu_uuid, u.fields, u.first_seen, u.last_seen) for u in updates] == [
        (
            "GPU-1",
            # h2 came after h1, and h1 after that again: the last one wins; the model stays.
            {"hostname": "h1", "model_name": "H100"},
            T0 + timedelta(seconds=1),
            T0 + timedelta(seconds=9),
        ),
        ("GPU-2", {"hostname": "h2"}, T0 + timedelta(seconds=2), T0 + timedelta(seconds=2)),
    ]
    [only] = GpuUpdate.merge([(point(4), first), (point(6), moved)])
    assert only.fields == {"hostname": "h2", "model_name": "H100"}
