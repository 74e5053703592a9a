"""The MongoDB reads behind the API: GPU pages, latest metrics, point pages, downsampling.

Every query carries ``maxTimeMS``, so a request costs the server at most that
much work however it was phrased. Filters are built only from values that
:mod:`telemetry.api.params` has already typed (strings compared for
equality, datetimes, integers), always in the value position of a filter:
a client's text can never become a MongoDB operator or field name.

Pagination is by key, not by offset. Points sort by ``(timestamp,
metric_name, gpu_instance)``, which is unique per GPU (it is the point's
``_id``; a point of the whole GPU has no instance and sorts first), and a
page continues strictly after the last key it returned: points written while
a client pages through are neither skipped nor repeated, and those later
than the cursor show up on later pages. The index that serves it is
:data:`POINT_PAGE_INDEX`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    AutoReconnect,
    ConfigurationError,
    ConnectionFailure,
    ExecutionTimeout,
    InvalidURI,
    PyMongoError,
)
from pymongo.uri_parser import parse_uri

from telemetry.api.params import (
    EPOCH,
    ApiError,
    PointKey,
    TelemetryQuery,
    decode_cursor,
    encode_cursor,
    epoch_ms,
    format_step,
    format_time,
    point_key,
    query_digest,
)
from telemetry.api.schemas import (
    Gpu,
    GpuList,
    LatestMetric,
    MetricList,
    MigInstance,
    TelemetryPage,
    TelemetryPoint,
)
from telemetry.config import Settings
from telemetry.errors import database_problem
from telemetry.store.mongo import MIG_INSTANCES, instance_of_key

# The server-side time limit of one query, in milliseconds, unless create_app is told another.
DEFAULT_QUERY_TIME_LIMIT_MS = 10_000
ONE_MILLISECOND = timedelta(milliseconds=1)
GPU_FIELDS = (
    "hostname",
    "device",
    "gpu_index",
    "model_name",
    "container",
    "pod",
    "namespace",
    "pci_bus_id",
    "driver_version",
)
# A point's MIG instance in aggregations: "" for the whole GPU, whose points have none,
# so it groups as a value of its own and sorts before every instance (see PointKey).
INSTANCE_OR_WHOLE = {"$ifNull": ["$gpu_instance", ""]}
_AGG_OPERATORS = {"avg": "$avg", "min": "$min", "max": "$max", "last": "$last"}


def open_read_client(settings: Settings) -> MongoClient[dict[str, Any]]:
    """A client for reads: aware datetimes, and the settings' timeouts unless the URI sets its own.

    The client connects lazily, so building the app never waits for the database.
    """
    given = {key.lower() for key in _uri_options(settings.mongodb_uri)}
    options: dict[str, Any] = {"appname": "telemetry-api"}
    if "serverselectiontimeoutms" not in given:
        options["serverSelectionTimeoutMS"] = settings.mongo_timeout_ms
    if "connecttimeoutms" not in given:
        options["connectTimeoutMS"] = settings.mongo_timeout_ms
    return MongoClient(settings.mongodb_uri, tz_aware=True, **options)


def _uri_options(uri: str) -> dict[str, Any]:
    if uri.startswith("mongodb+srv://"):
        # Parsing an SRV URI resolves DNS; such URIs rarely carry timeouts anyway.
        return {}
    try:
        options: dict[str, Any] = parse_uri(uri)["options"]
    except (InvalidURI, ConfigurationError, ValueError):
        return {}
    return options


@contextmanager
def translated_errors() -> Iterator[None]:
    """Turn pymongo failures into API errors: 503 when retrying later may work."""
    try:
        yield
    except ExecutionTimeout as exc:
        raise ApiError(
            503, "query_timeout", f"the database did not finish within the time limit: {exc}"
        ) from exc
    except PyMongoError as exc:
        problem = database_problem(str(exc), getattr(exc, "code", None))
        if problem.startswith("login refused"):
            raise ApiError(503, "database_login_refused", f"database {problem}") from exc
        if isinstance(exc, ConnectionFailure | AutoReconnect):
            raise ApiError(
                503, "database_unavailable", f"the database is unreachable: {problem}"
            ) from exc
        raise ApiError(500, "database_error", f"the database refused the query: {problem}") from exc


@dataclass
class TelemetryReader:
    """Reads the collector's ``telemetry`` and ``gpus`` collections; never writes."""

    database: Database[dict[str, Any]]
    time_limit_ms: int = DEFAULT_QUERY_TIME_LIMIT_MS

    @property
    def _points(self) -> Collection[dict[str, Any]]:
        return self.database["telemetry"]

    @property
    def _gpus(self) -> Collection[dict[str, Any]]:
        return self.database["gpus"]

    def ping(self) -> None:
        """Raise :class:`ApiError` (503) unless the database answers now."""
        with translated_errors():
            self.database.client.admin.command("ping")

    # GPUs

    def list_gpus(
        self, hostname: str | None, model_name: str | None, limit: int, cursor: str | None
    ) -> GpuList:
        """A page of GPUs ordered by UUID, with the count of all that match."""
        selector: dict[str, Any] = {}
        if hostname is not None:
            selector["hostname"] = hostname
        if model_name is not None:
            selector["model_name"] = model_name
        digest = query_digest("gpus", [hostname, model_name])
        key = decode_cursor(cursor, digest)
        page_filter = dict(selector)
        if key is not None:
            if len(key) != 1 or not isinstance(key[0], str):
                raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
            page_filter["_id"] = {"$gt": key[0]}
        with translated_errors():
            found = list(
                self._gpus.find(page_filter)
                .sort("_id", ASCENDING)
                .limit(limit + 1)
                .max_time_ms(self.time_limit_ms)
            )
            total = self._gpus.count_documents(selector, maxTimeMS=self.time_limit_ms)
        # One row more than asked tells whether a next page exists without another query.
        more = len(found) > limit
        gpus = [gpu_of(document) for document in found[:limit]]
        next_cursor = encode_cursor(digest, [gpus[-1].uuid]) if more else None
        return GpuList(gpus=gpus, total=total, next_cursor=next_cursor)

    def get_gpu(self, uuid: str) -> Gpu:
        """One GPU; 404 when the collector never stored it."""
        with translated_errors():
            document = self._gpus.find_one({"_id": uuid}, max_time_ms=self.time_limit_ms)
        if document is None:
            raise not_found(uuid)
        return gpu_of(document)

    def require_gpu(self, uuid: str) -> None:
        """404 unless the GPU is known."""
        with translated_errors():
            known = self._gpus.find_one(
                {"_id": uuid}, projection={"_id": 1}, max_time_ms=self.time_limit_ms
            )
        if known is None:
            raise not_found(uuid)

    # Points

    def latest_metrics(self, uuid: str) -> MetricList:
        """Each metric stored for a GPU with its newest value, in one aggregation.

        A GPU split into MIG instances has one series per metric and instance:
        each gets its own entry, the whole GPU's first.
        """
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
        with translated_errors():
            rows = list(self._points.aggregate(pipeline, maxTimeMS=self.time_limit_ms))
        if not rows:
            self.require_gpu(uuid)
        metrics = [
            LatestMetric(
                metric_name=row["_id"]["m"],
                gpu_instance=row["_id"]["i"] or None,
                value=row["value"],
                timestamp=format_time(row["timestamp"]),
            )
            for row in rows
        ]
        return MetricList(gpu_uuid=uuid, metrics=metrics)

    def telemetry(self, query: TelemetryQuery, cursor: str | None) -> TelemetryPage:
        """One page of raw points, or of buckets when the query has a step."""
        digest = query.identity()
        key = decode_cursor(cursor, digest)
        after = point_key(key) if key is not None else None
        if query.step is None:
            points = self._raw_page(query, after)
        else:
            points = self._bucket_page(query, query.step, after)
        if not points:
            # An empty page may mean an unknown GPU. Only asked then: a page with
            # points proves the GPU exists, and skipping the look-up saves a round trip.
            self.require_gpu(query.gpu_uuid)
        more = len(points) > query.limit
        points = points[: query.limit]
        next_cursor = None
        if more:
            millis, last = points[-1]
            next_cursor = encode_cursor(digest, [millis, last.metric_name, last.gpu_instance or ""])
        return TelemetryPage(
            gpu_uuid=query.gpu_uuid,
            step=format_step(query.step) if query.step else None,
            agg=query.agg,
            points=[point for _, point in points],
            next_cursor=next_cursor,
        )

    def _window_filter(self, query: TelemetryQuery, lower: datetime | None) -> dict[str, Any]:
        """The query's filter, window ends included; ``lower`` raises the start to a cursor."""
        selector: dict[str, Any] = {"gpu_uuid": query.gpu_uuid}
        if query.metric_names:
            selector["metric_name"] = {"$in": list(query.metric_names)}
        if query.gpu_instance is not None:
            selector["gpu_instance"] = query.gpu_instance
        window: dict[str, datetime] = {}
        start = query.start
        if lower is not None and (start is None or lower > start):
            start = lower
        if start is not None:
            window["$gte"] = start
        if query.end is not None:
            # Inclusive end, written as "before the next millisecond": the same set of
            # points, since BSON times and our bounds both hold whole milliseconds.
            # SecantusDB (the test server) drops the last instant of an index range
            # bounded by $lte when it also sorts on the index; $lt it reads right.
            window["$lt"] = query.end + ONE_MILLISECOND
        if window:
            selector["timestamp"] = window
        return selector

    def _raw_page(
        self, query: TelemetryQuery, after: PointKey | None
    ) -> list[tuple[int, TelemetryPoint]]:
        selector: dict[str, Any] = self._window_filter(query, after[0] if after else None)
        if after is not None:
            # Strictly after the cursor's key in (timestamp, metric_name, gpu_instance)
            # order. A whole-GPU point has no gpu_instance, which no $gt matches, and
            # every instance id is $gt "": the whole GPU sorts first, as in the index.
            selector["$or"] = [
                {"timestamp": {"$gt": after.timestamp}},
                {"timestamp": after.timestamp, "metric_name": {"$gt": after.metric_name}},
                {
                    "timestamp": after.timestamp,
                    "metric_name": after.metric_name,
                    "gpu_instance": {"$gt": after.gpu_instance},
                },
            ]
        projection = {
            "_id": 0,
            "metric_name": 1,
            "gpu_instance": 1,
            "value": 1,
            "timestamp": 1,
            "labels": 1,
        }
        with translated_errors():
            documents = list(
                self._points.find(selector, projection)
                .sort(
                    [
                        ("timestamp", ASCENDING),
                        ("metric_name", ASCENDING),
                        ("gpu_instance", ASCENDING),
                    ]
                )
                .limit(query.limit + 1)
                .max_time_ms(self.time_limit_ms)
            )
        return [
            (
                epoch_ms(document["timestamp"]),
                TelemetryPoint(
                    metric_name=document["metric_name"],
                    gpu_instance=document.get("gpu_instance"),
                    value=document["value"],
                    timestamp=format_time(document["timestamp"]),
                    labels=_string_labels(document.get("labels")),
                ),
            )
            for document in documents
        ]

    def _bucket_page(
        self, query: TelemetryQuery, step: timedelta, after: PointKey | None
    ) -> list[tuple[int, TelemetryPoint]]:
        pipeline = bucket_pipeline(self._window_filter(query, None), query, step, after)
        with translated_errors():
            rows = list(self._points.aggregate(pipeline, maxTimeMS=self.time_limit_ms))
        return [
            (
                row["_id"]["b"],
                TelemetryPoint(
                    metric_name=row["_id"]["m"],
                    gpu_instance=row["_id"]["i"] or None,
                    value=row["v"],
                    timestamp=format_time(_from_epoch_ms(row["_id"]["b"])),
                    labels={},
                    count=row["n"],
                ),
            )
            for row in rows
        ]


