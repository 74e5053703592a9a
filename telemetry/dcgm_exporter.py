"""One dcgm-exporter scrape's samples turned into message-contract points.

Each sample of a GPU becomes a ``(point, metadata)`` pair of wire-form dicts,
ready for ``build_task_message``. Samples that cannot or must not be stored
are counted per :class:`SkipReason` instead. The mapping of labels:

- the GPU: ``UUID``, else ``uuid`` (the old naming mode), else ``gpu_uuid``
  (NvLink series); without one the sample is not a GPU's (``go_*``,
  label-less series) and is skipped as :attr:`SkipReason.NO_UUID`;
- the MIG instance: ``GPU_I_ID`` → the point's ``gpu_instance`` (absent for
  the whole GPU);
- metadata: ``Hostname``/``hostname`` → ``hostname``, ``modelName``/``model_name``
  → ``model_name``, ``gpu`` → ``gpu_index`` (when it is an integer MongoDB can store),
  ``device``, ``pci_bus_id``, ``DCGM_FI_DRIVER_VERSION`` → ``driver_version``,
  ``GPU_I_PROFILE`` → ``gpu_instance_profile``, and ``pod``, ``namespace``,
  ``container``; blank values are left out. Where two spellings of one field
  are present the first listed that is not blank wins, and neither goes to
  the labels;
- every other label, then each extra label (from the targets file) whose
  name the sample does not carry itself, goes to ``labels_raw``: the sample's
  own label wins a clash, since it describes the series and the extra ones
  only the target.

Every point of a scrape is stamped with the scrape's start, so one scrape's
points line up; a sample's own timestamp is kept instead when
``honor_timestamps`` is set. A point is stored under {gpu_uuid, gpu_instance,
metric_name, timestamp}, so of several series of one GPU, instance and metric
in a scrape (time-sliced GPUs report one per pod; NvLink series one per link)
only the first is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from telemetry.exposition import DroppedLine, DropReason, Exposition, parse_exposition
from telemetry.models import (
    EPOCH,
    MAX_FUTURE,
    MAX_GPU_INDEX,
    MAX_GPU_INSTANCE_CHARS,
    MAX_LABELS_RAW_CHARS,
    format_timestamp,
)


class SkipReason(StrEnum):
    """Why a line or sample of a scrape became no point."""

    BAD_LINE = DropReason.BAD_LINE.value
    NON_NUMERIC = DropReason.NON_NUMERIC.value
    NO_UUID = "no_uuid"
    # DCGM's "no value" placeholders: integers from 2**63 - 16, floats from 2**47.
    BLANK = "blank"
    NON_FINITE = "non_finite"
    DUPLICATE_SERIES = "duplicate_series"
    # A sample's own timestamp that is no real time (zero, negative, out of range), or
    # more than the contract's day after the scrape, which the worker would reject.
    BAD_TIMESTAMP = "bad_timestamp"
    # A UUID, metric name, instance or label text longer than the contract allows.
    TOO_LONG = "too_long"


class ScrapedPoints(NamedTuple):
    """What one scrape yields: its points, and what was skipped per reason."""

    points: list[tuple[dict[str, Any], dict[str, Any]]]
    skipped: dict[str, int]
    # The parser's first few dropped lines, for a log line.
    dropped_lines: list[DroppedLine]


BLANK_INT_MIN = 9_223_372_036_854_775_792
BLANK_FLOAT_MIN = 140_737_488_355_328.0
MAX_NAME_CHARS = 256
MAX_METADATA_CHARS = 256

UUID_LABELS = ("UUID", "uuid", "gpu_uuid")
INSTANCE_LABEL = "GPU_I_ID"
# Metadata field → the labels that spell it, in order of preference.
METADATA_LABELS: dict[str, tuple[str, ...]] = {
    "hostname": ("Hostname", "hostname"),
    "model_name": ("modelName", "model_name"),
    "gpu_index": ("gpu",),
    "device": ("device",),
    "pci_bus_id": ("pci_bus_id",),
    "driver_version": ("DCGM_FI_DRIVER_VERSION",),
    "gpu_instance_profile": ("GPU_I_PROFILE",),
    "pod": ("pod",),
    "namespace": ("namespace",),
    "container": ("container",),
}
MAPPED_LABELS = frozenset(
    {*UUID_LABELS, INSTANCE_LABEL, *(name for names in METADATA_LABELS.values() for name in names)}
)


class _Series(NamedTuple):
    """What a label set means, worked out once per label text."""

    # None when the label set names no GPU or breaks a limit; ``skip`` says which.
    uuid: str | None
    skip: SkipReason | None
    # The series' identity without the metric: the UUID and the instance ("" for none).
    gpu_key: tuple[str, str]
    # The point's optional fields (labels_raw, gpu_instance), merged into each point.
    point_fields: dict[str, str]
    metadata: dict[str, Any]


# Extra labels → {label text → series}; bounded like the parser's label cache.
_SERIES_CACHE: dict[tuple[tuple[str, str], ...], dict[str, _Series]] = {}
SERIES_CACHE_MAX_ENTRIES = 8192


def points_from_text(
    text: str,
    scraped_at: datetime,
    extra_labels: Mapping[str, str] | None = None,
    honor_timestamps: bool = True,
) -> ScrapedPoints:
    """Parse a scrape body and turn it into points; see :func:`points_from_samples`."""
    return points_from_samples(parse_exposition(text), scraped_at, extra_labels, honor_timestamps)


def points_from_samples(
    exposition: Exposition,
    scraped_at: datetime,
    extra_labels: Mapping[str, str] | None = None,
    honor_timestamps: bool = True,
) -> ScrapedPoints:
    """Turn one scrape's samples into ``(point, metadata)`` wire dicts, in sample order.

    ``scraped_at`` is when the scrape started (a naive time is taken as UTC);
    ``extra_labels`` are the target's labels. ``skipped`` counts, per
    :class:`SkipReason`, the parser's dropped lines and the samples skipped here.
    Each point and metadata dict is the caller's own.
    """
    extra = tuple(extra_labels.items()) if extra_labels else ()
    series_of = _SERIES_CACHE.get(extra)
    if series_of is None:
        if len(_SERIES_CACHE) >= 64:  # a few targets files at a time, not thousands
            _SERIES_CACHE.clear()
        series_of = _SERIES_CACHE[extra] = {}
    if scraped_at.tzinfo is None:
        scraped_at = scraped_at.replace(tzinfo=UTC)
    scrape_time = format_timestamp(scraped_at)
    latest_ms = _epoch_ms(scraped_at + MAX_FUTURE)
    own_times: dict[int, str | None] = {}

    points: list[tuple[dict[str, Any], dict[str, Any]]] = []
    append = points.append
    skipped: dict[str, int] = dict(exposition.dropped)
    seen: set[tuple[tuple[str, str], str]] = set()
    for sample in exposition.samples:
        name, labels, value, value_text, timestamp_ms, labels_text = sample
        key = labels_text or _labels_key(labels)
        series = series_of.get(key)
        if series is None:
            series = _series(labels, extra)
            if len(series_of) >= SERIES_CACHE_MAX_ENTRIES:
                series_of.clear()
            series_of[key] = series
        reason: SkipReason | None = series.skip
        if reason is None:
            # NaN and ±Inf are the only floats for which x - x is not 0.
            if value - value != 0.0:
                reason = SkipReason.NON_FINITE
            elif value >= BLANK_FLOAT_MIN and _is_blank(value_text):
                reason = SkipReason.BLANK
            elif len(name) > MAX_NAME_CHARS:
                reason = SkipReason.TOO_LONG
            else:
                identity = (series.gpu_key, name)
                if identity in seen:
                    reason = SkipReason.DUPLICATE_SERIES
                else:
                    seen.add(identity)
        if reason is None and honor_timestamps and timestamp_ms is not None:
            timestamp = own_times.get(timestamp_ms, "")
            if timestamp == "":
                timestamp = own_times[timestamp_ms] = _format_ms(timestamp_ms, latest_ms)
            if timestamp is None:
                reason = SkipReason.BAD_TIMESTAMP
        else:
            timestamp = scrape_time
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        point: dict[str, Any] = {
            "gpu_uuid": series.uuid,
            "metric_name": name,
            "value": value,
            "timestamp": timestamp,
        }
        if series.point_fields:
            point.update(series.point_fields)
        append((point, series.metadata.copy()))
    return ScrapedPoints(points, skipped, exposition.dropped_lines)


def render_labels(labels: Mapping[str, str]) -> str:
    """``name="value",…`` with ``\\`` and ``"`` escaped, which ``parse_labels`` reads back.

    A newline stays as it is: ``parse_labels`` reads ``\\n`` as ``n``.
    """
    return ",".join(
        f'{name}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for name, value in labels.items()
    )


def clear_series_cache() -> None:
    """Forget every cached label set's mapping (benchmarks measure a cold mapping with it)."""
    _SERIES_CACHE.clear()


