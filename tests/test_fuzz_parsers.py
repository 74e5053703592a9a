"""Properties of the input parsers: DCGM CSV, Prometheus exposition text and its label
sets, and the mapping of a scrape to points. Any input gives an answer, never an
exception, every line or sample is accounted for once, and what we render reads back.

Bounds and profiles are in tests/conftest.py.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from telemetry.dcgm import BadRow, Row, read_dcgm_csv
from telemetry.dcgm_exporter import SkipReason, points_from_samples
from telemetry.errors import CsvFormatError, InvalidMessage
from telemetry.exposition import DropReason, Sample, parse_exposition, parse_label_text
from telemetry.models import parse_message

HEADER = (
    "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,"
    "value,labels_raw"
)
CELLS = [
    "2025-07-18T20:42:34Z",
    "DCGM_FI_DEV_GPU_UTIL",
    "0",
    "nvidia0",
    "GPU-1",
    "NVIDIA H100",
    "host-1",
    "",
    "",
    "",
    "87",
    'gpu="0"',
]

# Pieces lines are made of, so that most inputs come near the real grammar.
csv_pieces = st.sampled_from(
    [",", '"', '""', "\n", "\r\n", "\r", "\x00", " ", "\ufeff", HEADER, *CELLS]
) | st.text(max_size=8)
csv_texts = st.lists(csv_pieces, max_size=40).map("".join) | st.builds(
    lambda rows: "\n".join([HEADER, *rows]),
    st.lists(
        st.lists(st.sampled_from(CELLS) | st.text(max_size=6), max_size=13).map(",".join),
        max_size=6,
    ),
)
# The csv module refuses a field longer than this, header or not.
CSV_FIELD_LIMIT = 131_072


@pytest.fixture(scope="module")
def scratch() -> Iterator[str]:
    """A file path the CSV properties rewrite for each example."""
    with tempfile.TemporaryDirectory() as folder:
        yield os.path.join(folder, "fuzz.csv")


@given(text=csv_texts, oversized=st.sampled_from([None, "header", "row"]))
def test_any_csv_text_is_rows_and_bad_rows_or_a_format_error(
    scratch: str, text: str, oversized: str | None
) -> None:
    # A field past the csv module's limit is made here, not drawn: a failing example
    # would print it whole.
    if oversized == "header":
        text = "a" * (CSV_FIELD_LIMIT + 1) + "\n" + text
    elif oversized == "row":
        text = f"{HEADER}\n{'a' * (CSV_FIELD_LIMIT + 1)}\n{text}"
    with open(scratch, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    try:
        read = list(read_dcgm_csv(scratch))
    except CsvFormatError as exc:
        assert str(exc)
        event("CsvFormatError")
        return
    assert all(isinstance(item, Row | BadRow) for item in read)
    lines = [item.line for item in read]
    assert lines == sorted(lines) and all(line >= 2 for line in lines)
    event(f"{sum(isinstance(item, Row) for item in read)} rows")


# Exposition text: pieces of real lines, joined, so that most lines are nearly samples.
names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True)
label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True)
exposition_pieces = (
    names
    | label_names
    | st.sampled_from(
        [
            " ",
            "\t",
            "{",
            "}",
            "=",
            ",",
            '"',
            "\\",
            "\n",
            "\r\n",
            "#",
            "# HELP ",
            "# TYPE ",
            "NaN",
            "+Inf",
            "-inf",
            "1e3",
            ".5",
            "-0",
            "\x0c",
            "\u2028",
            "é",
        ]
    )
    | st.integers().map(str)
    # A number past int()'s 4,300-digit limit, and long runs of blanks: a pattern that
    # backtracks through a run shows as an example past the deadline.
    | st.integers(min_value=4000, max_value=5000).map(lambda digits: "7" * digits)
    | st.integers(min_value=2000, max_value=5000).map(lambda blanks: " " * blanks)
    | st.text(max_size=5)
)
separators = st.sampled_from([" ", " ", "\t", "  ", "\x0c"])
numbers_text = st.sampled_from(["1", "-0.5", "1e3", "NaN", "+Inf", "x", "", "1_0"]) | st.integers(
    min_value=4000, max_value=5000
).map(lambda digits: "7" * digits)
label_set_texts = (
    st.dictionaries(label_names, st.text(max_size=5), max_size=2).map(
        lambda labels: "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    )
    | st.lists(exposition_pieces, max_size=8).map(lambda inner: "{" + "".join(inner) + "}")
    | st.just("")
)
# Lines shaped like samples: a name, a label set, a value, a timestamp, each odd or not.
sample_lines = st.builds(
    lambda lead, name, labels, separator, value, stamp, trail: (
        f"{lead}{name}{labels}{separator}{value}{'' if stamp is None else ' ' + stamp}{trail}"
    ),
    st.sampled_from(["", " "]),
    names,
    label_set_texts,
    separators,
    numbers_text,
    st.none() | numbers_text,
    st.sampled_from(["", " ", "\r"]),
)
exposition_texts = st.lists(exposition_pieces, max_size=60).map("".join) | st.lists(
    sample_lines | exposition_pieces, max_size=8
).map("\n".join)


@given(text=exposition_texts | st.text())
def test_any_exposition_text_parses_and_each_line_is_accounted_for(text: str) -> None:
    exposition = parse_exposition(text)
    assert set(exposition.dropped) <= set(DropReason)
    lines = text.split("\n")
    content = [line for line in lines if line.strip() and not line.strip().startswith("#")]
    assert len(exposition.samples) + sum(exposition.dropped.values()) == len(content)
    for sample in exposition.samples:
        assert isinstance(sample.value, float)
        assert sample.timestamp_ms is None or isinstance(sample.timestamp_ms, int)
    event(f"{len(exposition.samples)} samples" if exposition.samples else "no sample")


@given(text=exposition_texts | st.text(max_size=100))
def test_any_label_text_is_labels_or_none(text: str) -> None:
    labels = parse_label_text(text)
    assert labels is None or all(isinstance(value, str) for value in labels.values())


# Samples as dcgm-exporter writes them: a GPU's labels, or none.
GPU_LABEL_NAMES = [
    "UUID",
    "uuid",
    "gpu_uuid",
    "GPU_I_ID",
    "GPU_I_PROFILE",
    "Hostname",
    "hostname",
    "gpu",
    "modelName",
    "device",
    "pci_bus_id",
    "DCGM_FI_DRIVER_VERSION",
    "pod",
    "namespace",
]
gpu_label_names = st.sampled_from(GPU_LABEL_NAMES)
label_values = st.text(max_size=20) | st.sampled_from(
    ["", " ", "GPU-1", "0", "13", "9" * 30, "x" * 300]
)
# Each of dcgm-exporter's labels, or not, and some others.
sample_labels = st.builds(
    lambda known, other: {**other, **known},
    st.fixed_dictionaries({}, optional=dict.fromkeys(GPU_LABEL_NAMES, label_values))
    # A GPU's series, so that the mapping of the others is reached too.
    | st.fixed_dictionaries(
        {"UUID": st.just("GPU-1")}, optional=dict.fromkeys(GPU_LABEL_NAMES[3:], label_values)
    ),
    st.dictionaries(label_names, label_values, max_size=2),
)
values = st.floats() | st.sampled_from([9.223372036854776e18, 140737488355328.0, 1.0])
timestamps_ms = (
    st.none()
    | st.integers(min_value=-(10**16), max_value=10**16)
    | st.sampled_from([0, 1, 10**20, 4_102_444_800_000])
)
samples = st.builds(
    lambda name, labels, value, timestamp_ms: Sample(
        name, labels, value, repr(value), timestamp_ms
    ),
    st.sampled_from(["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP"]) | names,
    sample_labels,
    values,
    timestamps_ms,
)
SCRAPED_AT = datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)


@given(
    text=exposition_texts,
    extra=st.lists(samples, max_size=8),
    extra_labels=st.none()
    | st.dictionaries(label_names | gpu_label_names, label_values, max_size=2),
    honor_timestamps=st.booleans(),
)
def test_every_sample_is_a_valid_point_or_counted_by_one_skip_reason(
    text: str,
    extra: list[Sample],
    extra_labels: dict[str, str] | None,
    honor_timestamps: bool,
) -> None:
    # given: a parsed text, and samples as a parser could give them
    exposition = parse_exposition(text)
    exposition.samples.extend(extra)
    # when
    scraped = points_from_samples(exposition, SCRAPED_AT, extra_labels, honor_timestamps)
    # then
    assert set(scraped.skipped) <= set(SkipReason)
    dropped = sum(exposition.dropped.values())
    assert len(scraped.points) + sum(scraped.skipped.values()) == len(exposition.samples) + dropped
    for point, metadata in scraped.points:
        try:
            parse_message(point, metadata)
        except InvalidMessage as exc:
            raise AssertionError(f"the worker would reject {point}, {metadata}: {exc}") from exc
    event(f"{len(scraped.points)} points")


# Valid samples, written out as the format says and read back.
exposition_values = st.floats() | st.integers(min_value=-(10**15), max_value=10**15).map(float)


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _rendered(sample: tuple[str, dict[str, str], float, int | None]) -> str:
    name, labels, value, timestamp_ms = sample
    label_set = ",".join(f'{key}="{_escaped(text)}"' for key, text in labels.items())
    line = f"{name}{{{label_set}}} {value!r}" if labels else f"{name} {value!r}"
    return line if timestamp_ms is None else f"{line} {timestamp_ms}"


valid_samples = st.tuples(
    names,
    st.dictionaries(label_names, st.text(max_size=20), max_size=4),
    exposition_values,
    st.none() | st.integers(min_value=-(2**63), max_value=2**63),
)


@given(
    written=st.lists(valid_samples, max_size=10),
    comments=st.lists(st.sampled_from(["# HELP x y", "# TYPE x gauge", "", "  "]), max_size=3),
)
def test_a_written_exposition_reads_back_as_the_same_samples(
    written: list[tuple[str, dict[str, str], float, int | None]], comments: list[str]
) -> None:
    text = "\n".join([*comments, *map(_rendered, written)]) + "\n"
    exposition = parse_exposition(text)
    assert exposition.dropped == {}
    read = [(s.name, s.labels, s.value, s.timestamp_ms) for s in exposition.samples]
    assert len(read) == len(written)
    for (name, labels, value, timestamp_ms), expected in zip(read, written, strict=True):
        assert (name, labels, timestamp_ms) == (expected[0], expected[1], expected[3])
        assert value == expected[2] or (math.isnan(value) and math.isnan(expected[2]))
