"""The read API against a real SecantusDB server: windows, order, pages, downsampling, errors."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pymongo.database import Database

from telemetry.api import ApiServer, create_app
from telemetry.api.params import format_time
from telemetry.store.mongo import MongoTelemetryStore
from telemetry.worker.ingest import DecodedMessage, OutcomeKind, ingest
from tests.fakes import UncachedGpus
from tests.integration.api_support import (
    BASE,
    REPO,
    api_settings,
    create_indexes,
    gpu_doc,
    point_doc,
    series,
    store,
    wait_until,
)

OPENAPI_JSON = REPO / "docs" / "openapi.json"
GPU = "GPU-0000-aaaa"
METRICS = ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_POWER_USAGE")

MakeApi = Callable[..., TestClient]


@pytest.fixture
def make_api(mongo_server: Any, database: Database[Any]) -> Iterator[MakeApi]:
    """Build a started API (lifespan run) on this test's database, with settings overrides."""
    create_indexes(database)
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        settings = api_settings(mongo_server.uri, database.name, **overrides)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def api(make_api: MakeApi) -> TestClient:
    """The API with default settings (no token)."""
    return make_api()


def t(seconds: float) -> datetime:
    """``BASE`` plus some seconds."""
    return BASE + timedelta(seconds=seconds)


def iso(seconds: float) -> str:
    return format_time(t(seconds))


