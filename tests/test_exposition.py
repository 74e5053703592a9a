"""The Prometheus text parser: each layout and corner case, and agreement with prometheus_client."""

from __future__ import annotations

import math
import os
import random
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from telemetry import exposition
from telemetry.exposition import (
    MAX_DROPPED_LINES,
    DropReason,
    Exposition,
    clear_label_cache,
    parse_exposition,
    parse_label_text,
)
from tests.scrape_support import EXPORTER_FIXTURES as FIXTURES
from tests.scrape_support import SHARED_CAPTURES_DIR as SHARED
from tests.scrape_support import shared_text

OWN_FIXTURES = sorted(path.name for path in FIXTURES.glob("*.prom"))
SHARED_CAPTURES = sorted(path.name for path in SHARED.glob("*.prom")) if SHARED.is_dir() else []
# Own fixtures that prometheus_client refuses as a whole; every other one must agree.
ORACLE_REFUSES = {"bad-line.prom", "non-numeric.prom", "unescaped-labels.prom"}

# name, sorted labels, repr of the value, timestamp in seconds
Key = tuple[str, tuple[tuple[str, str], ...], str, Any]


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def oracle_keys(text: str) -> list[Key]:
    """prometheus_client's samples, with its counter renaming to ``…_total`` undone."""
    keys = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if family.type == "counter":
                name = name.removesuffix("_total")
            labels = tuple(sorted(sample.labels.items()))
            keys.append((name, labels, repr(float(sample.value)), sample.timestamp))
    return sorted(keys)


def our_keys(parsed: Exposition) -> list[Key]:
    keys = []
    for sample in parsed.samples:
        name = sample.name
        if parsed.types.get(name) == "counter":
            name = name.removesuffix("_total")
        labels = tuple(sorted(sample.labels.items()))
        stamp = None if sample.timestamp_ms is None else sample.timestamp_ms / 1000
        keys.append((name, labels, repr(sample.value), stamp))
    return sorted(keys)


def assert_agrees_with_prometheus_client(text: str) -> None:
    parsed = parse_exposition(text)
    assert parsed.dropped == {}
    assert our_keys(parsed) == oracle_keys(text)


@pytest.mark.parametrize("name", OWN_FIXTURES)
def test_every_own_fixture_agrees_with_prometheus_client_or_is_refused_by_it(name: str) -> None:
    text = fixture_text(name)
    if name in ORACLE_REFUSES:
        with pytest.raises(ValueError):
            list(text_string_to_metric_families(text))
    else:
        assert_agrees_with_prometheus_client(text)


@pytest.mark.parametrize("name", sorted(set(OWN_FIXTURES) - ORACLE_REFUSES))
def test_crlf_line_ends_change_nothing(name: str) -> None:
    text = fixture_text(name)
    crlf = parse_exposition(text.replace("\n", "\r\n"))
    assert crlf.dropped == {}
    # repr, not ==: NaN is unequal to itself
    assert [repr(s) for s in crlf.samples] == [repr(s) for s in parse_exposition(text).samples]
    assert_agrees_with_prometheus_client(text.replace("\n", "\r\n"))


def test_the_shared_captures_are_there_or_the_run_is_not_under_ci() -> None:
    if not SHARED_CAPTURES:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no captures in {SHARED} under CI")
        pytest.skip(f"no captures in {SHARED}")
    assert "t4-datadog.prom" in SHARED_CAPTURES


@pytest.mark.parametrize("name", SHARED_CAPTURES)
def test_every_shared_capture_agrees_with_prometheus_client(name: str) -> None:
    assert_agrees_with_prometheus_client(shared_text(name))


def test_the_tab_indented_gke_capture_yields_its_one_sample_with_empty_pod_labels() -> None:
    parsed = parse_exposition(shared_text("t4-gke-empty-pod-labels.prom"))
    [sample] = parsed.samples
    assert sample.name == "DCGM_FI_DEV_GPU_TEMP"
    assert sample.value == 40.0
    assert (sample.labels["pod"], sample.labels["namespace"], sample.labels["container"]) == (
        "",
        "",
        "",
    )
    assert parsed.types == {"DCGM_FI_DEV_GPU_TEMP": "gauge"}


def test_the_3x_layout_yields_every_sample_in_order_with_each_family_type() -> None:
    parsed = parse_exposition(fixture_text("v3-per-family-pods.prom"))
    assert [(s.name, s.labels["gpu"], s.value_text) for s in parsed.samples] == [
        ("DCGM_FI_DEV_GPU_TEMP", "0", "41"),
        ("DCGM_FI_DEV_GPU_TEMP", "1", "38"),
        ("DCGM_FI_DEV_POWER_USAGE", "0", "612.25"),
        ("DCGM_FI_DEV_POWER_USAGE", "1", "71.5"),
        ("DCGM_FI_DEV_GPU_UTIL", "0", "97"),
        ("DCGM_FI_DEV_GPU_UTIL", "1", "0"),
        ("DCGM_FI_DEV_FB_USED", "0", "70312"),
        ("DCGM_FI_DEV_FB_USED", "1", "0"),
    ]
    assert set(parsed.types.values()) == {"gauge"}
    assert parsed.samples[0].labels["pod"] == "trainer-0"