def _labels_key(labels: dict[str, str]) -> str:
    # Samples built by hand carry no label text; their rendered labels stand in for it.
    return render_labels(labels) if labels else ""


def _is_blank(value_text: str) -> bool:
    """Whether a value at or above the float placeholder is one of DCGM's placeholders."""
    text = value_text.lower()
    if "." in text or "e" in text:
        return True
    try:
        return int(text) >= BLANK_INT_MIN
    except ValueError:  # the parser passes only numbers; this is for hand-built samples
        return True


def _epoch_ms(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _format_ms(timestamp_ms: int, latest_ms: int) -> str | None:
    if timestamp_ms <= 0 or timestamp_ms > latest_ms:
        return None
    try:
        return format_timestamp(EPOCH + timedelta(milliseconds=timestamp_ms))
    except OverflowError:
        return None


def _series(labels: Mapping[str, str], extra: tuple[tuple[str, str], ...]) -> _Series:
    """Map one label set to its GPU, instance, metadata and remaining labels."""
    uuid = _first_filled(labels, UUID_LABELS)
    if uuid is None:
        return _Series(None, SkipReason.NO_UUID, ("", ""), {}, {})
    instance = _first_filled(labels, (INSTANCE_LABEL,))
    metadata: dict[str, Any] = {}
    for field, names in METADATA_LABELS.items():
        value = _first_filled(labels, names)
        if value is None or len(value) > MAX_METADATA_CHARS:
            continue
        if field == "gpu_index":
            if not (value.isascii() and value.isdigit()) or int(value) > MAX_GPU_INDEX:
                continue
            metadata[field] = int(value)
        else:
            metadata[field] = value
    rest = {name: value for name, value in labels.items() if name not in MAPPED_LABELS}
    for name, value in extra:
        if name not in labels:
            rest.setdefault(name, value)
    point_fields: dict[str, str] = {}
    if rest:
        point_fields["labels_raw"] = render_labels(rest)
    if instance is not None:
        point_fields["gpu_instance"] = instance
    too_long = (
        len(uuid) > MAX_NAME_CHARS
        or len(point_fields.get("labels_raw", "")) > MAX_LABELS_RAW_CHARS
        or (instance is not None and len(instance) > MAX_GPU_INSTANCE_CHARS)
    )
    if too_long:
        return _Series(None, SkipReason.TOO_LONG, ("", ""), {}, {})
    return _Series(uuid, None, (uuid, instance or ""), point_fields, metadata)


def _first_filled(labels: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` with a non-blank value, stripped as the contract strips it."""
    for name in names:
        value = labels.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None
