"""MongoDB storage: the writes to the ``telemetry``, ``gpus`` and ``rejected`` collections.

:class:`MongoTelemetryStore` implements the worker's side of the storage port
(:class:`telemetry.store.port.TelemetryWrites`). Every pymongo error becomes
:class:`StorageUnavailable` (transient, worth a retry) or
:class:`StorageRejected` (permanent) through :mod:`telemetry.store.translation`.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from pymongo import ASCENDING, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, CollectionInvalid

from telemetry.config import Settings, masked
from telemetry.errors import StorageRejected, StorageUnavailable
from telemetry.models import GpuMetadata, Point, parse_labels
from telemetry.store.client import Client, open_client, ping
from telemetry.store.translation import translated_errors

RAW_MESSAGE_MAX_CHARS = 16_384
DUPLICATE_KEY = 11000

# The index of the telemetry collection: equality on the GPU, then time, then
# metric, then MIG instance. It serves a GPU's time window, and the read API's
# pages in their order (timestamp, metric_name, gpu_instance): a page reads
# ``limit`` index entries in order and stops, where a shorter prefix would sort
# every point of a range in memory to break the remaining ties. A point of the
# whole GPU has no gpu_instance, which the index holds as null: it sorts before
# the instances of its (timestamp, metric_name).
POINT_PAGE_INDEX: list[tuple[str, int]] = [
    ("gpu_uuid", ASCENDING),
    ("timestamp", ASCENDING),
    ("metric_name", ASCENDING),
    ("gpu_instance", ASCENDING),
]
POINT_PAGE_INDEX_NAME = "gpu_time_metric_instance"
# Where a ``gpus`` document records its GPU's MIG instances, one subdocument each.
MIG_INSTANCES = "mig_instances"

InsertOutcome = Literal["stored", "duplicate"] | StorageRejected
"""What became of one document of a bulk insert; a refused document carries its error."""


@dataclass(frozen=True)
class RejectedMessage:
    """An invalid message, as the ``rejected`` collection keeps it."""

    reason: str
    kind: str
    message_id: str | None
    raw: Any

    def document(self, now: datetime) -> dict[str, Any]:
        """The ``rejected`` document: the raw message cut to a bounded size."""
        text = self.raw if isinstance(self.raw, str) else repr(self.raw)
        return {
            "reason": self.reason,
            "kind": self.kind,
            "message_id": self.message_id,
            "raw": text[:RAW_MESSAGE_MAX_CHARS],
            "truncated": len(text) > RAW_MESSAGE_MAX_CHARS,
            "rejected_at": now,
        }


@dataclass(slots=True)
class InstanceSpan:
    """A MIG instance as a batch saw it: its profile, when given, and its points' time span."""

    profile: str | None
    first_seen: datetime
    last_seen: datetime

    def widen(self, profile: str | None, stamp: datetime) -> None:
        """Take in one more point of the instance; a later profile wins, none keeps the last."""
        if profile is not None:
            self.profile = profile
        if stamp < self.first_seen:
            self.first_seen = stamp
        elif stamp > self.last_seen:
            self.last_seen = stamp


class GpuUpdate(NamedTuple):
    """One GPU upsert of a batch: the metadata to set and the span of point times seen.

    A named tuple, the cheapest record to build: a batch makes one per GPU
    (docs/performance.md). ``instances`` is None unless
    a point of the batch came from a MIG instance of the GPU.
    """

    gpu_uuid: str
    fields: dict[str, Any]
    first_seen: datetime
    last_seen: datetime
    instances: dict[str, InstanceSpan] | None = None

    @classmethod
    def merge(cls, points: Iterable[tuple[Point, GpuMetadata]]) -> list[GpuUpdate]:
        """One update per GPU: the latest metadata and the span of its points' times.

        This is the one GPU merge rule: a batch of one and a batch of many
        both go through it. Later metadata wins field by field. A GPU's points
        mostly share one validated metadata object (``models.gpu_metadata``),
        so each distinct run of it is turned into fields once, not per point.
        Points of MIG instances also gather, per instance, the latest profile
        given and the span of the instance's point times; the profile never
        becomes a field of the GPU, which has one per instance.
        """
        spans: dict[str, _Span] = {}
        for point, metadata in points:
            stamp = point.timestamp
            span = spans.get(point.gpu_uuid)
            if span is None:
                span = spans[point.gpu_uuid] = _Span(stamp, stamp, [metadata])
            else:
                if stamp < span.first_seen:
                    span.first_seen = stamp
                elif stamp > span.last_seen:
                    span.last_seen = stamp
                if span.metadata[-1] is not metadata:
                    span.metadata.append(metadata)
            if point.gpu_instance is not None:
                span.see_instance(point.gpu_instance, metadata.gpu_instance_profile, stamp)
        updates = []
        for gpu_uuid, span in spans.items():
            fields: dict[str, Any] = {}
            for metadata in span.metadata:
                fields.update(metadata.gpu_items)
            updates.append(cls(gpu_uuid, fields, span.first_seen, span.last_seen, span.instances))
        return updates

    def spec(self, now: datetime) -> dict[str, Any]:
        """The upsert document: given fields set, ``first_seen``/``last_seen`` only widened.

        Each MIG instance is a subdocument of ``mig_instances``, under
        :func:`instance_key`, written through dotted paths so instances never
        overwrite each other: its ``profile`` is set when given, and its own
        ``first_seen``/``last_seen`` only widened, as the GPU's are.
        """
        spec: dict[str, Any] = {
            "$set": {**self.fields, "updated_at": now},
            "$min": {"first_seen": self.first_seen},
            "$max": {"last_seen": self.last_seen},
        }
        if self.instances is not None:
            for instance, seen in self.instances.items():
                path = f"{MIG_INSTANCES}.{instance_key(instance)}"
                if seen.profile is not None:
                    spec["$set"][f"{path}.profile"] = seen.profile
                spec["$min"][f"{path}.first_seen"] = seen.first_seen
                spec["$max"][f"{path}.last_seen"] = seen.last_seen
        return spec


