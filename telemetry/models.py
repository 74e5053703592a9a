"""The message contract: what a ``telemetry.ingest`` task carries, and its validation.

A task is called with two keyword arguments, ``point`` and ``metadata``; both
are JSON objects. :func:`parse_message` turns them into a :class:`Point` and
:class:`GpuMetadata`, or raises :class:`InvalidMessage` with a reason an
operator can act on.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from telemetry.errors import InvalidMessage, RejectionKind

MAX_LABELS_RAW_CHARS = 65_536
MAX_GPU_INSTANCE_CHARS = 64
MAX_FUTURE = timedelta(days=1)
# The largest integer MongoDB stores (BSON int64); a larger index could not be written.
MAX_GPU_INDEX = 2**63 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch, exact (no float rounding)."""
    delta = moment.astimezone(UTC) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# One Prometheus-style label: name="value", where value may hold \" and \\ escapes.
# The value is written "unrolled" (runs of plain characters between escapes), which
# sre matches a run at a time rather than a character at a time.
_LABEL_PATTERN = r'\s*([A-Za-z_][A-Za-z0-9_]*)="([^"\\]*(?:\\.[^"\\]*)*)"\s*(?:,|$)'
_LABEL = re.compile(_LABEL_PATTERN)
# A whole label text: nothing but labels, one after another.
_LABELS = re.compile(f"(?:{_LABEL_PATTERN})*")
_ESCAPED = re.compile(r"\\(.)")


class Point(BaseModel):
    """One telemetry point: a metric of one GPU with a value at a time."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    gpu_uuid: str = Field(min_length=1, max_length=256)
    metric_name: str = Field(min_length=1, max_length=256)
    value: float
    timestamp: datetime
    labels_raw: str | None = Field(default=None, max_length=MAX_LABELS_RAW_CHARS)
    # The MIG GPU instance (dcgm-exporter's GPU_I_ID); None is the whole GPU.
    gpu_instance: str | None = Field(default=None, max_length=MAX_GPU_INSTANCE_CHARS)

    @field_validator("gpu_uuid", "metric_name", mode="before")
    @classmethod
    def _strip_name(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value.strip()

    @field_validator("gpu_instance", mode="before")
    @classmethod
    def _blank_instance_is_absent(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value.strip() or None

    @field_validator("value", mode="before")
    @classmethod
    def _finite_number(cls, value: Any) -> float:
        if type(value) is float and math.isfinite(value):  # what producers send
            return value
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("must be a number")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"not a number: {value!r}") from None
        except OverflowError:
            # JSON integers have no size limit; one past a float's range is not telemetry.
            raise ValueError("too large for a float") from None
        if not math.isfinite(number):
            raise ValueError("must be finite (NaN and infinity are not telemetry)")
        return number

    @field_validator("timestamp", mode="before")
    @classmethod
    def _real_time(cls, value: Any) -> datetime:
        return parse_timestamp(value)

    def wire(self, timestamp: datetime | None = None) -> dict[str, Any]:
        """The JSON-ready ``point`` argument; ``timestamp`` replaces the point's own time."""
        body: dict[str, Any] = {
            "gpu_uuid": self.gpu_uuid,
            "metric_name": self.metric_name,
            "value": self.value,
            "timestamp": format_timestamp(self.timestamp if timestamp is None else timestamp),
        }
        if self.labels_raw is not None:
            body["labels_raw"] = self.labels_raw
        if self.gpu_instance is not None:
            body["gpu_instance"] = self.gpu_instance
        return body


# Metadata fields that describe a point's MIG instance rather than its GPU.
INSTANCE_FIELDS = frozenset({"gpu_instance_profile"})