def bucket_pipeline(
    selector: dict[str, Any],
    query: TelemetryQuery,
    step: timedelta,
    after: PointKey | None,
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
    step_ms = int(step.total_seconds() * 1000)
    # An invariant for mypy: telemetry_query sets agg whenever it sets step.
    assert query.agg is not None  # nosec B101
    millis = {"$toLong": "$timestamp"}
    bucket = {"$subtract": [millis, {"$mod": [millis, step_ms]}]}
    match = dict(selector)
    if after is not None:
        # Every point of the cursor's bucket or later has a time at or after its start.
        window = dict(match.get("timestamp", {}))
        start = window.get("$gte")
        window["$gte"] = after[0] if start is None or after[0] > start else start
        match["timestamp"] = window
    pipeline: list[dict[str, Any]] = [{"$match": match}]
    if query.agg == "last":
        # $last is the last point in input order: sort by time so it is the newest.
        pipeline.append({"$sort": {"timestamp": 1}})
    pipeline.append(
        {
            "$group": {
                "_id": {"m": "$metric_name", "i": INSTANCE_OR_WHOLE, "b": bucket},
                "v": {_AGG_OPERATORS[query.agg]: "$value"},
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
    pipeline.append({"$limit": query.limit + 1})
    return pipeline


def _from_epoch_ms(millis: int) -> datetime:
    return EPOCH + timedelta(milliseconds=millis)


def _string_labels(labels: Any) -> dict[str, str]:
    """Stored labels as a str-to-str mapping; anything else stored there is left out."""
    if not isinstance(labels, dict):
        return {}
    return {str(name): value for name, value in labels.items() if isinstance(value, str)}


def gpu_of(document: dict[str, Any]) -> Gpu:
    """The API's view of a ``gpus`` document."""
    first_seen = document.get("first_seen")
    last_seen = document.get("last_seen")
    fields = {name: document.get(name) for name in GPU_FIELDS}
    return Gpu(
        uuid=str(document["_id"]),
        first_seen=format_time(first_seen) if isinstance(first_seen, datetime) else None,
        last_seen=format_time(last_seen) if isinstance(last_seen, datetime) else None,
        mig_instances=mig_instances_of(document.get(MIG_INSTANCES)),
        **fields,
    )


def mig_instances_of(stored: Any) -> list[MigInstance]:
    """A ``gpus`` document's ``mig_instances`` as the API lists them, by instance id."""
    if not isinstance(stored, dict):
        return []
    instances = []
    for key, entry in stored.items():
        if not isinstance(entry, dict):
            continue
        profile = entry.get("profile")
        first_seen = entry.get("first_seen")
        last_seen = entry.get("last_seen")
        instances.append(
            MigInstance(
                gpu_instance=instance_of_key(str(key)),
                profile=profile if isinstance(profile, str) else None,
                first_seen=format_time(first_seen) if isinstance(first_seen, datetime) else None,
                last_seen=format_time(last_seen) if isinstance(last_seen, datetime) else None,
            )
        )
    return sorted(instances, key=lambda instance: instance_order(instance.gpu_instance))


def instance_order(instance: str) -> tuple[int, int, str]:
    """Numeric ids (GPU_I_ID) in number order, then any others by text."""
    return (0, int(instance), "") if instance.isdecimal() else (1, 0, instance)


def not_found(uuid: str) -> ApiError:
    """The 404 for a GPU the collector never stored."""
    return ApiError(404, "not_found", f"no GPU with uuid {uuid!r} has been stored")