def test_the_2x_layout_with_types_first_and_blanks_after_commas_is_read_whole() -> None:
    parsed = parse_exposition(fixture_text("v2-grouped-per-gpu.prom"))
    assert len(parsed.samples) == 6
    assert parsed.types["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
    assert parsed.samples[3].labels == {
        "gpu": "1",
        "UUID": "GPU-00000000-0000-0000-0000-00000000a001",
        "device": "nvidia1",
        "modelName": "Tesla V100-SXM2-16GB",
        "Hostname": "old-node",
    }


def test_counter_samples_keep_the_name_as_written() -> None:
    parsed = parse_exposition(fixture_text("counters.prom"))
    assert [s.name for s in parsed.samples] == [
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "DCGM_FI_DEV_XID_ERRORS_total",
    ]
    assert parsed.samples[0].value == 123456789012.0


def test_tabs_trailing_commas_blanks_around_equals_and_empty_label_sets_are_read() -> None:
    parsed = parse_exposition(fixture_text("format-corners.prom"))
    assert parsed.dropped == {}
    assert [(s.name, s.labels, s.value) for s in parsed.samples] == [
        (
            "DCGM_FI_DEV_GPU_TEMP",
            {
                "gpu": "0",
                "UUID": "GPU-00000000-0000-0000-0000-000000090000",
                "Hostname": "corner-node",
                "pod": "",
            },
            40.0,
        ),
        (
            "DCGM_FI_DEV_GPU_TEMP",
            {
                "gpu": "1",
                "UUID": "GPU-00000000-0000-0000-0000-000000090001",
                "Hostname": "corner-node",
            },
            41.0,
        ),
        ("DCGM_FI_DEV_COUNT", {}, 2.0),
        ("DCGM_FI_DEV_COUNT_ALT", {}, 2.0),
    ]


def test_a_value_that_is_not_a_number_drops_its_line_as_non_numeric() -> None:
    parsed = parse_exposition(fixture_text("non-numeric.prom"))
    assert [s.name for s in parsed.samples] == ["DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_MEM_CLOCK"]
    assert parsed.dropped == {DropReason.NON_NUMERIC: 3}
    assert [(line.line_number, line.reason) for line in parsed.dropped_lines] == [
        (6, DropReason.NON_NUMERIC),
        (9, DropReason.NON_NUMERIC),
        (12, DropReason.NON_NUMERIC),
    ]
    assert "ERROR - FAIL" in parsed.dropped_lines[0].text


def test_nan_and_infinities_are_floats_as_prometheus_reads_them() -> None:
    values = [s.value for s in parse_exposition(fixture_text("non-finite.prom")).samples]
    assert math.isnan(values[0])
    assert values[1:] == [math.inf, -math.inf, 0.15]


def test_one_bad_line_is_counted_and_the_lines_around_it_are_kept() -> None:
    parsed = parse_exposition(fixture_text("bad-line.prom"))
    assert [s.labels["gpu"] for s in parsed.samples] == ["0", "2"]
    assert parsed.dropped == {DropReason.BAD_LINE: 1}
    [dropped] = parsed.dropped_lines
    assert dropped.line_number == 4
    assert dropped.detail == "label set not closed"


def test_unescaped_label_values_are_read_leniently_as_documented() -> None:
    labels = [s.labels for s in parse_exposition(fixture_text("unescaped-labels.prom")).samples]
    assert labels[0]["modelName"] == 'NVIDIA "Quoted" Edition'
    assert labels[0]["Hostname"] == "raw-node"
    assert labels[1]["DCGM_FI_PROCESS_NAME"] == "C:\\Program Files\\dcgm\\exporter.exe"
    assert labels[2]["DCGM_FI_PROCESS_NAME"] == "D:\\"
    assert labels[2]["Hostname"] == "raw-node"
    assert labels[3]["note"] == 'line\nbreak, a "quote" and a \\ backslash'


def test_spec_escapes_are_decoded_and_other_backslashes_kept() -> None:
    assert parse_label_text(r'a="x\\y",b="q\"q",c="n\nn",d="\p\t"') == {
        "a": "x\\y",
        "b": 'q"q',
        "c": "n\nn",
        "d": "\\p\\t",
    }


def test_a_label_set_that_cannot_be_read_either_way_is_none() -> None:
    assert parse_label_text('a="1",a="2"') is None
    assert parse_label_text('a="1" b="2') is None
    assert parse_label_text("a=1") is None
    assert parse_label_text("") == {}


def test_timestamps_are_integer_milliseconds() -> None:
    samples = parse_exposition(fixture_text("timestamps.prom")).samples
    assert [s.timestamp_ms for s in samples] == [1764547200000, 1764547200123, None, 0]


@pytest.mark.parametrize(
    ("line", "reason", "detail"),
    [
        ('m{a="1"} 1 2 3', DropReason.BAD_LINE, "text after the timestamp"),
        ('m{a="1"} 1 1.5', DropReason.BAD_LINE, "timestamp is not a 64-bit integer"),
        # found by tests/test_fuzz_parsers.py: int() raised past 4,300 digits
        ("m 1 " + "7" * 4301, DropReason.BAD_LINE, "timestamp is not a 64-bit integer"),
        ("m 1\x0c " + "7" * 4301, DropReason.BAD_LINE, "timestamp is not a 64-bit integer"),
        ("m 1 " + "1" * 20, DropReason.BAD_LINE, "timestamp is not a 64-bit integer"),
        ('m{a="1"}', DropReason.BAD_LINE, "no value"),
        ("m", DropReason.BAD_LINE, "no value"),
        ('{a="1"} 1', DropReason.BAD_LINE, "no valid metric name"),
        ("1m 1", DropReason.BAD_LINE, "no valid metric name"),
        ('m{a="1",a="2"} 1', DropReason.BAD_LINE, "label a repeated"),
        ("m{a=1} 1", DropReason.BAD_LINE, "not a label set at character 1"),
        ('m{a="1"} one', DropReason.NON_NUMERIC, "value is not a number"),
        ("m 0x10", DropReason.NON_NUMERIC, "value is not a number"),
    ],
)
def test_each_kind_of_bad_line_is_dropped_with_its_reason(
    line: str, reason: DropReason, detail: str
) -> None:
    parsed = parse_exposition(f"ok 1\n{line}\nok 2\n")
    assert [s.value for s in parsed.samples] == [1.0, 2.0]
    assert parsed.dropped == {reason: 1}
    assert parsed.dropped_lines[0][:3] == (2, reason, detail)


def test_only_the_first_few_dropped_lines_are_kept_but_all_are_counted() -> None:
    parsed = parse_exposition("m{\n" * 20)
    assert parsed.dropped == {DropReason.BAD_LINE: 20}
    assert len(parsed.dropped_lines) == MAX_DROPPED_LINES


def test_a_sample_s_labels_are_its_own_and_not_the_cache_s() -> None:
    text = 'm{a="1"} 1\n'
    parse_exposition(text).samples[0].labels["a"] = "changed"
    assert parse_exposition(text).samples[0].labels == {"a": "1"}


def test_the_label_cache_stays_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exposition, "LABEL_CACHE_MAX_ENTRIES", 10)
    clear_label_cache()
    parsed = parse_exposition("".join(f'm{{i="{i}"}} {i}\n' for i in range(50)))
    assert len(parsed.samples) == 50
    assert len(exposition._LABEL_CACHE) <= 10
    clear_label_cache()


