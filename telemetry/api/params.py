"""Request parameters of the read API: parsing, limits, and keyset cursors.

Everything a client sends is checked here, before any database is asked, so
a bad request is a 400 whether or not the GPU it names exists. Nothing here
touches MongoDB; :mod:`telemetry.api.queries` only ever receives the typed
values these functions return, never the client's raw text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from telemetry.models import EPOCH
from telemetry.store.port import Aggregation, PageAfter

# Page sizes: the defaults and caps of the issue, so one request reads a bounded number of rows.
GPU_LIMIT_DEFAULT = 100
GPU_LIMIT_MAX = 1_000
POINT_LIMIT_DEFAULT = 1_000
POINT_LIMIT_MAX = 10_000
# A downsampled query groups every point of its window in the database, so the
# window itself is what bounds the work: at most this long, and both ends given.
MAX_DOWNSAMPLE_WINDOW = timedelta(days=31)
STEP_MIN = timedelta(seconds=1)
STEP_MAX = timedelta(days=1)
# How many metric_name values one request may name; more is not a dashboard, it is a scan.
MAX_METRIC_NAMES = 100
# Longest identifier accepted (the collector stores at most 256 characters too).
MAX_NAME_CHARS = 256
# Longest MIG instance id accepted: the collector stores at most 64 characters.
MAX_INSTANCE_CHARS = 64

AGGREGATIONS: tuple[Aggregation, ...] = ("avg", "min", "max", "last")

# RFC 3339 date-time: a full date, "T", a time with optional fraction, and a
# zone. The zone is required: a time without one would silently mean the
# server's idea of a zone.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$"
)
_STEP = re.compile(r"^([1-9][0-9]{0,5})(s|m|h|d)$")
_STEP_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


class ApiError(Exception):
    """A request the API answers with ``{"error": code, "message": text}`` and ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(code: str, message: str) -> ApiError:
    """A 400 with ``code``."""
    return ApiError(400, code, message)