@dataclass(slots=True)
class _Span:
    """What :meth:`GpuUpdate.merge` gathers for one GPU: its time span and metadata, in order."""

    first_seen: datetime
    last_seen: datetime
    metadata: list[GpuMetadata]
    instances: dict[str, InstanceSpan] | None = None

    def see_instance(self, instance: str, profile: str | None, stamp: datetime) -> None:
        """Take in a point of one of the GPU's MIG instances."""
        if self.instances is None:
            self.instances = {}
        seen = self.instances.get(instance)
        if seen is None:
            self.instances[instance] = InstanceSpan(profile, stamp, stamp)
        else:
            seen.widen(profile, stamp)


# A MIG instance id is producer text; as a field name, "." would nest and a leading
# "$" would read as an operator, so those (and "%", the escape itself) are escaped.
_KEY_ESCAPES = str.maketrans({"%": "%25", ".": "%2E", "$": "%24", "\0": "%00"})
_KEY_ESCAPED = re.compile("%(25|2E|24|00)")


def instance_key(instance: str) -> str:
    """The field name of a MIG instance id in ``gpus.mig_instances``; plain ids stay as given."""
    return instance.translate(_KEY_ESCAPES)


def instance_of_key(key: str) -> str:
    """The MIG instance id :func:`instance_key` made ``key`` from."""
    return _KEY_ESCAPED.sub(lambda found: chr(int(found[1], 16)), key) if "%" in key else key


class MongoTelemetryStore:
    """Writes points, GPU records and rejected messages to one MongoDB database."""

    def __init__(self, database: Database[dict[str, Any]], settings: Settings) -> None:
        self._db = database
        self._settings = settings
        self._indexes_ready = False
        self._lock = threading.Lock()

    @property
    def database(self) -> Database[dict[str, Any]]:
        """The database this store writes to."""
        return self._db

    def ping(self) -> None:
        """Return when the database answers now; raise StorageUnavailable saying why not."""
        ping(self._db.client)

    def close(self) -> None:
        """Close the client."""
        self._db.client.close()

    def ensure_indexes(self) -> None:
        """Create collections and indexes if missing; safe to call from any worker, any time."""
        if self._indexes_ready:
            return
        with self._lock, translated_errors("creating indexes"):
            if self._indexes_ready:
                return
            telemetry = self._db["telemetry"]
            # No unique index of our own: the point's key is its _id (see
            # point_document), which every collection indexes anyway.
            # Deployments from before it keep their older indexes "gpu_time"
            # (gpu_uuid, timestamp) and "gpu_time_metric" (gpu_uuid, timestamp,
            # metric_name), prefixes of this one: they may be dropped.
            telemetry.create_index(POINT_PAGE_INDEX, name=POINT_PAGE_INDEX_NAME)
            if self._settings.retention_days > 0:
                telemetry.create_index(
                    "timestamp",
                    name="retention",
                    expireAfterSeconds=self._settings.retention_days * 86_400,
                )
            self._db["gpus"].create_index("hostname", name="hostname")
            # Capped, so a flood of bad input cannot fill the disk.
            with contextlib.suppress(CollectionInvalid):  # already there
                self._db.create_collection(
                    "rejected",
                    capped=True,
                    size=max(self._settings.rejected_max_docs * 20_000, 1 << 20),
                    max=self._settings.rejected_max_docs,
                )
            self._indexes_ready = True

    def record_rejected(self, rejections: Sequence[RejectedMessage]) -> None:
        """Keep invalid messages where an operator can see them, in one write."""
        if not rejections:
            return
        self.ensure_indexes()
        now = datetime.now(UTC)
        with translated_errors("recording rejected messages"):
            self._db["rejected"].insert_many(
                [rejection.document(now) for rejection in rejections], ordered=False
            )

    def upsert_gpus(self, updates: Sequence[GpuUpdate], now: datetime) -> None:
        """Apply many GPU upserts in one unordered bulk write; all-or-error."""
        if not updates:
            return
        operations = [
            UpdateOne({"_id": update.gpu_uuid}, update.spec(now), upsert=True) for update in updates
        ]
        with translated_errors("upserting GPUs"):
            self._db["gpus"].bulk_write(operations, ordered=False)

    def insert_points(self, documents: Sequence[dict[str, Any]]) -> list[InsertOutcome]:
        """Insert many ``telemetry`` documents unordered; one outcome per document.

        A duplicate key is ``"duplicate"``; any other per-document error is a
        :class:`StorageRejected` naming it, with the others still written. Errors that leave the
        outcome of the whole write unknown (connection loss, write concern)
        raise, as for a single insert.
        """
        if not documents:
            return []
        self.ensure_indexes()
        outcomes: list[InsertOutcome] = ["stored"] * len(documents)
        with translated_errors("storing points"):
            try:
                self._db["telemetry"].insert_many(documents, ordered=False)
            except BulkWriteError as exc:
                details = exc.details
                if details.get("writeConcernErrors"):
                    raise StorageUnavailable(f"storing points: {exc}") from exc
                for error in details.get("writeErrors", []):
                    outcomes[error["index"]] = (
                        "duplicate"
                        if error.get("code") == DUPLICATE_KEY
                        else StorageRejected(f"storing point: {error.get('errmsg', error)}")
                    )
        return outcomes


