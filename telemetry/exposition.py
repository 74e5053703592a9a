"""Prometheus text exposition (format 0.0.4) parsed into samples, fast and without raising.

A scrape body becomes an :class:`Exposition`: its samples in the order
written, the TYPE of each family that declared one, and the lines that could
not be read, counted by :class:`DropReason` with the first few kept for logs.
A bad line never stops the parse.

What is accepted beyond the letter of the format, because exporters write it:

- leading and trailing blanks and tabs on any line, CRLF line ends, blank
  lines, and HELP/TYPE/other ``#`` lines anywhere;
- blanks around ``=`` and after the commas of a label set, a leading or
  trailing comma, empty label values, no blank between ``}`` and the value;
- label values that dcgm-exporter writes without escaping (see
  :func:`parse_label_text`).

Values are read as Prometheus reads them (``NaN``, ``+Inf`` and ``-Inf``
included); a value that is not a number drops its line as
:attr:`DropReason.NON_NUMERIC`. Timestamps are integer milliseconds, at most 19 digits
(an int64, as Prometheus keeps them); a longer one drops its line. Sample
names are kept as written: a counter's sample is not renamed to ``…_total``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple


class DropReason(StrEnum):
    """Why a line that should have been a sample was not kept."""

    BAD_LINE = "bad_line"
    NON_NUMERIC = "non_numeric"


class Sample(NamedTuple):
    """One sample line: a series (name and labels) with a value and an optional time."""

    name: str
    labels: dict[str, str]
    value: float
    # The value exactly as written, so callers can tell ``7`` from ``7.0``.
    value_text: str
    timestamp_ms: int | None
    # The label set as written between the braces ("" without one); equal texts
    # mean equal labels, so per-series work can be cached on it.
    labels_text: str = ""


class DroppedLine(NamedTuple):
    """A line that was dropped: where, why, and its start, for a log line."""

    line_number: int
    reason: DropReason
    detail: str
    text: str


@dataclass(slots=True)
class Exposition:
    """A parsed scrape body."""

    samples: list[Sample] = field(default_factory=list)
    # Dropped lines per reason (a :class:`DropReason` value).
    dropped: dict[str, int] = field(default_factory=dict)
    # The first :data:`MAX_DROPPED_LINES` dropped lines, in order.
    dropped_lines: list[DroppedLine] = field(default_factory=list)
    # Family name → the type its ``# TYPE`` line declared.
    types: dict[str, str] = field(default_factory=dict)


MAX_DROPPED_LINES = 5
DROPPED_TEXT_CHARS = 120

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
# What Go's strconv.ParseFloat reads in decimal, which Python's float() reads the
# same way; float() alone would also take "1_000" and non-ASCII digits. Each digit can
# belong to one part only: with "[0-9]+\.?[0-9]*" a line that fails to match after a
# run of digits backtracked through every split of it, in time that grows with the
# square of the run: a hostile exposition could stall a scrape.
_NUMBER = r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan))"
# Milliseconds as Prometheus keeps them, an int64: at most 19 digits. The bound also
# keeps int() below its 4,300-digit limit, past which it raises.
_TIMESTAMP = r"[+-]?[0-9]{1,19}"

# The common line, whole: name, label set, value and timestamp in one match. The
# label set runs to the line's last "}" (sre finds it by backing up from the end,
# which is cheaper than walking the quoted values); whether it is really a label
# set is checked, and cached, on its text.
_SAMPLE_LINE = re.compile(
    rf"[ \t]*({_NAME})(?:\{{(.*)\}}[ \t]*|[ \t]+)({_NUMBER})(?:[ \t]+({_TIMESTAMP}))?[ \t]*\r?"
)
_NAME_ONLY = re.compile(_NAME)
_NUMBER_ONLY = re.compile(_NUMBER)
_TIMESTAMP_ONLY = re.compile(_TIMESTAMP)

# A label set by the format: name="value" with \\ \" \n escapes (any other
# escaped character is kept with its backslash), comma-separated.
# Blanks are matched in one place each (never "[ \t]*,?[ \t]*", two patterns that can
# share a run of blanks): label text that fails to match after a long run of blanks
# otherwise backtracks through every split of it, in time that grows with the square
# of the run: a hostile exposition could stall a scrape.
_STRICT_LABEL = rf'({_LABEL_NAME})[ \t]*=[ \t]*"([^"\\]*(?:\\.[^"\\]*)*)"[ \t]*(?:,[ \t]*|$)'
_STRICT_LABEL_RE = re.compile(_STRICT_LABEL)
_STRICT_LABELS = re.compile(rf"[ \t]*(?:,[ \t]*)?(?:{_STRICT_LABEL})*")
_ESCAPE = re.compile(r'\\([\\"n])')
_UNESCAPED = {"\\": "\\", '"': '"', "n": "\n"}

# The lenient reading: a label's opening, then the quote that closes its value,
# which is the first one followed by another label's opening or by the end.
_LENIENT_OPEN = re.compile(rf'[ \t]*(?:,[ \t]*)?({_LABEL_NAME})[ \t]*=[ \t]*"')
_LENIENT_CLOSE = re.compile(rf'"[ \t]*(?:,[ \t]*(?={_LABEL_NAME}[ \t]*=[ \t]*")|(?:,[ \t]*)?$)')
_LENIENT_REST = re.compile(r"[ \t,]*\Z")

# Label text → its labels, or the reason it is not a label set. Each series
# writes the same text every scrape; the bounds keep a fleet-wide scraper's memory flat.
_LABEL_CACHE: dict[str, dict[str, str] | str] = {}
LABEL_CACHE_MAX_ENTRIES = 8192
LABEL_CACHE_MAX_CHARS = 4096


def parse_exposition(text: str) -> Exposition:
    """Parse a text-format scrape body into samples; bad lines are counted, never raised."""
    result = Exposition()
    samples = result.samples
    append = samples.append
    match_line = _SAMPLE_LINE.fullmatch
    cache = _LABEL_CACHE
    new_tuple = tuple.__new__
    for number, line in enumerate(text.split("\n"), 1):
        match = match_line(line)
        if match is None:
            # HELP lines are as many as samples in most layouts and carry nothing we keep.
            if not line.startswith("# HELP "):
                _read_other_line(result, number, line)
            continue
        name, labels_text, value_text, timestamp_text = match.groups()
        if labels_text is None:
            labels: dict[str, str] = {}
            labels_text = ""
        else:
            parsed = cache.get(labels_text)
            if parsed is None:
                parsed = _cached_labels(labels_text)
            if type(parsed) is str:
                _drop(result, number, DropReason.BAD_LINE, parsed, line)
                continue
            # Each sample gets its own dict: the cached one must not be changed.
            labels = parsed.copy()  # type: ignore[union-attr]
        timestamp_ms = None if timestamp_text is None else int(timestamp_text)
        # tuple.__new__ skips the named tuple's Python-level __new__, which costs per sample.
        append(
            new_tuple(
                Sample, (name, labels, float(value_text), value_text, timestamp_ms, labels_text)
            )
        )
    return result


def parse_label_text(text: str) -> dict[str, str] | None:
    """The labels of a label set's inner text (``a="1",b="2"``), or None if it is not one.

    The text is read by the format first: values in double quotes with the
    escapes ``\\\\``, ``\\"`` and ``\\n``; a backslash before any other character
    is kept as written, as Prometheus's own Python parser keeps it. A repeated
    label name makes it no label set.

    dcgm-exporter writes label values without escaping, so when that reading
    fails the text is read again leniently: a value then ends at the first
    ``"`` that is followed by a comma and the next label's ``name="``, or by
    the end of the label set (blanks and one comma allowed). Any other ``"``
    inside a value, and a backslash before that closing quote, are part of the
    value (``model="A "B" C"`` is ``A "B" C``; ``path="C:\\"`` is ``C:\\``).
    A raw value that itself holds ``",name="`` cannot be told from two labels
    and is read as two.
    """
    parsed = _LABEL_CACHE.get(text)
    if parsed is None:
        parsed = _cached_labels(text)
    return None if isinstance(parsed, str) else dict(parsed)


def clear_label_cache() -> None:
    """Forget every cached label set (benchmarks measure a cold parse with it)."""
    _LABEL_CACHE.clear()


def _cached_labels(text: str) -> dict[str, str] | str:
    parsed = _read_labels(text)
    if len(text) > LABEL_CACHE_MAX_CHARS:
        return parsed
    if len(_LABEL_CACHE) >= LABEL_CACHE_MAX_ENTRIES:
        _LABEL_CACHE.clear()
    _LABEL_CACHE[text] = parsed
    return parsed


def _read_labels(text: str) -> dict[str, str] | str:
    """Labels by the format, else leniently; a str is why neither worked."""
    if _STRICT_LABELS.fullmatch(text) is not None:
        labels: dict[str, str] = {}
        for name, value in _STRICT_LABEL_RE.findall(text):
            if name in labels:
                return f"label {name} repeated"
            labels[name] = _unescape(value) if "\\" in value else value
        return labels
    return _read_labels_leniently(text)


def _read_labels_leniently(text: str) -> dict[str, str] | str:
    labels: dict[str, str] = {}
    position, end = 0, len(text)
    while _LENIENT_REST.match(text, position) is None:
        opening = _LENIENT_OPEN.match(text, position)
        if opening is None:
            return f"not a label set at character {position + 1}"
        closing = _LENIENT_CLOSE.search(text, opening.end())
        if closing is None:
            return f"label {opening.group(1)} has no closing quote"
        name, value = opening.group(1), text[opening.end() : closing.start()]
        if name in labels:
            return f"label {name} repeated"
        labels[name] = _unescape(value) if "\\" in value else value
        position = closing.end()
        if position >= end:
            break
    return labels


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda escape: _UNESCAPED[escape.group(1)], value)


def _read_other_line(result: Exposition, number: int, line: str) -> None:
    """A line the common shape did not match: blank, comment, or a sample to diagnose."""
    stripped = line.strip()
    if not stripped:
        return
    if stripped[0] == "#":
        parts = stripped.split(None, 3)
        if len(parts) == 4 and parts[1] == "TYPE" and _NAME_ONLY.fullmatch(parts[2]):
            result.types[parts[2]] = parts[3].strip()
        return
    brace = stripped.find("{")
    labels: dict[str, str] | str
    if brace < 0:
        name = stripped.split(None, 1)[0]
        rest = stripped[len(name) :]
        labels, labels_text = {}, ""
    else:
        close = stripped.rfind("}")
        if close < brace:
            _drop(result, number, DropReason.BAD_LINE, "label set not closed", line)
            return
        name, labels_text = stripped[:brace].strip(), stripped[brace + 1 : close]
        rest = stripped[close + 1 :]
        labels = _LABEL_CACHE.get(labels_text) or _cached_labels(labels_text)
    if _NAME_ONLY.fullmatch(name) is None:
        _drop(result, number, DropReason.BAD_LINE, "no valid metric name", line)
        return
    if isinstance(labels, str):
        _drop(result, number, DropReason.BAD_LINE, labels, line)
        return
    fields = rest.split()
    if not fields:
        _drop(result, number, DropReason.BAD_LINE, "no value", line)
        return
    if _NUMBER_ONLY.fullmatch(fields[0]) is None:
        _drop(result, number, DropReason.NON_NUMERIC, "value is not a number", line)
        return
    if len(fields) > 2:
        _drop(result, number, DropReason.BAD_LINE, "text after the timestamp", line)
        return
    timestamp_ms = None
    if len(fields) == 2:
        if _TIMESTAMP_ONLY.fullmatch(fields[1]) is None:
            _drop(result, number, DropReason.BAD_LINE, "timestamp is not a 64-bit integer", line)
            return
        timestamp_ms = int(fields[1])
    # Reached only by unusual blanks (a form feed, say) that the common shape refuses.
    result.samples.append(
        Sample(name, dict(labels), float(fields[0]), fields[0], timestamp_ms, labels_text)
    )


def _drop(result: Exposition, number: int, reason: DropReason, detail: str, line: str) -> None:
    result.dropped[reason] = result.dropped.get(reason, 0) + 1
    if len(result.dropped_lines) < MAX_DROPPED_LINES:
        text = line.strip()
        if len(text) > DROPPED_TEXT_CHARS:
            text = text[: DROPPED_TEXT_CHARS - 1] + "…"
        result.dropped_lines.append(DroppedLine(number, reason, detail, text))