def parse_time(name: str, raw: str | None) -> datetime | None:
    """An RFC 3339 parameter as an aware UTC datetime, truncated to BSON's milliseconds."""
    if raw is None:
        return None
    text = raw.strip()
    # A literal "+02:00" in a query string arrives as " 02:00": say so.
    hint = "; a '+' in a URL must be written %2B" if " " in text else ""
    if not _RFC3339.match(text):
        raise bad_request(
            "invalid_time",
            f"{name}={raw!r} is not an RFC 3339 time such as 2025-07-18T20:42:34Z{hint}",
        )
    # Python accepts at most 6 fraction digits; BSON keeps 3, so cut to 6 first.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise bad_request("invalid_time", f"{name}={raw!r} is not a real date and time") from None
    moment = moment.astimezone(UTC)
    # BSON datetimes hold milliseconds; a finer bound would never match a stored point exactly.
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and a ``Z``: the one time format the API returns."""
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def parse_step(raw: str | None) -> timedelta | None:
    """A bucket width such as ``60s``, ``5m``, ``1h`` or ``1d``; between 1 s and 1 day."""
    if raw is None:
        return None
    matched = _STEP.match(raw.strip())
    if not matched:
        raise bad_request(
            "invalid_step",
            f"step={raw!r} is not a duration: a whole number and a unit s, m, h or d, e.g. 60s",
        )
    step = timedelta(seconds=int(matched[1]) * _STEP_UNITS[matched[2]])
    if not STEP_MIN <= step <= STEP_MAX:
        raise bad_request("invalid_step", f"step={raw!r} must be between 1s and 1d")
    return step


def format_step(step: timedelta) -> str:
    """The shortest exact spelling of ``step`` (``90s``, ``5m``, ``1d``)."""
    seconds = int(step.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def check_name(name: str, value: str) -> str:
    """An identifier parameter (GPU uuid, metric, hostname): non-blank, bounded."""
    if not value.strip():
        raise bad_request("invalid_parameter", f"{name} must not be empty")
    if len(value) > MAX_NAME_CHARS:
        raise bad_request("invalid_parameter", f"{name} is longer than {MAX_NAME_CHARS} characters")
    return value


def check_instance(value: str | None) -> str | None:
    """The ``instance`` parameter, a MIG instance id: non-blank, bounded, compared as given."""
    if value is None:
        return None
    if not value.strip():
        raise bad_request("invalid_parameter", "instance must not be empty")
    if len(value) > MAX_INSTANCE_CHARS:
        raise bad_request(
            "invalid_parameter", f"instance is longer than {MAX_INSTANCE_CHARS} characters"
        )
    # The collector stores ids stripped; a padded id would match nothing.
    return value.strip()


@dataclass(frozen=True)
class TelemetryQuery:
    """A checked ``/telemetry`` request: everything the database query is built from."""

    gpu_uuid: str
    metric_names: tuple[str, ...]
    start: datetime | None
    end: datetime | None
    step: timedelta | None
    agg: Aggregation | None
    limit: int
    gpu_instance: str | None = None

    def identity(self) -> str:
        """A digest of what the request selects, bound into its cursors.

        A cursor handed to a request that selects something else would page
        through the wrong data silently; with the digest it is a 400 instead.
        The limit is left out: a client may change its page size mid-way.
        """
        parts = [
            self.gpu_uuid,
            list(self.metric_names),
            self.start.isoformat() if self.start else None,
            self.end.isoformat() if self.end else None,
            self.step.total_seconds() if self.step else None,
            self.agg,
            self.gpu_instance,
        ]
        return query_digest("telemetry", parts)


def telemetry_query(
    gpu_uuid: str,
    metric_names: list[str] | None,
    start_time: str | None,
    end_time: str | None,
    step: str | None,
    agg: Aggregation | None,
    limit: int,
    instance: str | None = None,
) -> TelemetryQuery:
    """Check every ``/telemetry`` parameter together; raise :class:`ApiError` on the first wrong."""
    check_name("gpu uuid", gpu_uuid)
    gpu_instance = check_instance(instance)
    names = sorted({check_name("metric_name", name) for name in metric_names or []})
    if len(names) > MAX_METRIC_NAMES:
        raise bad_request(
            "invalid_parameter", f"at most {MAX_METRIC_NAMES} metric_name values per request"
        )
    start = parse_time("start_time", start_time)
    end = parse_time("end_time", end_time)
    if start is not None and end is not None and start > end:
        raise bad_request(
            "invalid_window",
            f"start_time {format_time(start)} is after end_time {format_time(end)}",
        )
    width = parse_step(step)
    if agg is not None and width is None:
        raise bad_request("invalid_agg", "agg needs step: it names how each step is summarised")
    if width is not None:
        if start is None or end is None:
            raise bad_request(
                "invalid_window", "step needs both start_time and end_time: the window to summarise"
            )
        if end - start > MAX_DOWNSAMPLE_WINDOW:
            raise bad_request(
                "window_too_large",
                f"a downsampled window may span at most {MAX_DOWNSAMPLE_WINDOW.days} days",
            )
    return TelemetryQuery(
        gpu_uuid=gpu_uuid,
        metric_names=tuple(names),
        start=start,
        end=end,
        step=width,
        agg=(agg or "avg") if width is not None else None,
        limit=limit,
        gpu_instance=gpu_instance,
    )


def query_digest(kind: str, parts: list[Any]) -> str:
    """Eight hex digits naming a query; collisions only weaken a sanity check."""
    text = json.dumps([kind, *parts], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def encode_cursor(digest: str, key: list[Any]) -> str:
    """An opaque, URL-safe cursor: the last key a page returned, and its query digest."""
    body = json.dumps({"q": digest, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def decode_cursor(raw: str | None, digest: str) -> list[Any] | None:
    """The key inside ``raw``; 400 when it is not one of ours or was made for another query."""
    if raw is None:
        return None
    try:
        padded = raw + "=" * (-len(raw) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        raise bad_request("invalid_cursor", "cursor is not one this API returned") from None
    if not isinstance(body, dict) or not isinstance(body.get("k"), list):
        raise bad_request("invalid_cursor", "cursor is not one this API returned")
    if body.get("q") != digest:
        raise bad_request(
            "invalid_cursor",
            "cursor belongs to a request with other parameters; repeat those, or start over",
        )
    key: list[Any] = body["k"]
    return key


def point_key(key: list[Any]) -> PageAfter:
    """A telemetry cursor key, ``[epoch milliseconds, metric_name, gpu_instance]``, checked."""
    if (
        len(key) != 3
        or not isinstance(key[0], int)
        or isinstance(key[0], bool)
        or not isinstance(key[1], str)
        or not isinstance(key[2], str)
    ):
        raise bad_request("invalid_cursor", "cursor is not one this API returned")
    try:
        # Integer arithmetic: a float division could land a millisecond off the stored key.
        moment = EPOCH + timedelta(milliseconds=key[0])
    except OverflowError:
        raise bad_request("invalid_cursor", "cursor is not one this API returned") from None
    return PageAfter(moment, key[1], key[2])
