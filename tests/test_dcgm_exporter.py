"""dcgm-exporter samples to message-contract points: label mapping, skips, times, identity."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from telemetry import dcgm_exporter
from telemetry.broker.messages import build_task_message
from telemetry.dcgm_exporter import (
    ScrapedPoints,
    SkipReason,
    clear_series_cache,
    points_from_samples,
    points_from_text,
    render_labels,
)
from telemetry.exposition import Exposition, Sample, parse_exposition
from telemetry.models import parse_labels, parse_message
from tests.scrape_support import EXPORTER_FIXTURES as FIXTURES
from tests.scrape_support import shared_text

SCRAPED_AT = datetime(2026, 12, 1, 12, 0, 0, 250000, tzinfo=UTC)
SCRAPE_TIME = "2026-12-01T12:00:00.250000Z"


def scrape(name: str, **options: Any) -> ScrapedPoints:
    return points_from_text((FIXTURES / name).read_text(), SCRAPED_AT, **options)


def assert_valid(result: ScrapedPoints) -> None:
    """Every point passes the worker's validation and reads back as it was sent."""
    for point, metadata in result.points:
        parsed_point, parsed_metadata = parse_message(point, metadata)
        assert parsed_point.gpu_uuid == point["gpu_uuid"]
        assert parsed_point.gpu_instance == point.get("gpu_instance")
        assert parsed_point.labels_raw == point.get("labels_raw")
        assert parsed_metadata.known() == metadata
        if "labels_raw" in point:
            assert parse_labels(point["labels_raw"]) is not None


@pytest.mark.parametrize(
    ("name", "points", "skipped"),
    [
        ("t4-datadog.prom", 24, {"no_uuid": 14}),
        ("a100-mig-nvidia-docs.prom", 21, {}),
        ("edge-cases-netdata.prom", 10, {"blank": 1, "no_uuid": 1}),
        ("t4-gke-empty-pod-labels.prom", 1, {}),
    ],
)
def test_each_shared_capture_yields_its_known_point_and_skip_counts(
    name: str, points: int, skipped: dict[str, int]
) -> None:
    result = points_from_text(shared_text(name), SCRAPED_AT)
    assert len(result.points) == points
    assert result.skipped == skipped
    assert_valid(result)


def test_the_t4_capture_maps_the_driver_and_keeps_the_unmapped_labels() -> None:
    result = points_from_text(shared_text("t4-datadog.prom"), SCRAPED_AT)
    point, metadata = result.points[0]
    assert point == {
        "gpu_uuid": "GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e",
        "metric_name": "DCGM_FI_DEV_SM_CLOCK",
        "value": 300.0,
        "timestamp": SCRAPE_TIME,
        "labels_raw": 'DCGM_FI_PROCESS_NAME="/usr/bin/dcgm-exporter"',
    }
    assert metadata == {
        "hostname": "424773df46e0",
        "model_name": "Tesla T4",
        "gpu_index": 0,
        "device": "nvidia0",
        "driver_version": "460.106.00",
    }
    a10g_point, a10g_metadata = result.points[-1]
    assert a10g_point["gpu_uuid"] == "GPU-abc"
    assert (a10g_metadata["pod"], a10g_metadata["namespace"], a10g_metadata["container"]) == (
        "ray-1111111",
        "ray-llm",
        "ray-worker",
    )


def test_the_a100_capture_has_17_whole_gpu_points_and_4_of_mig_instance_13() -> None:
    result = points_from_text(shared_text("a100-mig-nvidia-docs.prom"), SCRAPED_AT)
    instances = [point.get("gpu_instance") for point, _ in result.points]
    assert instances == [None] * 17 + ["13"] * 4
    assert result.points[-1][1]["gpu_instance_profile"] == "1g.5gb"


@pytest.mark.parametrize("name", sorted(path.name for path in FIXTURES.glob("*.prom")))
def test_every_point_of_every_own_fixture_passes_the_worker_s_validation(name: str) -> None:
    assert_valid(scrape(name))


