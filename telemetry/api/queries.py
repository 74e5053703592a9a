"""The read API's answers: GPU pages, latest metrics, point pages and downsampling.

The reads themselves are the storage port's (:class:`TelemetryReads`); this
module turns them into the API's schemas, pages them with cursors from
:mod:`telemetry.api.params`, and maps storage errors to API errors. Cursors
are by key, not by offset: a page continues strictly after the last key it
returned, so points written while a client pages through are neither skipped
nor repeated (see :mod:`telemetry.store.mongo_reads`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from telemetry.api.params import (
    ApiError,
    TelemetryQuery,
    decode_cursor,
    encode_cursor,
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
from telemetry.errors import (
    StorageLoginRefused,
    StorageRejected,
    StorageTimeout,
    StorageUnavailable,
)
from telemetry.models import EPOCH, epoch_ms
from telemetry.store.port import PageAfter, PointWindow, TelemetryReads

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


@contextmanager
def api_errors() -> Iterator[None]:
    """Storage errors as API errors: 503 when retrying later may work, else 500."""
    try:
        yield
    except StorageTimeout as exc:
        raise ApiError(
            503,
            "query_timeout",
            f"the database did not finish within the time limit: {exc.problem}",
        ) from exc
    except StorageLoginRefused as exc:
        raise ApiError(503, "database_login_refused", f"database {exc.problem}") from exc
    except StorageUnavailable as exc:
        raise ApiError(
            503, "database_unavailable", f"the database is unreachable: {exc.problem}"
        ) from exc
    except StorageRejected as exc:
        raise ApiError(
            500, "database_error", f"the database refused the query: {exc.problem}"
        ) from exc


@dataclass
class TelemetryReader:
    """The API's reads, over any implementation of the storage port; never writes."""

    reads: TelemetryReads

    def ping(self) -> None:
        """Raise :class:`ApiError` (503) unless the database answers now."""
        with api_errors():
            self.reads.ping()

    # GPUs

    def list_gpus(
        self, hostname: str | None, model_name: str | None, limit: int, cursor: str | None
    ) -> GpuList:
        """A page of GPUs ordered by UUID, with the count of all that match."""
        digest = query_digest("gpus", [hostname, model_name])
        key = decode_cursor(cursor, digest)
        after = None
        if key is not None:
            if len(key) != 1 or not isinstance(key[0], str):
                raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
            after = key[0]
        with api_errors():
            # One row more than asked tells whether a next page exists without another query.
            found = self.reads.gpu_page(hostname, model_name, after, limit + 1)
            total = self.reads.count_gpus(hostname, model_name)
        more = len(found) > limit
        gpus = [gpu_of(document) for document in found[:limit]]
        next_cursor = encode_cursor(digest, [gpus[-1].uuid]) if more else None
        return GpuList(gpus=gpus, total=total, next_cursor=next_cursor)

    def get_gpu(self, uuid: str) -> Gpu:
        """One GPU; 404 when the collector never stored it."""
        with api_errors():
            document = self.reads.find_gpu(uuid)
        if document is None:
            raise not_found(uuid)
        return gpu_of(document)

    def require_gpu(self, uuid: str) -> None:
        """404 unless the GPU is known."""
        with api_errors():
            known = self.reads.gpu_exists(uuid)
        if not known:
            raise not_found(uuid)

    # Points

    def latest_metrics(self, uuid: str) -> MetricList:
        """Each metric stored for a GPU with its newest value.

        A GPU split into MIG instances has one series per metric and instance:
        each gets its own entry, the whole GPU's first.
        """
        with api_errors():
            rows = self.reads.latest_values(uuid)
        if not rows:
            self.require_gpu(uuid)
        metrics = [
            LatestMetric(
                metric_name=row.metric_name,
                gpu_instance=row.gpu_instance,
                value=row.value,
                timestamp=format_time(row.timestamp),
            )
            for row in rows
        ]
        return MetricList(gpu_uuid=uuid, metrics=metrics)

    def telemetry(self, query: TelemetryQuery, cursor: str | None) -> TelemetryPage:
        """One page of raw points, or of buckets when the query has a step."""
        digest = query.identity()
        key = decode_cursor(cursor, digest)
        after = point_key(key) if key is not None else None
        window = PointWindow(
            query.gpu_uuid, query.metric_names, query.gpu_instance, query.start, query.end
        )
        with api_errors():
            if query.step is None:
                points = self._raw_page(window, after, query.limit)
            else:
                points = self._bucket_page(window, query, query.step, after)
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

    def _raw_page(
        self, window: PointWindow, after: PageAfter | None, limit: int
    ) -> list[tuple[int, TelemetryPoint]]:
        return [
            (
                epoch_ms(point.timestamp),
                TelemetryPoint(
                    metric_name=point.metric_name,
                    gpu_instance=point.gpu_instance,
                    value=point.value,
                    timestamp=format_time(point.timestamp),
                    labels=_string_labels(point.labels),
                ),
            )
            for point in self.reads.point_page(window, after, limit + 1)
        ]

    def _bucket_page(
        self, window: PointWindow, query: TelemetryQuery, step: timedelta, after: PageAfter | None
    ) -> list[tuple[int, TelemetryPoint]]:
        # An invariant for mypy: telemetry_query sets agg whenever it sets step.
        assert query.agg is not None  # nosec B101
        step_ms = int(step.total_seconds() * 1000)
        buckets = self.reads.bucket_page(window, step_ms, query.agg, after, query.limit + 1)
        return [
            (
                bucket.start_ms,
                TelemetryPoint(
                    metric_name=bucket.metric_name,
                    gpu_instance=bucket.gpu_instance,
                    value=bucket.value,
                    timestamp=format_time(EPOCH + timedelta(milliseconds=bucket.start_ms)),
                    labels={},
                    count=bucket.points,
                ),
            )
            for bucket in buckets
        ]


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
        mig_instances=mig_instances_of(document.get("mig_instances")),
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
                gpu_instance=str(key),
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
