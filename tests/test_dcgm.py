"""The DCGM CSV parser, on the real sample and on synthetic bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from telemetry.cli import SAMPLE_CSV
from telemetry.dcgm import BadRow, CsvFormatError, Row, read_dcgm_csv

HEADER = (
    "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,"
    "namespace,value,labels_raw"
)
GOOD = (
    '"2025-07-18T20:42:34Z","DCGM_FI_DEV_GPU_TEMP","0","nvidia0","GPU-a","H100","host-1",'
    '"","","","41","gpu=""0"",Hostname=""host-1"""'
)


def write(tmp_path: Path, text: str, name: str = "x.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_real_sample_has_2470_valid_rows_of_247_gpus_31_hosts_10_metrics() -> None:
    rows = list(read_dcgm_csv(SAMPLE_CSV))
    valid = [row for row in rows if isinstance(row, Row)]
    assert len(rows) == len(valid) == 2470
    assert len({row.point.gpu_uuid for row in valid}) == 247
    assert len({row.metadata.hostname for row in valid}) == 31
    assert len({row.point.metric_name for row in valid}) == 10
    first = valid[0]
    assert first.line == 2
    assert first.metadata.gpu_index == 0
    assert first.point.labels_raw is not None and 'modelName="NVIDIA H100 80GB HBM3"' in (
        first.point.labels_raw
    )


def test_quoted_fields_with_escaped_quotes_and_commas_are_kept_whole(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n{GOOD}\n")
    (row,) = read_dcgm_csv(path)
    assert isinstance(row, Row)
    assert row.point.labels_raw == 'gpu="0",Hostname="host-1"'
    assert row.point.value == 41.0


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, f"\ufeff{HEADER}\r\n{GOOD}\r\n{GOOD}\r\n")
    rows = list(read_dcgm_csv(path))
    assert [type(row) for row in rows] == [Row, Row]
    assert [row.line for row in rows] == [2, 3]


def test_column_order_may_vary_and_extra_columns_are_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "value,extra,uuid,timestamp,metric_name\n"
        "7.5,whatever,GPU-b,2025-07-18T20:42:34Z,DCGM_FI_DEV_SM_CLOCK\n",
    )
    (row,) = read_dcgm_csv(path)
    assert isinstance(row, Row)
    assert (row.point.gpu_uuid, row.point.value, row.metadata.hostname) == ("GPU-b", 7.5, None)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (GOOD.replace('"GPU-a"', '""'), "gpu_uuid"),
        (GOOD.replace('"2025-07-18T20:42:34Z"', '"18/07/2025 20:42"'), "not an RFC 3339 time"),
        (GOOD.replace('"41"', '"hot"'), "value: not a number: 'hot'"),
        (GOOD.replace('"41"', '""'), "value: not a number"),
        (GOOD.replace('"","","",', '"","",'), "expected 12 fields, got 11"),
        (GOOD + ',"surplus"', "expected 12 fields, got 13"),
    ],
)
def test_bad_row_is_reported_with_file_line_and_reason_and_reading_goes_on(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = write(tmp_path, f"{HEADER}\n{GOOD}\n{line}\n{GOOD}\n")
    rows = list(read_dcgm_csv(path))
    assert [type(row) for row in rows] == [Row, BadRow, Row]
    bad = rows[1]
    assert isinstance(bad, BadRow)
    assert bad.line == 3
    assert str(bad).startswith(f"{path}:3: ")
    assert reason in bad.reason


def test_line_numbers_count_physical_lines_of_multiline_fields(tmp_path: Path) -> None:
    multiline = GOOD.replace('"host-1","",', '"host-1","a\nb",')
    path = write(tmp_path, f"{HEADER}\n{multiline}\n{GOOD.replace('41', 'x')}\n")
    rows = list(read_dcgm_csv(path))
    assert isinstance(rows[0], Row)
    assert isinstance(rows[1], BadRow) and rows[1].line == 4


def test_missing_required_column_is_one_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,metric_name,value\n2025-07-18T20:42:34Z,m,1\n")
    with pytest.raises(CsvFormatError, match=r"x.csv:1: missing required column\(s\) uuid"):
        list(read_dcgm_csv(path))


def test_empty_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CsvFormatError, match="empty file"):
        list(read_dcgm_csv(write(tmp_path, "")))


def test_header_only_file_has_no_rows_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    assert list(read_dcgm_csv(write(tmp_path, f"{HEADER}\n\n\n"))) == []


def test_an_unreadable_header_is_one_clear_error(tmp_path: Path) -> None:
    # found by tests/test_fuzz_parsers.py: a header field past the csv module's limit
    # raised _csv.Error out of read_dcgm_csv
    path = tmp_path / "bad.csv"
    path.write_text("a" * 131_073 + "\n", encoding="utf-8")
    with pytest.raises(CsvFormatError, match=r"bad\.csv:1: unreadable CSV header"):
        list(read_dcgm_csv(path))