class GpuMetadata(BaseModel):
    """What is known of the GPU that produced a point; every field may be absent."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    hostname: str | None = Field(default=None, max_length=256)
    device: str | None = Field(default=None, max_length=256)
    gpu_index: int | None = Field(default=None, ge=0, le=MAX_GPU_INDEX)
    model_name: str | None = Field(default=None, max_length=256)
    container: str | None = Field(default=None, max_length=256)
    pod: str | None = Field(default=None, max_length=256)
    namespace: str | None = Field(default=None, max_length=256)
    pci_bus_id: str | None = Field(default=None, max_length=256)
    driver_version: str | None = Field(default=None, max_length=256)
    # Describes the point's MIG instance, not the GPU: see :attr:`gpu_items`.
    gpu_instance_profile: str | None = Field(default=None, max_length=256)

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() == "":
            return None
        return value.strip() if isinstance(value, str) else value

    def known(self) -> dict[str, Any]:
        """The fields that have a value, so an upsert never erases what was known."""
        return dict(self.known_items)

    @functools.cached_property
    def known_items(self) -> tuple[tuple[str, Any], ...]:
        """:meth:`known` as pairs, worked out once: the model is frozen, and a GPU's one
        validated metadata serves its every point (:func:`gpu_metadata`)."""
        return tuple((key, value) for key, value in self.model_dump().items() if value is not None)

    @functools.cached_property
    def gpu_items(self) -> tuple[tuple[str, Any], ...]:
        """:attr:`known_items` that describe the GPU, for its ``gpus`` record.

        ``gpu_instance_profile`` is left out: each MIG instance of a GPU has
        its own, so one field of the GPU's record would be overwritten by
        whichever instance reported last.
        """
        return tuple(item for item in self.known_items if item[0] not in INSTANCE_FIELDS)


def parse_timestamp(value: Any) -> datetime:
    """Parse an RFC 3339 time into an aware UTC datetime, refusing times that are not real.

    A time without an offset is taken as UTC. Times before 1970, the Unix
    epoch itself (the usual "zero" of a missing clock) and times more than a
    day ahead are refused.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not an RFC 3339 time: {value!r}") from None
    else:
        raise ValueError("must be an RFC 3339 time string")
    try:
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        # An offset that moves year 1 or 9999 out of datetime's range: no real time either way.
        raise ValueError(f"not a real time (out of range): {value!r}") from None
    if moment <= EPOCH:
        raise ValueError(f"not a real time (zero or before 1970): {value!r}")
    if _FUTURE_LIMIT.passed_by(moment):
        raise ValueError(f"more than a day in the future: {value!r}")
    return moment


class _FutureLimit:
    """The latest time a point may carry: now plus :data:`MAX_FUTURE`.

    Reading the wall clock for every point would be a real share of a
    point's validation (docs/performance.md), and a limit a second stale
    changes nothing for a point within it. So the limit is read again once
    the last reading is a second old, and whenever a time goes past it, so a
    time is refused only against a fresh reading.
    """

    REREAD_AFTER_S = 1.0

    def __init__(self) -> None:
        self._read()

    def _read(self) -> datetime:
        self._read_at = time.monotonic()
        self._limit = datetime.now(UTC) + MAX_FUTURE
        return self._limit

    def passed_by(self, moment: datetime) -> bool:
        """Whether ``moment`` is later than now plus :data:`MAX_FUTURE`."""
        if moment <= self._limit and time.monotonic() - self._read_at <= self.REREAD_AFTER_S:
            return False
        return moment > self._read()


_FUTURE_LIMIT = _FutureLimit()


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, the form producers send."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_labels(raw: str) -> dict[str, str] | None:
    """Parse ``name="value",…`` label text into a dict, or ``None`` if it is not that form."""
    # A GPU's metrics carry the same label text every scrape, so most calls are
    # repeats; only short texts are cached, which bounds the cache at about 8 MiB.
    if len(raw) > LABELS_CACHED_MAX_CHARS:
        return _parse_labels_text(raw)
    labels = _parse_labels_cached(raw)
    return None if labels is None else dict(labels)


LABELS_CACHED_MAX_CHARS = 2048


@functools.lru_cache(maxsize=4096)
def _parse_labels_cached(raw: str) -> dict[str, str] | None:
    return _parse_labels_text(raw)


