"""MongoDB reads of the ``telemetry`` and ``gpus`` collections, for the read API and the demo.

Every query carries ``maxTimeMS``, so a request costs the server at most that
much work however it was phrased. Callers pass typed values (strings compared
for equality, datetimes, integers), always in the value position of a filter:
their text can never become a MongoDB operator or field name.

Pages are by key, not by offset. Points sort by ``(timestamp, metric_name,
gpu_instance)``, which is unique per GPU (it is the point's ``_id``; a point
of the whole GPU has no instance and sorts first), and a page continues
strictly after the key it is given, so points written meanwhile are neither
skipped nor repeated. The index that serves it is :data:`POINT_PAGE_INDEX`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database

from telemetry.config import Settings
from telemetry.models import epoch_ms
from telemetry.store.client import Client, open_client, ping
from telemetry.store.mongo import MIG_INSTANCES, instance_of_key
from telemetry.store.port import (
    Aggregation,
    Bucket,
    GpuDocument,
    LatestValue,
    PageAfter,
    PointWindow,
    StoredPoint,
)
from telemetry.store.translation import translated_errors

# The server-side time limit of one query, in milliseconds, unless the reader is told another.
DEFAULT_QUERY_TIME_LIMIT_MS = 10_000
ONE_MILLISECOND = timedelta(milliseconds=1)
# A point's MIG instance in aggregations: "" for the whole GPU, whose points have none,
# so it groups as a value of its own and sorts before every instance (see PageAfter).
INSTANCE_OR_WHOLE = {"$ifNull": ["$gpu_instance", ""]}
_AGG_OPERATORS = {"avg": "$avg", "min": "$min", "max": "$max", "last": "$last"}
_POINT_FIELDS = {
    "_id": 0,
    "metric_name": 1,
    "gpu_instance": 1,
    "value": 1,
    "timestamp": 1,
    "labels": 1,
}
_POINT_ORDER = [("timestamp", ASCENDING), ("metric_name", ASCENDING), ("gpu_instance", ASCENDING)]
READING = "reading"


class MongoTelemetryReader:
    """Reads the collector's ``telemetry`` and ``gpus`` collections; never writes."""

    def __init__(
        self, database: Database[dict[str, Any]], time_limit_ms: int = DEFAULT_QUERY_TIME_LIMIT_MS
    ) -> None:
        self._db = database
        self._time_limit_ms = time_limit_ms

    @property
    def _points(self) -> Collection[dict[str, Any]]:
        return self._db["telemetry"]

    @property
    def _gpus(self) -> Collection[dict[str, Any]]:
        return self._db["gpus"]

    def ping(self) -> None:
        """Return when the database answers now; raise StorageUnavailable saying why not."""
        ping(self._db.client)

    def close(self) -> None:
        """Close the client."""
        self._db.client.close()

    def gpu_page(
        self, hostname: str | None, model_name: str | None, after: str | None, limit: int
    ) -> list[GpuDocument]:
        """Up to ``limit`` GPUs by UUID, strictly after ``after``, matching the filters."""
        selector = _gpu_filter(hostname, model_name)
        if after is not None:
            selector["_id"] = {"$gt": after}
        with translated_errors(READING):
            found = list(
                self._gpus.find(selector)
                .sort("_id", ASCENDING)
                .limit(limit)
                .max_time_ms(self._time_limit_ms)
            )
        return [gpu_record(document) for document in found]

    def count_gpus(self, hostname: str | None, model_name: str | None) -> int:
        """How many GPUs match the filters."""
        with translated_errors(READING):
            return self._gpus.count_documents(
                _gpu_filter(hostname, model_name), maxTimeMS=self._time_limit_ms
            )

    def find_gpu(self, uuid: str) -> GpuDocument | None:
        """One GPU's record, or None."""
        with translated_errors(READING):
            found = self._gpus.find_one({"_id": uuid}, max_time_ms=self._time_limit_ms)
        return None if found is None else gpu_record(found)

    def gpu_exists(self, uuid: str) -> bool:
        """Whether a GPU's record exists, reading no more than its key."""
        with translated_errors(READING):
            found = self._gpus.find_one(
                {"_id": uuid}, projection={"_id": 1}, max_time_ms=self._time_limit_ms
            )
        return found is not None

    def latest_values(self, uuid: str) -> list[LatestValue]:
        """Each series of a GPU with its newest value, in one aggregation: by metric, then
        instance, the whole GPU's first."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"gpu_uuid": uuid}},
            {"$sort": {"timestamp": -1}},
            {
                "$group": {
                    "_id": {"m": "$metric_name", "i": INSTANCE_OR_WHOLE},
                    "value": {"$first": "$value"},
                    "timestamp": {"$first": "$timestamp"},
                }
            },
            {"$sort": {"_id.m": 1, "_id.i": 1}},
        ]
        with translated_errors(READING):
            rows = list(self._points.aggregate(pipeline, maxTimeMS=self._time_limit_ms))
        return [
            LatestValue(row["_id"]["m"], row["_id"]["i"] or None, row["value"], row["timestamp"])
            for row in rows
        ]

    def point_page(
        self, window: PointWindow, after: PageAfter | None, limit: int
    ) -> list[StoredPoint]:
        """Up to ``limit`` points in (timestamp, metric_name, gpu_instance) order."""
        selector = window_filter(window, after.timestamp if after else None)
        if after is not None:
            # Strictly after the key. A whole-GPU point has no gpu_instance, which no
            # $gt matches, and every instance id is $gt "": the whole GPU sorts first.
            selector["$or"] = [
                {"timestamp": {"$gt": after.timestamp}},
                {"timestamp": after.timestamp, "metric_name": {"$gt": after.metric_name}},
                {
                    "timestamp": after.timestamp,
                    "metric_name": after.metric_name,
                    "gpu_instance": {"$gt": after.gpu_instance},
                },
            ]
        with translated_errors(READING):
            documents = list(
                self._points.find(selector, _POINT_FIELDS)
                .sort(_POINT_ORDER)
                .limit(limit)
                .max_time_ms(self._time_limit_ms)
            )
        return [
            StoredPoint(
                document["metric_name"],
                document.get("gpu_instance"),
                document["value"],
                document["timestamp"],
                document.get("labels"),
            )
            for document in documents
        ]

    def bucket_page(
        self,
        window: PointWindow,
        step_ms: int,
        agg: Aggregation,
        after: PageAfter | None,
        limit: int,
    ) -> list[Bucket]:
        """Up to ``limit`` buckets of ``step_ms``, in (start, metric_name, gpu_instance) order."""
        pipeline = bucket_pipeline(window_filter(window, None), step_ms, agg, after, limit)
        with translated_errors(READING):
            rows = list(self._points.aggregate(pipeline, maxTimeMS=self._time_limit_ms))
        return [
            Bucket(row["_id"]["m"], row["_id"]["i"] or None, row["_id"]["b"], row["v"], row["n"])
            for row in rows
        ]

    def count_points_since(self, ingested_since: datetime) -> int:
        """How many points were written at or after ``ingested_since``."""
        with translated_errors(READING):
            return self._points.count_documents(
                {"ingested_at": {"$gte": ingested_since}}, maxTimeMS=self._time_limit_ms
            )


def open_reader(
    settings: Settings, time_limit_ms: int = DEFAULT_QUERY_TIME_LIMIT_MS
) -> MongoTelemetryReader:
    """A reader on the settings' database; its client connects lazily."""
    client: Client = open_client(
        settings.mongodb_uri, timeout_ms=settings.mongo_timeout_ms, app_name="telemetry-api"
    )
    return MongoTelemetryReader(client[settings.mongodb_db], time_limit_ms)


