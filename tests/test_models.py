"""Validation rules of the message contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from telemetry.errors import InvalidMessage, RejectionKind
from telemetry.models import (
    GpuMetadata,
    Point,
    format_timestamp,
    gpu_metadata,
    parse_labels,
    parse_message,
)


def point_with(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "gpu_uuid": "GPU-1",
        "metric_name": "DCGM_FI_DEV_GPU_TEMP",
        "value": 41,
        "timestamp": "2025-07-18T20:42:34Z",
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not ...}


def test_valid_point_parses_to_utc_datetime_and_float() -> None:
    point, metadata = parse_message(point_with(), None)
    assert point.timestamp == datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)
    assert point.value == 41.0
    assert metadata == GpuMetadata()


def test_numeric_string_value_is_converted() -> None:
    point, _ = parse_message(point_with(value=" 75 "), None)
    assert point.value == 75.0


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"gpu_uuid": ...}, "gpu_uuid: is required"),
        ({"gpu_uuid": ""}, "gpu_uuid"),
        ({"gpu_uuid": "   "}, "gpu_uuid"),
        ({"gpu_uuid": 12}, "gpu_uuid: must be a string"),
        ({"metric_name": ...}, "metric_name: is required"),
        ({"metric_name": ""}, "metric_name"),
        ({"timestamp": ...}, "timestamp: is required"),
        ({"timestamp": ""}, "timestamp"),
        ({"timestamp": "yesterday"}, "not an RFC 3339 time"),
        ({"timestamp": "0001-01-01T00:00:00Z"}, "zero or before 1970"),
        ({"timestamp": "1970-01-01T00:00:00Z"}, "zero or before 1970"),
        ({"timestamp": "1969-12-31T23:59:59Z"}, "zero or before 1970"),
        ({"timestamp": "9999-12-31T23:59:59Z"}, "future"),
        ({"timestamp": 1752871354}, "must be an RFC 3339 time string"),
        ({"value": "seventy"}, "not a number"),
        ({"value": "nan"}, "finite"),
        ({"value": float("inf")}, "finite"),
        ({"value": True}, "must be a number"),
        ({"value": None}, "must be a number"),
        ({"value": ...}, "value: is required"),
        ({"labels_raw": "x" * 70_000}, "labels_raw"),
    ],
)
def test_invalid_point_is_refused_with_the_field_named(
    changes: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidMessage, match=fragment):
        parse_message(point_with(**changes), None)


def test_an_integer_value_past_a_floats_range_is_refused_not_raised() -> None:
    # found by tests/test_fuzz_models.py: float(10**309) raised OverflowError
    with pytest.raises(InvalidMessage, match="value: too large for a float") as refused:
        parse_message(point_with(value=10**309), None)
    assert refused.value.kind == RejectionKind.INVALID_POINT


@pytest.mark.parametrize("timestamp", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_a_time_whose_offset_leaves_the_calendar_is_refused_not_raised(timestamp: str) -> None:
    # found by tests/test_fuzz_models.py: converting to UTC raised OverflowError
    with pytest.raises(InvalidMessage, match="timestamp: not a real time") as refused:
        parse_message(point_with(timestamp=timestamp), None)
    assert refused.value.kind == RejectionKind.INVALID_POINT


def test_a_gpu_index_mongodb_cannot_store_is_invalid_metadata() -> None:
    # found by tests/test_fuzz_models.py: {"gpu_index": 2**63} was accepted, then the
    # GPU upsert raised OverflowError in bson instead of the message being rejected
    _, metadata = parse_message(point_with(), {"gpu_index": 2**63 - 1})
    assert metadata.gpu_index == 2**63 - 1
    with pytest.raises(InvalidMessage, match="gpu_index") as refused:
        parse_message(point_with(), {"gpu_index": 2**63})
    assert refused.value.kind == RejectionKind.INVALID_METADATA


def test_point_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="point: must be a JSON object, got list"):
        parse_message([1, 2], None)


def test_metadata_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="metadata: must be a JSON object"):
        parse_message(point_with(), "host-1")


def test_time_without_offset_is_taken_as_utc() -> None:
    point, _ = parse_message(point_with(timestamp="2025-07-18T20:42:34"), None)
    assert point.timestamp.tzinfo is UTC


def test_time_with_offset_is_converted_to_utc() -> None:
    point, _ = parse_message(point_with(timestamp="2025-07-18T22:42:34+02:00"), None)
    assert point.timestamp == datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)


def test_time_a_little_ahead_is_accepted_for_clock_skew() -> None:
    ahead = format_timestamp(datetime.now(UTC) + timedelta(minutes=5))
    point, _ = parse_message(point_with(timestamp=ahead), None)
    assert point.timestamp > datetime.now(UTC)


def test_the_future_limit_is_a_day_from_now_whenever_it_is_asked() -> None:
    # Twice each, so the second answer comes from the limit read for the first.
    for _ in range(2):
        inside = format_timestamp(datetime.now(UTC) + timedelta(days=1, seconds=-30))
        parse_message(point_with(timestamp=inside), None)
        beyond = format_timestamp(datetime.now(UTC) + timedelta(days=1, seconds=30))
        with pytest.raises(InvalidMessage, match="more than a day in the future"):
            parse_message(point_with(timestamp=beyond), None)


def test_blank_metadata_fields_are_absent_and_gpu_index_is_converted() -> None:
    _, metadata = parse_message(point_with(), {"hostname": "h1", "pod": "", "gpu_index": "3"})
    assert metadata.known() == {"hostname": "h1", "gpu_index": 3}


def test_unknown_fields_are_ignored() -> None:
    point, metadata = parse_message(point_with(extra=1), {"rack": "r1"})
    assert point.gpu_uuid == "GPU-1"
    assert metadata.known() == {}


def test_wire_form_round_trips() -> None:
    point = Point.model_validate(point_with(labels_raw='a="1"'))
    assert Point.model_validate(point.wire()) == point
    assert point.wire()["timestamp"] == "2025-07-18T20:42:34Z"


def test_labels_with_escaped_quotes_and_commas_parse() -> None:
    raw = 'a="1",msg="x, \\"quoted\\" y",__name__="DCGM_FI_DEV_GPU_UTIL"'
    assert parse_labels(raw) == {
        "a": "1",
        "msg": 'x, "quoted" y',
        "__name__": "DCGM_FI_DEV_GPU_UTIL",
    }


def test_label_values_end_at_the_first_quote_not_escaped() -> None:
    raw = ' a="back\\\\",  b="\\"",c="x=\\"1\\",y" '
    assert parse_labels(raw) == {"a": "back\\", "b": '"', "c": 'x="1",y'}
    assert parse_labels('a="1",') == {"a": "1"}
    assert parse_labels("") == {}


@pytest.mark.parametrize(
    "raw", ["a=1", 'a="1" b="2"', '="x"', 'a="unterminated', 'a="1",,b="2"', 'a="x\\"']
)
def test_labels_in_another_form_are_not_parsed(raw: str) -> None:
    assert parse_labels(raw) is None


def test_the_same_gpu_metadata_is_validated_once_and_shared() -> None:
    fields = {"hostname": " host-1 ", "device": "nvidia0", "gpu_index": 1}
    first = gpu_metadata(fields)
    assert gpu_metadata(dict(fields)) is first
    assert first.hostname == "host-1"


def test_equal_but_differently_typed_metadata_is_validated_on_its_own() -> None:
    assert gpu_metadata({"gpu_index": 1}).gpu_index == 1
    with pytest.raises(ValidationError):
        gpu_metadata({"gpu_index": 1.5})
    # 1 == 1.0 == True in Python; each is validated as what it is.
    assert gpu_metadata({"gpu_index": 1.0}) is not gpu_metadata({"gpu_index": 1})


def test_unhashable_metadata_is_still_validated() -> None:
    with pytest.raises(ValidationError):
        gpu_metadata({"hostname": ["not", "a", "string"]})


def test_a_point_goes_on_the_wire_at_another_time_if_given() -> None:
    point = Point.model_validate(
        {"gpu_uuid": "GPU-1", "metric_name": "m", "value": 1, "timestamp": "2025-07-18T20:42:34Z"}
    )
    later = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert point.wire(later)["timestamp"] == "2026-01-02T03:04:05Z"
    assert point.wire()["timestamp"] == "2025-07-18T20:42:34Z"


def test_a_mig_instance_is_stripped_and_a_blank_one_is_the_whole_gpu() -> None:
    point, _ = parse_message(point_with(gpu_instance=" 13 "), None)
    assert point.gpu_instance == "13"
    for blank in ("", "   ", None):
        whole, _ = parse_message(point_with(gpu_instance=blank), None)
        assert whole.gpu_instance is None
    assert parse_message(point_with(), None)[0].gpu_instance is None


@pytest.mark.parametrize(
    ("instance", "reason"),
    [(13, "gpu_instance: must be a string"), ("7" * 65, "gpu_instance: String should have at")],
)
def test_a_mig_instance_that_is_not_a_short_string_is_invalid(instance: Any, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        parse_message(point_with(gpu_instance=instance), None)


def test_the_wire_form_has_the_instance_only_when_there_is_one() -> None:
    whole = Point.model_validate(point_with())
    assert "gpu_instance" not in whole.wire()
    part = Point.model_validate(point_with(gpu_instance="2"))
    assert part.wire()["gpu_instance"] == "2"
    assert Point.model_validate(part.wire()) == part


def test_mig_and_pci_metadata_follow_the_string_rules() -> None:
    _, metadata = parse_message(
        point_with(),
        {
            "gpu_instance_profile": " 1g.5gb ",
            "pci_bus_id": "00000000:3B:00.0",
            "driver_version": "",
        },
    )
    assert metadata.known() == {"gpu_instance_profile": "1g.5gb", "pci_bus_id": "00000000:3B:00.0"}
    # The profile is the instance's, so it is not one of the GPU's fields.
    assert dict(metadata.gpu_items) == {"pci_bus_id": "00000000:3B:00.0"}
    with pytest.raises(InvalidMessage, match="driver_version"):
        parse_message(point_with(), {"driver_version": "5" * 257})