def point_document(point: Point, metadata: GpuMetadata, now: datetime) -> dict[str, Any]:
    """The ``telemetry`` document for one point.

    The ``_id`` is the point's identity (GPU, metric, time, and MIG instance
    when there is one), so a redelivered message stores nothing twice. Keeping
    it in ``_id`` rather than in a unique index of its own saves one index
    update per insert, a large share of an insert's work (docs/storage.md has the
    figures).

    A point of the whole GPU keeps the ``_id`` of the points stored before
    MIG instances were known, ``{gpu_uuid, metric_name, timestamp}`` in that
    order, so a redelivered old message is still a duplicate. A point of an
    instance appends ``gpu_instance`` as the last key. Time-sliced copies of
    one GPU (one per pod, no instance) thus share an ``_id`` and are stored once.
    """
    document: dict[str, Any] = {
        "_id": {
            "gpu_uuid": point.gpu_uuid,
            "metric_name": point.metric_name,
            "timestamp": point.timestamp,
        },
        "gpu_uuid": point.gpu_uuid,
        "metric_name": point.metric_name,
        "value": point.value,
        "timestamp": point.timestamp,
        "hostname": metadata.hostname,
        "ingested_at": now,
    }
    if point.gpu_instance is not None:
        document["_id"] = {
            "gpu_uuid": point.gpu_uuid,
            "metric_name": point.metric_name,
            "timestamp": point.timestamp,
            "gpu_instance": point.gpu_instance,
        }
        document["gpu_instance"] = point.gpu_instance
        if metadata.gpu_instance_profile is not None:
            document["gpu_instance_profile"] = metadata.gpu_instance_profile
    labels = parse_labels(point.labels_raw) if point.labels_raw else {}
    if labels is None:
        # Unparseable labels are kept verbatim rather than dropped.
        document["labels"] = {}
        document["labels_raw"] = point.labels_raw
    else:
        document["labels"] = labels
    return document


def open_store(settings: Settings) -> MongoTelemetryStore:
    """A store on the settings' database; the client connects lazily."""
    client: Client = open_client(
        settings.mongodb_uri,
        timeout_ms=settings.mongo_timeout_ms,
        app_name="telemetry-worker",
        pool_size=settings.max_concurrent_handlers,
    )
    return MongoTelemetryStore(client[settings.mongodb_db], settings)


def check_database(settings: Settings) -> None:
    """Raise :class:`StorageUnavailable` in one line unless the database takes our login
    (and certificate check) and lets us create the indexes; on a client of its own."""
    store = open_store(settings)
    try:
        store.ensure_indexes()
    except (StorageUnavailable, StorageRejected) as exc:
        where = masked(settings.mongodb_uri)
        raise StorageUnavailable(
            f"cannot use the database at {where}: {exc.problem}", exc.problem
        ) from exc
    finally:
        store.close()
