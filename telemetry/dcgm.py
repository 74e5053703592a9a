"""Reading DCGM exporter CSV files into telemetry points.

The header decides which column is which, so column order may vary and extra
columns are ignored. A UTF-8 byte-order mark and CRLF line endings are
accepted. Each data row becomes a :class:`Row` or, if it cannot be a valid
point, a :class:`BadRow` that says where and why; a bad row never stops the read.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telemetry.errors import CsvFormatError, InvalidMessage
from telemetry.models import GpuMetadata, Point, parse_message

# DCGM column → field of the message contract.
POINT_COLUMNS = {
    "uuid": "gpu_uuid",
    "metric_name": "metric_name",
    "value": "value",
    "timestamp": "timestamp",
    "labels_raw": "labels_raw",
}
METADATA_COLUMNS = {
    "Hostname": "hostname",
    "device": "device",
    "gpu_id": "gpu_index",
    "modelName": "model_name",
    "container": "container",
    "pod": "pod",
    "namespace": "namespace",
}
REQUIRED_COLUMNS = ("timestamp", "metric_name", "uuid", "value")


@dataclass(frozen=True)
class Row:
    """One valid point read from ``path`` at ``line``."""

    path: str
    line: int
    point: Point
    metadata: GpuMetadata


@dataclass(frozen=True)
class BadRow:
    """A row that cannot become a point, with the reason."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def read_dcgm_csv(path: str | Path) -> Iterator[Row | BadRow]:
    """Yield every data row of a DCGM CSV file as a :class:`Row` or :class:`BadRow`.

    Raises :class:`CsvFormatError` before the first row if the header is
    missing or lacks a required column, and ``OSError`` if the file cannot be read.
    """
    name = str(path)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            # A field past the csv module's limit: no header can be read.
            raise CsvFormatError(f"{name}:1: unreadable CSV header: {exc}") from exc
        if header is None:
            raise CsvFormatError(f"{name}: empty file, expected a DCGM CSV header")
        columns = {column.strip(): index for index, column in enumerate(header)}
        missing = [column for column in REQUIRED_COLUMNS if column not in columns]
        if missing:
            raise CsvFormatError(
                f"{name}:1: missing required column(s) {', '.join(missing)}; "
                f"header has {', '.join(columns) or 'nothing'}"
            )
        line = reader.line_num
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield BadRow(name, reader.line_num, f"unreadable CSV: {exc}")
                continue
            # line_num counts physical lines; a quoted field may span several.
            start, line = line + 1, reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            yield parse_row(name, start, fields, columns, len(header))


def parse_row(
    path: str, line: int, fields: list[str], columns: dict[str, int], width: int
) -> Row | BadRow:
    """Turn one CSV record into a :class:`Row`, or a :class:`BadRow` naming the problem."""
    if len(fields) != width:
        return BadRow(path, line, f"expected {width} fields, got {len(fields)}")
    point: dict[str, Any] = {
        field: fields[columns[column]]
        for column, field in POINT_COLUMNS.items()
        if column in columns
    }
    if not point.get("labels_raw"):
        point.pop("labels_raw", None)
    metadata = {
        field: fields[columns[column]]
        for column, field in METADATA_COLUMNS.items()
        if column in columns
    }
    try:
        parsed_point, parsed_metadata = parse_message(point, metadata)
    except InvalidMessage as exc:
        return BadRow(path, line, str(exc))
    return Row(path, line, parsed_point, parsed_metadata)