def test_garbage_never_raises() -> None:
    # given: real lines cut, spliced and sprinkled with the characters that matter
    rng = random.Random(7)
    lines = (fixture_text("eight-gpus.prom") + fixture_text("unescaped-labels.prom")).splitlines()
    alphabet = '{}",=\\ \t\r#\n' + "x1.eE+-_"
    for _ in range(2000):
        line = rng.choice(lines)
        cut = rng.randrange(len(line) + 1)
        noise = "".join(rng.choice(alphabet) for _ in range(rng.randrange(4)))
        text = line[:cut] + noise + line[cut:]
        # when
        parsed = parse_exposition(text)
        # then
        assert len(parsed.samples) + sum(parsed.dropped.values()) <= text.count("\n") + 1


def test_a_huge_label_set_of_raw_values_is_read_in_linear_time() -> None:
    labels = ",".join(f'l{i}="a "raw" value {i}"' for i in range(20_000))
    start = time.process_time()
    parsed = parse_exposition(f"m{{{labels}}} 1\n")
    assert time.process_time() - start < 2.0
    assert parsed.samples[0].labels["l19999"] == 'a "raw" value 19999'
    assert not exposition._LABEL_CACHE.get(labels)


@pytest.mark.parametrize("line", ["m 7{digits}x", 'm{{a="1"}} 7{digits} x'])
def test_a_long_run_of_digits_that_is_no_sample_is_dropped_in_linear_time(line: str) -> None:
    # found by tests/test_fuzz_parsers.py (its deadline): the value's pattern backtracked
    # through every split of a digit run, 4 s for 8,000 digits; 200,000 would take hours
    text = line.format(digits="7" * 200_000)
    started = time.perf_counter()
    parsed = parse_exposition(text)
    assert time.perf_counter() - started < 1.0
    assert parsed.samples == [] and sum(parsed.dropped.values()) == 1


@pytest.mark.parametrize("text", [" " * 200_000 + "a", 'a="1"' + " " * 200_000 + "x"])
def test_a_label_set_with_a_long_run_of_blanks_is_read_in_linear_time(text: str) -> None:
    # found by probing the label patterns once tests/test_fuzz_parsers.py had found the digit
    # case: "[ \t]*,?[ \t]*" backtracked through every split of a run of blanks, 5 s for 20,000
    started = time.perf_counter()
    assert parse_label_text(text) is None
    assert time.perf_counter() - started < 1.0