def telemetry(api: TestClient, uuid: str = GPU, **params: Any) -> dict[str, Any]:
    response = api.get(f"/api/v1/gpus/{uuid}/telemetry", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def all_pages(api: TestClient, path: str, field: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of every page of ``path``."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10_000):
        response = api.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body[field])
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pages never ended")


# GPUs


def test_gpu_list_pages_filters_and_shape(api: TestClient, database: Database[Any]) -> None:
    uuids = [f"GPU-{index:02d}" for index in range(7)]
    database["gpus"].insert_many(
        [
            gpu_doc(
                uuid,
                "host-a" if index < 4 else "host-b",
                t(0),
                t(index),
                gpu_index=index % 4,
                model_name="NVIDIA A100" if index == 6 else "NVIDIA H100 80GB HBM3",
                device=f"nvidia{index % 4}",
            )
            for index, uuid in enumerate(reversed(uuids))
        ]
    )
    first = api.get("/api/v1/gpus", params={"limit": 3}).json()
    assert first["total"] == 7
    assert [gpu["uuid"] for gpu in first["gpus"]] == uuids[:3]
    assert first["next_cursor"]
    listed = all_pages(api, "/api/v1/gpus", "gpus", limit=3)
    assert [gpu["uuid"] for gpu in listed] == uuids

    # The shape: every field of the issue, times RFC 3339 UTC, absent metadata null.
    gpu = listed[0]
    assert set(gpu) == {
        "uuid",
        "hostname",
        "device",
        "gpu_index",
        "model_name",
        "container",
        "pod",
        "namespace",
        "pci_bus_id",
        "driver_version",
        "first_seen",
        "last_seen",
        "mig_instances",
    }
    assert gpu["first_seen"] == "2025-07-18T20:00:00.000Z"
    assert gpu["pod"] is None
    assert gpu["mig_instances"] == []

    on_b = api.get("/api/v1/gpus", params={"hostname": "host-b"}).json()
    assert on_b["total"] == 3
    assert {gpu["hostname"] for gpu in on_b["gpus"]} == {"host-b"}
    a100 = api.get("/api/v1/gpus", params={"model_name": "NVIDIA A100"}).json()
    assert [gpu["uuid"] for gpu in a100["gpus"]] == ["GPU-00"]
    both = api.get("/api/v1/gpus", params={"hostname": "host-a", "model_name": "NVIDIA A100"})
    assert both.json() == {"gpus": [], "total": 0, "next_cursor": None}


def test_one_gpu_and_its_latest_metrics(api: TestClient, database: Database[Any]) -> None:
    store(database, series(GPU, METRICS, seconds=30))
    gpu = api.get(f"/api/v1/gpus/{GPU}").json()
    assert gpu["uuid"] == GPU
    assert (gpu["first_seen"], gpu["last_seen"]) == (iso(0), iso(29))

    metrics = api.get(f"/api/v1/gpus/{GPU}/metrics").json()
    assert metrics["gpu_uuid"] == GPU
    assert [metric["metric_name"] for metric in metrics["metrics"]] == sorted(METRICS)
    for index, metric in enumerate(METRICS):
        latest = next(item for item in metrics["metrics"] if item["metric_name"] == metric)
        assert latest["timestamp"] == iso(29)
        assert latest["value"] == (29 * 7 + index * 13) % 101

    for path in (f"/api/v1/gpus/{GPU}x", f"/api/v1/gpus/{GPU}x/metrics"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


# Points


def test_window_includes_both_ends_and_is_ordered(api: TestClient, database: Database[Any]) -> None:
    store(database, series(GPU, METRICS, seconds=10))
    body = telemetry(api, start_time=iso(2), end_time=iso(5))
    assert body["gpu_uuid"] == GPU
    assert body["next_cursor"] is None
    keys = [(point["timestamp"], point["metric_name"]) for point in body["points"]]
    # Both ends included: 2, 3, 4 and 5 seconds, each with every metric.
    assert keys == [(iso(second), metric) for second in range(2, 6) for metric in sorted(METRICS)]
    assert set(body["points"][0]) == {"metric_name", "value", "timestamp", "labels"}
    assert body["points"][0]["labels"] == {"gpu": "0"}

    # A window of one instant holds exactly the points of that instant.
    instant = telemetry(api, start_time=iso(7), end_time=iso(7))
    assert {point["timestamp"] for point in instant["points"]} == {iso(7)}
    assert len(instant["points"]) == len(METRICS)

    # metric_name repeats; offsets and fractions are converted to UTC.
    two = telemetry(
        api,
        metric_name=[METRICS[2], METRICS[0]],
        start_time="2025-07-18T22:00:03.000+02:00",
        end_time="2025-07-18T20:00:03.999Z",
    )
    assert [(p["timestamp"], p["metric_name"]) for p in two["points"]] == [
        (iso(3), METRICS[0]),
        (iso(3), METRICS[2]),
    ]
    # Without bounds: everything, oldest first.
    everything = all_pages(api, f"/api/v1/gpus/{GPU}/telemetry", "points", limit=7)
    assert len(everything) == 10 * len(METRICS)
    assert [(p["timestamp"], p["metric_name"]) for p in everything] == sorted(
        (p["timestamp"], p["metric_name"]) for p in everything
    )


def test_pages_stay_correct_while_points_arrive(api: TestClient, database: Database[Any]) -> None:
    """Keyset pages: points written between pages, ahead of the cursor, arrive exactly once."""
    store(database, series(GPU, METRICS, seconds=100))
    expected = {(iso(k), metric) for k in range(100) for metric in METRICS}
    seen: list[tuple[str, str]] = []
    cursor = None
    written = 0
    while True:
        params: dict[str, Any] = {"limit": 40}
        if cursor:
            params["cursor"] = cursor
        body = telemetry(api, **params)
        page = [(point["timestamp"], point["metric_name"]) for point in body["points"]]
        seen.extend(page)
        cursor = body["next_cursor"]
        if cursor is None:
            break
        # Meanwhile the collector stores more: newer points, and one at the very time of
        # the page's last point that sorts after it (a metric name later in the alphabet).
        last_time = datetime.fromisoformat(page[-1][0])
        late_metric = f"ZZZ_{written}"
        newer = [point_doc(GPU, metric, t(100 + written), 1.0) for metric in METRICS]
        newer.append(point_doc(GPU, late_metric, last_time, 2.0))
        store(database, newer)
        expected |= {(iso(100 + written), metric) for metric in METRICS}
        expected.add((page[-1][0], late_metric))
        written += 1
    assert written > 5
    assert len(seen) == len(set(seen)), "a point was repeated"
    assert set(seen) == expected, f"skipped: {sorted(expected - set(seen))[:5]}"
    assert seen == sorted(seen)


def test_limit_bounds_a_page(api: TestClient, database: Database[Any]) -> None:
    store(database, series(GPU, METRICS, seconds=50))
    body = telemetry(api, limit=1)
    assert len(body["points"]) == 1
    default = telemetry(api)
    # 150 points are fewer than the default page of 1,000: one page.
    assert len(default["points"]) == 150
    assert default["next_cursor"] is None
    exact = telemetry(api, limit=150)
    assert exact["next_cursor"] is None, "a full last page must not promise another"


# MIG instances


def ingest_points(
    mongo_server: Any,
    database: Database[Any],
    messages: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    """Messages through the worker's write path into this test's database."""
    settings = api_settings(mongo_server.uri, database.name)
    writer = MongoTelemetryStore(database, settings)
    decoded = [
        DecodedMessage(f"m-{index}", (), {"point": point, "metadata": metadata})
        for index, (point, metadata) in enumerate(messages)
    ]
    outcomes = ingest(writer, decoded, UncachedGpus()).outcomes
    assert {outcome.kind for outcome in outcomes} == {OutcomeKind.STORED}, outcomes


def test_mig_instances_are_filtered_shown_and_listed(
    api: TestClient, mongo_server: Any, database: Database[Any]
) -> None:
    # given: a GPU's whole-GPU series and two MIG instances', through the worker's write path
    metadata = {"hostname": "host-a", "pci_bus_id": "00000000:3B:00.0", "driver_version": "535"}
    profiles = {"1": "1g.10gb", "2": "3g.40gb"}
    messages = []
    for second in range(4):
        for instance in (None, "1", "2"):
            point: dict[str, Any] = {
                "gpu_uuid": GPU,
                "metric_name": METRICS[0],
                "value": second * 10 + int(instance or 0),
                "timestamp": iso(second),
            }
            extra = {}
            if instance is not None:
                point["gpu_instance"] = instance
                extra["gpu_instance_profile"] = profiles[instance]
            messages.append((point, {**metadata, **extra}))
    ingest_points(mongo_server, database, messages)

    # then: the GPU lists its instances, each with its profile and span
    gpu = api.get(f"/api/v1/gpus/{GPU}").json()
    assert (gpu["pci_bus_id"], gpu["driver_version"]) == ("00000000:3B:00.0", "535")
    assert gpu["mig_instances"] == [
        {"gpu_instance": "1", "profile": "1g.10gb", "first_seen": iso(0), "last_seen": iso(3)},
        {"gpu_instance": "2", "profile": "3g.40gb", "first_seen": iso(0), "last_seen": iso(3)},
    ]
    # the latest value of each (metric, instance), none overwriting another
    latest = api.get(f"/api/v1/gpus/{GPU}/metrics").json()["metrics"]
    assert latest == [
        {"metric_name": METRICS[0], "value": 30.0, "timestamp": iso(3)},
        {"metric_name": METRICS[0], "gpu_instance": "1", "value": 31.0, "timestamp": iso(3)},
        {"metric_name": METRICS[0], "gpu_instance": "2", "value": 32.0, "timestamp": iso(3)},
    ]
    # every point, the whole GPU's first at each time, each instance's marked
    body = telemetry(api)
    assert [(p["timestamp"], p.get("gpu_instance"), p["value"]) for p in body["points"]] == [
        (iso(second), instance, second * 10 + int(instance or 0))
        for second in range(4)
        for instance in (None, "1", "2")
    ]
    assert set(body["points"][0]) == {"metric_name", "value", "timestamp", "labels"}
    # one instance only
    two = telemetry(api, instance="2")
    assert [(p["gpu_instance"], p["value"]) for p in two["points"]] == [
        ("2", second * 10 + 2.0) for second in range(4)
    ]
    assert telemetry(api, instance="9")["points"] == []
    # downsampling never mixes instances, and filters by one too
    params = {"start_time": iso(0), "end_time": iso(3), "step": "1m", "agg": "max"}
    buckets = telemetry(api, **params)["points"]
    assert [(p.get("gpu_instance"), p["value"], p["count"]) for p in buckets] == [
        (None, 30.0, 4),
        ("1", 31.0, 4),
        ("2", 32.0, 4),
    ]
    one = telemetry(api, instance="1", **params)["points"]
    assert [(p["gpu_instance"], p["value"]) for p in one] == [("1", 31.0)]
    # a cursor continues only a query of the same instance
    cursor = telemetry(api, instance="1", limit=1)["next_cursor"]
    other = api.get(
        f"/api/v1/gpus/{GPU}/telemetry", params={"instance": "2", "limit": 1, "cursor": cursor}
    )
    assert other.json()["error"] == "invalid_cursor"


def test_pages_split_inside_one_time_and_metric_neither_skip_nor_repeat(
    api: TestClient, database: Database[Any]
) -> None:
    """Instances share (timestamp, metric_name): the cursor also holds the instance."""
    # given: the whole GPU and five instances ("10" sorts between "1" and "2" as text)
    instances = (None, "1", "10", "2", "3", "7")
    store(
        database,
        [
            point_doc(GPU, metric, t(second), second, gpu_instance=instance)
            for second in range(10)
            for metric in METRICS[:2]
            for instance in instances
        ],
    )
    expected = sorted(
        (iso(second), metric, instance or "")
        for second in range(10)
        for metric in METRICS[:2]
        for instance in instances
    )
    # when: pages whose sizes do not divide a (timestamp, metric_name) run of six
    for limit in (1, 4, 5, 7, 11):
        got = all_pages(api, f"/api/v1/gpus/{GPU}/telemetry", "points", limit=limit)
        keys = [(p["timestamp"], p["metric_name"], p.get("gpu_instance", "")) for p in got]
        # then
        assert keys == expected, limit
    # the same with downsampled buckets, one per (metric, instance) per bucket
    params = {"start_time": iso(0), "end_time": iso(9), "step": "5s", "agg": "last"}
    buckets = all_pages(api, f"/api/v1/gpus/{GPU}/telemetry", "points", limit=4, **params)
    keys = [(p["timestamp"], p["metric_name"], p.get("gpu_instance", "")) for p in buckets]
    assert keys == sorted(
        (iso(start), metric, instance or "")
        for start in (0, 5)
        for metric in METRICS[:2]
        for instance in instances
    )
    assert {p["count"] for p in buckets} == {5}


def test_an_instance_arriving_at_the_cursor_time_after_it_is_not_skipped(
    api: TestClient, database: Database[Any]
) -> None:
    # given: two instances of one metric at each of three times
    store(
        database,
        [point_doc(GPU, METRICS[0], t(k), k, gpu_instance=i) for k in range(3) for i in "13"],
    )
    first = telemetry(api, limit=3)
    assert [(p["timestamp"], p["gpu_instance"]) for p in first["points"]] == [
        (iso(0), "1"),
        (iso(0), "3"),
        (iso(1), "1"),
    ]
    # when: at the page's last (time, metric), an instance sorting after it and one before
    store(
        database,
        [
            point_doc(GPU, METRICS[0], t(1), 9.0, gpu_instance="2"),
            point_doc(GPU, METRICS[0], t(1), 9.0, gpu_instance="0"),
        ],
    )
    rest = telemetry(api, cursor=first["next_cursor"])
    # then: the one after the cursor is on the next page; the one behind it is not
    assert [(p["timestamp"], p["gpu_instance"]) for p in rest["points"]] == [
        (iso(1), "2"),
        (iso(1), "3"),
        (iso(2), "1"),
        (iso(2), "3"),
    ]


# Downsampling


def expected_buckets(
    points: list[dict[str, Any]], start: datetime, end: datetime, step_s: int, agg: str
) -> list[tuple[str, str, float, int]]:
    """Downsampling computed here, independently: epoch-aligned buckets, in-window points."""
    step_ms = step_s * 1000
    groups: dict[tuple[int, str], list[tuple[datetime, float]]] = {}
    for point in points:
        if start <= point["timestamp"] <= end:
            millis = round(point["timestamp"].timestamp() * 1000)
            key = (millis - millis % step_ms, point["metric_name"])
            groups.setdefault(key, []).append((point["timestamp"], point["value"]))
    rows = []
    for (bucket, metric), members in sorted(groups.items()):
        values = [value for _, value in sorted(members)]
        value = {
            "avg": sum(values) / len(values),
            "min": min(values),
            "max": max(values),
            "last": values[-1],
        }[agg]
        when = format_time(datetime.fromtimestamp(bucket / 1000, UTC))
        rows.append((when, metric, value, len(values)))
    return rows


@pytest.mark.parametrize("agg", ["avg", "min", "max", "last"])
@pytest.mark.parametrize("step", ["60s", "7s"])
def test_downsampling_matches_a_computation(
    api: TestClient, database: Database[Any], agg: str, step: str
) -> None:
    rng = random.Random(13)
    points = []
    moment = t(3.25)
    # Irregular times (0.2 s to 4 s apart, with milliseconds) and random values for 10 minutes.
    while moment < t(600):
        for metric in METRICS[:2]:
            if rng.random() < 0.9:
                points.append(point_doc(GPU, metric, moment, round(rng.uniform(-50, 400), 3)))
        moment += timedelta(milliseconds=rng.randint(200, 4000))
    store(database, points)
    # A window that starts and ends inside buckets, so the edge buckets are partial.
    start, end = t(31.5), t(547.25)
    step_s = int(step[:-1])
    expected = expected_buckets(points, start, end, step_s, agg)
    params = {"start_time": format_time(start), "end_time": format_time(end), "step": step}
    one_page = telemetry(api, agg=agg, limit=10_000, **params)
    assert (one_page["step"], one_page["agg"]) == (step if step != "60s" else "1m", agg)
    got = [(p["timestamp"], p["metric_name"], p["value"], p["count"]) for p in one_page["points"]]
    assert [row[:2] for row in got] == [row[:2] for row in expected]
    assert [row[3] for row in got] == [row[3] for row in expected]
    for (_, _, value, _), (_, _, want, _) in zip(got, expected, strict=True):
        assert math.isclose(value, want, rel_tol=1e-9, abs_tol=1e-9)
    assert all(point["labels"] == {} for point in one_page["points"])
    # The same buckets come back through small pages.
    paged = all_pages(api, f"/api/v1/gpus/{GPU}/telemetry", "points", agg=agg, limit=5, **params)
    assert [(p["timestamp"], p["metric_name"]) for p in paged] == [row[:2] for row in expected]


def test_downsampling_defaults_to_avg_and_filters_metrics(
    api: TestClient, database: Database[Any]
) -> None:
    store(database, series(GPU, METRICS, seconds=120))
    body = telemetry(api, start_time=iso(0), end_time=iso(119), step="1m", metric_name=METRICS[1])
    assert body["agg"] == "avg"
    assert [(p["timestamp"], p["metric_name"], p["count"]) for p in body["points"]] == [
        (iso(0), METRICS[1], 60),
        (iso(60), METRICS[1], 60),
    ]
    first_minute = [(k * 7 + 13) % 101 for k in range(60)]
    assert body["points"][0]["value"] == pytest.approx(sum(first_minute) / 60)


# Errors


BAD_TELEMETRY = [
    ({"start_time": "yesterday"}, "invalid_time"),
    ({"end_time": "2025-07-18"}, "invalid_time"),
    ({"start_time": "2025-07-18T20:00:00"}, "invalid_time"),  # no zone
    ({"start_time": "2025-02-30T20:00:00Z"}, "invalid_time"),
    ({"start_time": iso(10), "end_time": iso(5)}, "invalid_window"),
    ({"limit": 0}, "invalid_limit"),
    ({"limit": 10_001}, "invalid_limit"),
    ({"limit": "ten"}, "invalid_limit"),
    ({"step": "60x", "start_time": iso(0), "end_time": iso(60)}, "invalid_step"),
    ({"step": "0s", "start_time": iso(0), "end_time": iso(60)}, "invalid_step"),
    ({"step": "2d", "start_time": iso(0), "end_time": iso(60)}, "invalid_step"),
    ({"step": "60s", "agg": "median", "start_time": iso(0), "end_time": iso(60)}, "invalid_agg"),
    ({"agg": "max"}, "invalid_agg"),
    ({"step": "60s"}, "invalid_window"),
    ({"step": "1h", "start_time": iso(0), "end_time": iso(32 * 86_400)}, "window_too_large"),
    ({"cursor": "not-a-cursor"}, "invalid_cursor"),
    ({"start": iso(0)}, "unknown_parameter"),
    ({"metric_name": ""}, "invalid_parameter"),
    ({"instance": " "}, "invalid_parameter"),
    ({"instance": "1" * 65}, "invalid_parameter"),
]


@pytest.mark.parametrize(("params", "code"), BAD_TELEMETRY)
def test_bad_parameters_are_400_before_the_gpu_is_looked_up(
    api: TestClient, database: Database[Any], params: dict[str, Any], code: str
) -> None:
    store(database, series(GPU, METRICS, seconds=5))
    for uuid in (GPU, "GPU-never-stored"):
        response = api.get(f"/api/v1/gpus/{uuid}/telemetry", params=params)
        assert response.status_code == 400, response.text
        body = response.json()
        assert set(body) == {"error", "message"}
        assert body["error"] == code
        assert body["message"]
    # The same request, made valid, about the unknown GPU: now the 404.
    assert api.get("/api/v1/gpus/GPU-never-stored/telemetry").status_code == 404


def test_other_routes_check_parameters_first(api: TestClient) -> None:
    cases: list[tuple[str, dict[str, str], str]] = [
        ("/api/v1/gpus", {"limit": "1001"}, "invalid_limit"),
        ("/api/v1/gpus", {"limit": "0"}, "invalid_limit"),
        ("/api/v1/gpus", {"cursor": "eyJ4IjoxfQ"}, "invalid_cursor"),
        ("/api/v1/gpus", {"host": "a"}, "unknown_parameter"),
        ("/api/v1/gpus/GPU-unknown", {"verbose": "1"}, "unknown_parameter"),
        ("/api/v1/gpus/GPU-unknown/metrics", {"limit": "5"}, "unknown_parameter"),
    ]
    for path, params, code in cases:
        response = api.get(path, params=params)
        assert (response.status_code, response.json()["error"]) == (400, code), path
    assert api.get("/api/v1/nothing").json()["error"] == "not_found"


def test_a_cursor_only_continues_its_own_query(api: TestClient, database: Database[Any]) -> None:
    store(database, series(GPU, METRICS, seconds=20))
    cursor = telemetry(api, limit=5, metric_name=METRICS[0])["next_cursor"]
    assert cursor
    response = api.get(
        f"/api/v1/gpus/{GPU}/telemetry",
        params={"limit": 5, "metric_name": METRICS[1], "cursor": cursor},
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_cursor")
    gpu_cursor = api.get("/api/v1/gpus", params={"cursor": cursor})
    assert gpu_cursor.json()["error"] == "invalid_cursor"


def test_client_text_never_becomes_an_operator(api: TestClient, database: Database[Any]) -> None:
    store(database, series(GPU, METRICS, seconds=3))
    # Text that looks like operators is compared as text: it matches nothing.
    for hostname in ('{"$ne": null}', "$ne", "host-a' || '1'=='1"):
        body = api.get("/api/v1/gpus", params={"hostname": hostname}).json()
        assert body["total"] == 0, hostname
    assert api.get("/api/v1/gpus/$where/telemetry").status_code == 404
    assert api.get('/api/v1/gpus/{"$gt": ""}').status_code == 404
    filtered = telemetry(api, metric_name='{"$gt": ""}')
    assert filtered["points"] == []
    # PHP/Express-style operator keys are just unknown parameter names.
    response = api.get("/api/v1/gpus", params={"hostname[$ne]": "x"})
    assert response.json()["error"] == "unknown_parameter"


# Security, probes, spec


def test_token_guards_the_api_but_not_the_probes(
    make_api: MakeApi, database: Database[Any]
) -> None:
    store(database, series(GPU, METRICS, seconds=2))
    api = make_api(api_token="s3cret-token")
    for path in ("/api/v1/gpus", f"/api/v1/gpus/{GPU}", f"/api/v1/gpus/{GPU}/telemetry"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            response = api.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"] == "unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"
        good = api.get(path, headers={"Authorization": "Bearer s3cret-token"})
        assert good.status_code == 200, path
    # Without the token even a bad request learns nothing but 401.
    assert api.get("/api/v1/gpus", params={"limit": 0}).status_code == 401
    assert api.get("/healthz").status_code == 200
    assert api.get("/readyz").status_code == 200
    assert api.get("/dashboard/config.json").json()["token_required"] is True


def test_readyz_is_503_when_the_database_is_unreachable(make_api: MakeApi) -> None:
    api = make_api(mongodb_uri="mongodb://127.0.0.1:9/?retryWrites=false", mongo_timeout_ms=200)
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"] == "database_unavailable"
    listing = api.get("/api/v1/gpus")
    assert (listing.status_code, listing.json()["error"]) == (503, "database_unavailable")


def test_readyz_is_200_when_the_database_answers(api: TestClient) -> None:
    assert api.get("/readyz").json() == {"status": "ready"}


def test_committed_openapi_json_is_current(api: TestClient) -> None:
    """docs/openapi.json is what the app generates: `make openapi` rewrites it."""
    committed = json.loads(OPENAPI_JSON.read_text())
    assert committed == api.app.openapi(), "docs/openapi.json is stale: run `make openapi`"  # type: ignore[attr-defined]


def test_every_operation_and_parameter_is_described_with_an_example(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) >= {
        "/api/v1/gpus",
        "/api/v1/gpus/{uuid}",
        "/api/v1/gpus/{uuid}/metrics",
        "/api/v1/gpus/{uuid}/telemetry",
        "/healthz",
        "/readyz",
    }
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert operation.get("description"), f"{method} {path} has no description"
            for parameter in operation.get("parameters", []):
                where = f"{method} {path} {parameter['name']}"
                assert parameter.get("description"), f"{where} has no description"
                assert parameter.get("examples"), f"{where} has no example"
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "/docs" in api.get("/docs").text or api.get("/docs").status_code == 200


def test_dashboard_is_served_without_outside_resources(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert "http://" not in page.text and "https://" not in page.text
    script = api.get("/static/app.js")
    assert script.status_code == 200
    assert "https://" not in script.text.replace("http://www.w3.org/2000/svg", "")
    assert api.get("/static/style.css").status_code == 200
    config = api.get("/dashboard/config.json").json()
    assert config == {"api": "/api/v1", "stale_after_s": 300.0, "token_required": False}


# Running it


def test_api_server_thread_answers_over_http(mongo_server: Any, database: Database[Any]) -> None:
    store(database, series(GPU, METRICS, seconds=2))
    with ApiServer(api_settings(mongo_server.uri, database.name)) as server:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{server.url}/api/v1/gpus", timeout=10) as response:
            assert json.load(response)["total"] == 1


def test_serve_logs_its_url_and_serves(
    mongo_server: Any, database: Database[Any], tmp_path: Path
) -> None:
    """``serve`` as ``telemetry api`` runs it: a process that logs where it listens."""
    code = (
        "import logging, sys\n"
        "from telemetry.api import serve\n"
        "from telemetry.config import load_settings\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
        "serve(load_settings(), '127.0.0.1', 0)\n"
    )
    log = tmp_path / "api.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("API_", "MONGO"))}
    env.update(MONGODB_URI=mongo_server.uri, MONGODB_DB=database.name, PYTHONPATH=str(REPO))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            wait_until(lambda: "listening on http://" in log.read_text(), 30, "the URL log line")
            line = next(x for x in log.read_text().splitlines() if "listening on" in x)
            url = line.split("listening on ")[1].split()[0]
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
                assert json.load(response) == {"status": "ok"}
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert process.returncode in (0, -15), log.read_text()
