"""Log lines: one JSON object per line for machines, plain text for people.

Every process (worker, streamer, the other ``telemetry`` commands) sends its
log records to stderr through one handler set up by :func:`configure_logging`.
``LOG_FORMAT=auto`` (the default) writes JSON unless stderr is a terminal;
``json`` and ``text`` force one or the other. Each JSON line carries ``ts``
(ISO 8601, UTC), ``level``, ``logger``, ``message`` and ``instance_id``, then
any ``extra`` fields of the record (the statistics counters, for one) and
``exception`` with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Literal, TextIO

from telemetry.config import LogFormat

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_BLANK_RECORD = logging.LogRecord("", logging.INFO, "", 0, "", None, None)
_RECORD_ATTRIBUTES = frozenset(vars(_BLANK_RECORD)) | {"message", "asctime", "taskName"}
_BASE_FIELDS = ("ts", "level", "logger", "message", "instance_id")

# Statistics are logged at INFO and must show even when everything else is at WARNING.
STATS_LOGGER = "telemetry.stats"

Context = Callable[[], Mapping[str, object]]


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a record was given through ``extra=``, in the order they were given."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record: the base fields, then the extra fields, then the exception."""

    def __init__(self, instance_id: str, context: Context | None = None) -> None:
        super().__init__()
        self.instance_id = instance_id
        self._context = context

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        body: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "instance_id": self.instance_id,
        }
        if self._context is not None:
            for key, value in self._context().items():
                body.setdefault(key, value)
        for key, value in extra_fields(record).items():
            if key not in _BASE_FIELDS:
                body[key] = value
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            body["exception"] = record.exc_text
        if record.stack_info:
            body["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra field that JSON cannot hold is logged as its text.
        return json.dumps(body, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [instance]: message key=value …`` for a person at a terminal."""

    def __init__(self, instance_id: str, context: Context | None = None) -> None:
        escaped = instance_id.replace("%", "%%")
        super().__init__(f"%(asctime)s %(levelname)-7s %(name)s [{escaped}]: %(message)s")
        self.instance_id = instance_id
        self._context = context

    def format(self, record: logging.LogRecord) -> str:
        """The record as text; extra fields follow the message as ``key=value``."""
        fields = dict(self._context()) if self._context is not None else {}
        fields.update(extra_fields(record))
        fields.pop("instance_id", None)
        line = super().format(record)
        if not fields:
            return line
        pairs = " ".join(f"{key}={value}" for key, value in fields.items())
        head, newline, rest = line.partition("\n")
        return f"{head} {pairs}{newline}{rest}"


class TelemetryLogHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs, so a second call can replace it."""

    def __init__(self, stream: TextIO, log_format: Literal["json", "text"]) -> None:
        super().__init__(stream)
        self.log_format = log_format


def is_terminal(stream: TextIO | None) -> bool:
    """Whether ``stream`` is a terminal (a closed or missing stream is not)."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


def resolve_format(log_format: LogFormat, stream: TextIO | None) -> Literal["json", "text"]:
    """``auto`` means text on a terminal and JSON anywhere else."""
    if log_format == "auto":
        return "text" if is_terminal(stream) else "json"
    return log_format


def configure_logging(
    instance_id: str,
    log_format: LogFormat = "auto",
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    context: Context | None = None,
) -> Literal["json", "text"]:
    """Send every log record of this process to ``stream`` (stderr) in one format.

    Replaces the handler of an earlier call, so a command can configure
    logging early and again once it knows its settings. ``context`` adds
    fields to every line (the worker adds the running task's id). Returns
    the format chosen.
    """
    target = stream if stream is not None else sys.stderr
    chosen = resolve_format(log_format, target)
    formatter: logging.Formatter = (
        JsonFormatter(instance_id, context)
        if chosen == "json"
        else TextFormatter(instance_id, context)
    )
    handler = TelemetryLogHandler(target, chosen)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, TelemetryLogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    stats_logger = logging.getLogger(STATS_LOGGER)
    stats_logger.setLevel(logging.INFO)
    stats_logger.propagate = True
    return chosen


def current_format() -> Literal["json", "text"] | None:
    """The format :func:`configure_logging` chose for this process, or None before it ran."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, TelemetryLogHandler):
            return handler.log_format
    return None