def test_a_3x_scrape_maps_every_known_label_to_metadata_and_leaves_no_labels_raw() -> None:
    result = scrape("v3-per-family-pods.prom")
    assert len(result.points) == 8
    assert result.skipped == {}
    point, metadata = result.points[0]
    assert point == {
        "gpu_uuid": "GPU-00000000-0000-0000-0000-000000000001",
        "metric_name": "DCGM_FI_DEV_GPU_TEMP",
        "value": 41.0,
        "timestamp": SCRAPE_TIME,
    }
    assert metadata == {
        "hostname": "node-a",
        "model_name": "NVIDIA H100 80GB HBM3",
        "gpu_index": 0,
        "device": "nvidia0",
        "pci_bus_id": "00000000:1B:00.0",
        "driver_version": "550.54.15",
        "pod": "trainer-0",
        "namespace": "ml",
        "container": "trainer",
    }
    # blank pod labels are left out, not sent as ""
    assert result.points[1][1] == {
        "hostname": "node-a",
        "model_name": "NVIDIA H100 80GB HBM3",
        "gpu_index": 1,
        "device": "nvidia1",
        "pci_bus_id": "00000000:43:00.0",
        "driver_version": "550.54.15",
    }


def test_a_2x_scrape_grouped_per_gpu_yields_a_point_per_sample() -> None:
    result = scrape("v2-grouped-per-gpu.prom")
    assert [(p["gpu_uuid"][-4:], p["metric_name"], p["value"]) for p, _ in result.points] == [
        ("a000", "DCGM_FI_DEV_SM_CLOCK", 1312.0),
        ("a000", "DCGM_FI_DEV_GPU_TEMP", 36.0),
        ("a000", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 5123456789.0),
        ("a001", "DCGM_FI_DEV_SM_CLOCK", 135.0),
        ("a001", "DCGM_FI_DEV_GPU_TEMP", 31.0),
        ("a001", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 4987654321.0),
    ]
    assert result.points[3][1]["hostname"] == "old-node"


def test_the_lower_case_hostname_label_is_the_hostname() -> None:
    point, metadata = scrape("hostname-lowercase.prom").points[0]
    assert metadata["hostname"] == "node-lower"
    assert "labels_raw" not in point


def test_the_old_lower_case_uuid_label_names_the_gpu() -> None:
    result = scrape("old-uuid-naming.prom")
    assert {p["gpu_uuid"] for p, _ in result.points} == {"GPU-00000000-0000-0000-0000-00000000c000"}
    assert result.skipped == {}


def test_nvlink_series_name_the_gpu_by_gpu_uuid_and_only_their_first_link_is_kept() -> None:
    result = scrape("nvlink-gpu-uuid.prom")
    assert [(p["metric_name"], p["value"], p["labels_raw"]) for p, _ in result.points] == [
        ("DCGM_FI_DEV_NVLINK_BANDWIDTH_L0", 1024.0, 'nvlink="0"'),
        ("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", 3.0, 'nvlink="0"'),
    ]
    assert result.points[0][1]["model_name"] == "NVIDIA A100-SXM4-80GB"
    assert result.skipped == {"duplicate_series": 1}


def test_each_mig_instance_is_its_own_point_beside_the_whole_gpu() -> None:
    result = scrape("mig.prom")
    assert result.skipped == {}
    assert [
        (p["metric_name"], p.get("gpu_instance"), m.get("gpu_instance_profile"))
        for p, m in result.points
    ] == [
        ("DCGM_FI_DEV_GPU_TEMP", None, None),
        ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", None, None),
        ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "13", "1g.5gb"),
        ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "5", "2g.10gb"),
        ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "1", "3g.20gb"),
        ("DCGM_FI_DEV_FB_USED", "13", "1g.5gb"),
        ("DCGM_FI_DEV_FB_USED", "5", "2g.10gb"),
        ("DCGM_FI_DEV_FB_USED", "1", "3g.20gb"),
    ]
    assert all("labels_raw" not in p for p, _ in result.points)


def test_a_time_sliced_gpu_yields_only_its_first_pod_s_series() -> None:
    result = scrape("time-sliced.prom")
    assert [(p["metric_name"], m["pod"]) for p, m in result.points] == [
        ("DCGM_FI_DEV_GPU_UTIL", "app-a"),
        ("DCGM_FI_DEV_FB_USED", "app-a"),
    ]
    assert result.skipped == {SkipReason.DUPLICATE_SERIES: 4}


def test_counters_keep_their_names_as_written() -> None:
    names = [p["metric_name"] for p, _ in scrape("counters.prom").points]
    assert names == [
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "DCGM_FI_DEV_XID_ERRORS_total",
    ]