def gpu_record(document: dict[str, Any]) -> GpuDocument:
    """A ``gpus`` document with its ``mig_instances`` keyed by instance id again
    (field names escape ``.``, ``$`` and ``%``: :func:`instance_key`)."""
    instances = document.get(MIG_INSTANCES)
    if isinstance(instances, dict):
        document[MIG_INSTANCES] = {
            instance_of_key(str(key)): entry for key, entry in instances.items()
        }
    return document


def _gpu_filter(hostname: str | None, model_name: str | None) -> dict[str, Any]:
    selector: dict[str, Any] = {}
    if hostname is not None:
        selector["hostname"] = hostname
    if model_name is not None:
        selector["model_name"] = model_name
    return selector


def window_filter(window: PointWindow, lower: datetime | None) -> dict[str, Any]:
    """The window's filter, both ends included; ``lower`` raises the start to a page's key."""
    selector: dict[str, Any] = {"gpu_uuid": window.gpu_uuid}
    if window.metric_names:
        selector["metric_name"] = {"$in": list(window.metric_names)}
    if window.gpu_instance is not None:
        selector["gpu_instance"] = window.gpu_instance
    bounds: dict[str, datetime] = {}
    start = window.start
    if lower is not None and (start is None or lower > start):
        start = lower
    if start is not None:
        bounds["$gte"] = start
    if window.end is not None:
        # Inclusive end, written as "before the next millisecond": the same set of
        # points, since BSON times and our bounds both hold whole milliseconds.
        # SecantusDB (the test server) drops the last instant of an index range
        # bounded by $lte when it also sorts on the index; $lt it reads right.
        bounds["$lt"] = window.end + ONE_MILLISECOND
    if bounds:
        selector["timestamp"] = bounds
    return selector