def _parse_labels_text(raw: str) -> dict[str, str] | None:
    # Two scans in C: one proves the text is nothing but labels, the other takes
    # them; a label's match is fixed by where it starts, so ``findall`` finds the
    # very labels the whole-text match went through, with no Python loop per label
    # (docs/performance.md). It matters beyond the cache: each text names its GPU and
    # metric, so a large enough fleet cycles through the cache's texts and misses
    # every time.
    text = raw.strip()
    if _LABELS.fullmatch(text) is None:
        return None
    return {
        name: _ESCAPED.sub(r"\1", value) if "\\" in value else value
        for name, value in _LABEL.findall(text)
    }


# A task's arguments, in their positional order.
ARGUMENT_NAMES = ("point", "metadata")
_ARGUMENT_NAME_SET = frozenset(ARGUMENT_NAMES)


def split_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    """Take ``point`` and ``metadata`` from a task's arguments, by keyword or position."""
    if not kwargs.keys() <= _ARGUMENT_NAME_SET:
        unknown = set(kwargs) - _ARGUMENT_NAME_SET
        raise InvalidMessage(
            f"unexpected task arguments: {sorted(unknown)}", RejectionKind.INVALID_ARGUMENTS
        )
    if not args:  # keywords only, as the streamer sends them: nothing to reconcile
        values: Mapping[str, Any] = kwargs
    else:
        if len(args) > 2:
            raise InvalidMessage(
                f"expected at most 2 positional arguments, got {len(args)}",
                RejectionKind.INVALID_ARGUMENTS,
            )
        positional = dict(zip(ARGUMENT_NAMES, args, strict=False))
        overlap = positional.keys() & kwargs.keys()
        if overlap:
            raise InvalidMessage(
                f"arguments given twice: {sorted(overlap)}", RejectionKind.INVALID_ARGUMENTS
            )
        values = {**positional, **kwargs}
    if "point" not in values:
        raise InvalidMessage("point: is required", RejectionKind.INVALID_ARGUMENTS)
    return values["point"], values.get("metadata")


def parse_task_arguments(
    args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[Point, GpuMetadata]:
    """Validate a ``telemetry.ingest`` task's arguments into a point and its GPU's metadata."""
    return parse_message(*split_arguments(args, kwargs))


def parse_message(point: Any, metadata: Any) -> tuple[Point, GpuMetadata]:
    """Validate a task's arguments; raise :class:`InvalidMessage` naming the first problem."""
    if not isinstance(point, Mapping):
        raise InvalidMessage(
            f"point: must be a JSON object, got {type(point).__name__}",
            RejectionKind.INVALID_POINT,
        )
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidMessage(
            f"metadata: must be a JSON object, got {type(metadata).__name__}",
            RejectionKind.INVALID_METADATA,
        )
    try:
        parsed_point = Point.model_validate(point)
    except ValidationError as exc:
        raise InvalidMessage(describe_validation_error(exc), RejectionKind.INVALID_POINT) from exc
    try:
        parsed_metadata = gpu_metadata(metadata or {})
    except ValidationError as exc:
        raise InvalidMessage(
            describe_validation_error(exc), RejectionKind.INVALID_METADATA
        ) from exc
    return parsed_point, parsed_metadata


def gpu_metadata(fields: Mapping[str, Any]) -> GpuMetadata:
    """Validate a point's GPU metadata; a GPU sends the same with every point, so once.

    :class:`GpuMetadata` is frozen, so one validated instance can serve every
    point that carried the same fields (the type is part of the key: ``1``,
    ``1.0`` and ``True`` are equal in Python but not as input). Invalid
    metadata raises every time; unhashable values are validated each time.
    """
    try:
        key = frozenset((name, type(value), value) for name, value in fields.items())
    except TypeError:
        return GpuMetadata.model_validate(fields)
    return _validated_metadata(key)


@functools.lru_cache(maxsize=4096)
def _validated_metadata(key: frozenset[tuple[str, type, Any]]) -> GpuMetadata:
    return GpuMetadata.model_validate({name: value for name, _, value in key})


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad field and why, for logs and the ``rejected`` collection."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "message"
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            reason = "is required"
        parts.append(f"{field}: {reason}")
    return "; ".join(parts)
