"""Helpers for the read-API tests: stored documents in the collector's shapes, and settings.

Documents are written straight with pymongo in the shapes the store writes
(``telemetry`` and ``gpus``), so these tests depend on the stored format and
not on the worker code that produces it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo.database import Database

from telemetry.config import Settings, load_settings
from telemetry.dcgm import Row, read_dcgm_csv
from telemetry.store.mongo import POINT_PAGE_INDEX, POINT_PAGE_INDEX_NAME

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CSV = next((REPO / "telemetry" / "data").glob("dcgm_metrics_*.csv"))
BASE = datetime(2025, 7, 18, 20, 0, 0, tzinfo=UTC)


def wait_until(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``done`` until it holds; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.05)


def api_settings(uri: str, database: str, **overrides: Any) -> Settings:
    """Settings for an API on ``database`` of ``uri``; nothing read from the environment."""
    return load_settings(
        env={}, overrides={"mongodb_uri": uri, "mongodb_db": database, **overrides}
    )


def create_indexes(database: Database[Any]) -> None:
    """The store's indexes, as the worker creates them (the API's pages need them)."""
    database["telemetry"].create_index(POINT_PAGE_INDEX, name=POINT_PAGE_INDEX_NAME)
    database["gpus"].create_index("hostname", name="hostname")


def point_doc(
    gpu_uuid: str,
    metric_name: str,
    timestamp: datetime,
    value: float,
    hostname: str | None = "host-a",
    labels: dict[str, str] | None = None,
    gpu_instance: str | None = None,
) -> dict[str, Any]:
    """A ``telemetry`` document as the store writes it; a MIG instance's with ``gpu_instance``."""
    key: dict[str, Any] = {"gpu_uuid": gpu_uuid, "metric_name": metric_name, "timestamp": timestamp}
    document: dict[str, Any] = {
        "_id": key,
        "gpu_uuid": gpu_uuid,
        "metric_name": metric_name,
        "value": float(value),
        "timestamp": timestamp,
        "hostname": hostname,
        "ingested_at": datetime.now(UTC),
        "labels": labels if labels is not None else {"gpu": "0"},
    }
    if gpu_instance is not None:
        key["gpu_instance"] = gpu_instance
        document["gpu_instance"] = gpu_instance
    return document


def gpu_doc(
    uuid: str,
    hostname: str | None,
    first_seen: datetime,
    last_seen: datetime,
    gpu_index: int | None = 0,
    model_name: str | None = "NVIDIA H100 80GB HBM3",
    **extra: Any,
) -> dict[str, Any]:
    """A ``gpus`` document as the store upserts it; absent metadata is absent, not null."""
    document: dict[str, Any] = {
        "_id": uuid,
        "first_seen": first_seen,
        "last_seen": last_seen,
        "updated_at": datetime.now(UTC),
    }
    known = {"hostname": hostname, "gpu_index": gpu_index, "model_name": model_name, **extra}
    document.update({key: value for key, value in known.items() if value is not None})
    return document


def store(database: Database[Any], points: Iterable[dict[str, Any]]) -> None:
    """Insert points and upsert their GPUs (widening first/last seen) like the collector does."""
    documents = list(points)
    if documents:
        database["telemetry"].insert_many(documents, ordered=False)
    spans: dict[str, tuple[datetime, datetime, str | None]] = {}
    for document in documents:
        first, last, host = spans.get(
            document["gpu_uuid"], (document["timestamp"], document["timestamp"], None)
        )
        spans[document["gpu_uuid"]] = (
            min(first, document["timestamp"]),
            max(last, document["timestamp"]),
            document.get("hostname") or host,
        )
    for uuid, (first, last, host) in spans.items():
        database["gpus"].update_one(
            {"_id": uuid},
            {
                "$set": {"hostname": host, "updated_at": datetime.now(UTC)},
                "$min": {"first_seen": first},
                "$max": {"last_seen": last},
            },
            upsert=True,
        )


def series(
    gpu_uuid: str,
    metrics: Iterable[str],
    seconds: int,
    start: datetime = BASE,
    every_s: float = 1.0,
    hostname: str = "host-a",
) -> list[dict[str, Any]]:
    """Points of every metric at ``start + k * every_s`` for ``seconds`` seconds; values vary."""
    names = list(metrics)
    count = int(seconds / every_s)
    return [
        point_doc(
            gpu_uuid,
            name,
            start + timedelta(seconds=k * every_s),
            (k * 7 + index * 13) % 101,
            hostname,
        )
        for k in range(count)
        for index, name in enumerate(names)
    ]


def sample_documents(
    stamp: datetime, host_stamps: dict[str, datetime] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The bundled DCGM sample as the streamer sends it (``--timestamps now``), stored.

    Every row becomes a point stamped ``stamp`` (or its host's time in
    ``host_stamps``, to make some hosts stale), with its metadata in ``gpus``.
    """
    points: dict[tuple[str, str], dict[str, Any]] = {}
    gpus: dict[str, dict[str, Any]] = {}
    for row in read_dcgm_csv(SAMPLE_CSV):
        if not isinstance(row, Row):
            continue
        metadata = row.metadata.known()
        when = (host_stamps or {}).get(metadata.get("hostname", ""), stamp)
        labels = {"gpu": str(metadata.get("gpu_index", ""))}
        document = point_doc(
            row.point.gpu_uuid,
            row.point.metric_name,
            when,
            row.point.value,
            metadata.get("hostname"),
            labels,
        )
        points[(row.point.gpu_uuid, row.point.metric_name)] = document
        gpus[row.point.gpu_uuid] = gpu_doc(
            row.point.gpu_uuid,
            metadata.get("hostname"),
            when,
            when,
            metadata.get("gpu_index"),
            metadata.get("model_name"),
            device=metadata.get("device"),
        )
    return list(points.values()), list(gpus.values())