def test_dcgm_blank_placeholders_are_skipped_and_values_just_below_them_kept() -> None:
    result = scrape("blanks.prom")
    assert result.skipped == {"blank": 2}
    assert [(p["metric_name"], p["value"]) for p, _ in result.points] == [
        ("DCGM_FI_DEV_FAN_SPEED", 9223372036854775791.0),
        ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 140737488355327.5),
        # an integer above the float placeholder is a real value
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 319159391000000.0),
    ]


def test_non_numeric_values_are_counted_with_the_parser_s_reason() -> None:
    result = scrape("non-numeric.prom")
    assert [p["metric_name"] for p, _ in result.points] == [
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_MEM_CLOCK",
    ]
    assert result.skipped == {"non_numeric": 3}
    assert len(result.dropped_lines) == 3


def test_nan_and_infinities_are_skipped_as_non_finite() -> None:
    result = scrape("non-finite.prom")
    assert [p["value"] for p, _ in result.points] == [0.15]
    assert result.skipped == {"non_finite": 3}


def test_a_bad_line_is_counted_and_its_neighbours_become_points() -> None:
    result = scrape("bad-line.prom")
    assert [m["gpu_index"] for _, m in result.points] == [0, 2]
    assert result.skipped == {"bad_line": 1}


def test_unescaped_label_values_reach_labels_raw_so_that_parse_labels_reads_them_back() -> None:
    samples = parse_exposition((FIXTURES / "unescaped-labels.prom").read_text()).samples
    result = scrape("unescaped-labels.prom")
    assert result.points[0][1]["model_name"] == 'NVIDIA "Quoted" Edition'
    for sample, (point, _) in zip(samples[1:], result.points[1:], strict=True):
        unmapped = {k: v for k, v in sample.labels.items() if k not in dcgm_exporter.MAPPED_LABELS}
        assert parse_labels(point["labels_raw"]) == unmapped


def test_series_without_a_uuid_are_skipped_as_no_uuid() -> None:
    result = scrape("no-uuid.prom")
    assert [p["gpu_uuid"] for p, _ in result.points] == ["GPU-00000000-0000-0000-0000-000000080001"]
    # four go_gc lines, go_goroutines, a label-less DCGM line, an empty UUID
    assert result.skipped == {"no_uuid": 7}


def test_label_less_and_indented_lines_of_the_corner_fixture_are_mapped() -> None:
    result = scrape("format-corners.prom")
    assert [m["gpu_index"] for _, m in result.points] == [0, 1]
    assert result.skipped == {"no_uuid": 2}


def test_every_point_of_a_scrape_gets_the_scrape_time() -> None:
    result = scrape("eight-gpus.prom")
    assert len(result.points) == 200
    assert {p["timestamp"] for p, _ in result.points} == {SCRAPE_TIME}


def test_a_sample_s_own_timestamp_is_kept_when_honored() -> None:
    result = scrape("timestamps.prom")
    assert [p["timestamp"] for p, _ in result.points] == [
        "2025-12-01T00:00:00Z",
        "2025-12-01T00:00:00.123000Z",
        SCRAPE_TIME,
    ]
    assert result.skipped == {"bad_timestamp": 1}


def test_own_timestamps_are_ignored_when_not_honored() -> None:
    result = scrape("timestamps.prom", honor_timestamps=False)
    assert [p["timestamp"] for p, _ in result.points] == [SCRAPE_TIME] * 4
    assert result.skipped == {}


def test_a_naive_scrape_time_is_utc() -> None:
    text = (FIXTURES / "old-uuid-naming.prom").read_text()
    result = points_from_text(text, datetime(2026, 12, 1, 12, 0, 0))
    assert result.points[0][0]["timestamp"] == "2026-12-01T12:00:00Z"


def test_extra_labels_are_added_and_the_sample_s_own_label_wins_a_clash() -> None:
    # given
    extra = {"cluster": "east", "nvlink": "from-target", "Hostname": "from-target"}
    # when
    result = scrape("nvlink-gpu-uuid.prom", extra_labels=extra)
    # then
    point, metadata = result.points[0]
    assert point["labels_raw"] == 'nvlink="0",cluster="east"'
    assert metadata["hostname"] == "nv-node"