def bucket_pipeline(
    selector: dict[str, Any],
    step_ms: int,
    agg: Aggregation,
    after: PageAfter | None,
    limit: int,
) -> list[dict[str, Any]]:
    """The aggregation that downsamples in the database: one row per series per bucket.

    A series is a metric of the whole GPU or of one MIG instance: instances
    are never summarised together.

    Buckets are ``[k * step, (k + 1) * step)`` in milliseconds since the Unix
    epoch, computed as ``t - t mod step`` on the stored time. That arithmetic
    (``$toLong``, ``$mod``, ``$subtract``) gives the same edges on MongoDB and
    on SecantusDB; ``$dateTrunc`` aligns odd bin sizes to 2000-01-01 instead,
    which would move buckets for steps such as 7s. Each row is
    ``{_id: {m: metric, i: instance or "", b: bucket start in ms}, v: value, n: count}``.
    """
    millis = {"$toLong": "$timestamp"}
    bucket = {"$subtract": [millis, {"$mod": [millis, step_ms]}]}
    match = dict(selector)
    if after is not None:
        # Every point of the key's bucket or later has a time at or after its start.
        bounds = dict(match.get("timestamp", {}))
        start = bounds.get("$gte")
        bounds["$gte"] = after.timestamp if start is None or after.timestamp > start else start
        match["timestamp"] = bounds
    pipeline: list[dict[str, Any]] = [{"$match": match}]
    if agg == "last":
        # $last is the last point in input order: sort by time so it is the newest.
        pipeline.append({"$sort": {"timestamp": 1}})
    pipeline.append(
        {
            "$group": {
                "_id": {"m": "$metric_name", "i": INSTANCE_OR_WHOLE, "b": bucket},
                "v": {_AGG_OPERATORS[agg]: "$value"},
                "n": {"$sum": 1},
            }
        }
    )
    if after is not None:
        after_ms = epoch_ms(after.timestamp)
        pipeline.append(
            {
                "$match": {
                    "$or": [
                        {"_id.b": {"$gt": after_ms}},
                        {"_id.b": after_ms, "_id.m": {"$gt": after.metric_name}},
                        {
                            "_id.b": after_ms,
                            "_id.m": after.metric_name,
                            "_id.i": {"$gt": after.gpu_instance},
                        },
                    ]
                }
            }
        )
    pipeline.append({"$sort": {"_id.b": 1, "_id.m": 1, "_id.i": 1}})
    pipeline.append({"$limit": limit})
    return pipeline