def test_extra_labels_fill_labels_raw_but_never_metadata() -> None:
    extra = {"Hostname": "from-target", "pod": "from-target"}
    point, metadata = scrape("old-uuid-naming.prom", extra_labels=extra).points[0]
    # the sample has Hostname, so only pod (which it lacks) is added, as a label
    assert point["labels_raw"] == 'pod="from-target"'
    assert "pod" not in metadata


def test_different_extra_labels_give_different_labels_raw_from_the_same_text() -> None:
    first = scrape("mig.prom", extra_labels={"cluster": "a"}).points[0][0]["labels_raw"]
    second = scrape("mig.prom", extra_labels={"cluster": "b"}).points[0][0]["labels_raw"]
    assert (first, second) == ('cluster="a"', 'cluster="b"')
    assert "labels_raw" not in scrape("mig.prom").points[0][0]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain",
        'a "quoted" word',
        "back\\slash",
        "trailing\\",
        "new\nline",
        'x",y="z',
        "}{,=",
        "ü",
    ],
)
def test_rendered_labels_read_back_exactly_with_parse_labels(value: str) -> None:
    labels = {"first": value, "second": value + "2"}
    assert parse_labels(render_labels(labels)) == labels


def test_points_and_metadata_are_the_caller_s_to_change() -> None:
    text = (FIXTURES / "v3-per-family-pods.prom").read_text()
    first = points_from_text(text, SCRAPED_AT)
    first.points[0][1]["hostname"] = "changed"
    first.points[0][0]["labels_raw"] = "changed"
    again = points_from_text(text, SCRAPED_AT)
    assert again.points[0][1]["hostname"] == "node-a"
    assert "labels_raw" not in again.points[0][0]


def test_hand_built_samples_without_label_text_are_mapped_too() -> None:
    clear_series_cache()
    labels = {"UUID": "GPU-hand", "gpu": "x", "Hostname": " ", "rack": "r1"}
    exposition = Exposition(samples=[Sample("m", labels, 1.0, "1", None)])
    [(point, metadata)] = points_from_samples(exposition, SCRAPED_AT).points
    assert point["labels_raw"] == 'rack="r1"'
    # a non-integer gpu and a blank hostname are left out
    assert metadata == {}


def test_too_long_identities_are_skipped_rather_than_rejected_by_the_worker() -> None:
    text = f'm{{UUID="GPU-{"x" * 300}"}} 1\nm{{UUID="GPU-1",GPU_I_ID="{"9" * 80}"}} 1\n'
    result = points_from_text(text, SCRAPED_AT)
    assert result.points == []
    assert result.skipped == {"too_long": 2}


def test_points_build_task_messages() -> None:
    point, metadata = scrape("mig.prom").points[2]
    message = build_task_message(point, metadata)
    assert message.body[1] == {"point": point, "metadata": metadata}


def test_a_sample_time_more_than_a_day_after_the_scrape_is_a_bad_timestamp() -> None:
    # found by tests/test_fuzz_parsers.py: such a point was sent, and the worker rejected
    # it as more than a day in the future
    day_ms = 86_400_000
    scraped_ms = 1_796_126_400_250  # SCRAPED_AT
    text = (
        f'DCGM_FI_DEV_GPU_UTIL{{UUID="GPU-1"}} 1 {scraped_ms + day_ms}\n'
        f'DCGM_FI_DEV_GPU_TEMP{{UUID="GPU-1"}} 1 {scraped_ms + day_ms + 1}\n'
    )
    result = points_from_text(text, SCRAPED_AT)
    assert [p["timestamp"] for p, _ in result.points] == ["2026-12-02T12:00:00.250000Z"]
    assert result.skipped == {"bad_timestamp": 1}


def test_a_gpu_index_mongodb_cannot_store_is_left_out() -> None:
    # found by tests/test_fuzz_parsers.py: gpu="99…9" became a gpu_index the worker rejects
    text = (
        f'DCGM_FI_DEV_GPU_UTIL{{UUID="GPU-1",gpu="{2**63 - 1}"}} 1\n'
        f'DCGM_FI_DEV_GPU_UTIL{{UUID="GPU-2",gpu="{2**63}"}} 1\n'
    )
    [(_, first), (_, second)] = points_from_text(text, SCRAPED_AT).points
    assert first == {"gpu_index": 2**63 - 1}
    assert second == {}
