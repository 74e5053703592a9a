"""Properties of the message contract: any arguments are a point or one named rejection,
and what we write is read back the same.

Bounds and profiles are in tests/conftest.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import bson
from hypothesis import given
from hypothesis import strategies as st

from telemetry.dcgm_exporter import render_labels
from telemetry.errors import InvalidMessage, RejectionKind
from telemetry.models import GpuMetadata, Point, parse_labels, parse_message, parse_task_arguments
from telemetry.store.mongo import GpuUpdate, point_document
from tests.fuzz_strategies import json_values, metadata_objects, point_objects, valid_points


def _accepted_or_one_kind(
    call: Any, *arguments: Any, kinds: frozenset[RejectionKind]
) -> tuple[Point, GpuMetadata] | None:
    try:
        point, metadata = call(*arguments)
    except InvalidMessage as exc:
        assert exc.kind in kinds, exc
        assert exc.reason
        return None
    assert isinstance(point, Point) and isinstance(metadata, GpuMetadata)
    # An accepted point must be storable: what the store writes for it is valid BSON.
    now = datetime.now(UTC)
    bson.encode(point_document(point, metadata, now))
    for update in GpuUpdate.merge([(point, metadata)]):
        for operator in update.spec(now).values():
            bson.encode(operator)
    return point, metadata


@given(
    point=valid_points | point_objects | json_values,
    metadata=metadata_objects | json_values,
)
def test_any_message_is_a_point_or_an_invalid_point_or_metadata(point: Any, metadata: Any) -> None:
    _accepted_or_one_kind(
        parse_message,
        point,
        metadata,
        kinds=frozenset({RejectionKind.INVALID_POINT, RejectionKind.INVALID_METADATA}),
    )


@given(point=valid_points, metadata=metadata_objects)
def test_any_metadata_beside_a_valid_point_is_accepted_or_invalid_metadata(
    point: dict[str, Any], metadata: dict[str, Any]
) -> None:
    _accepted_or_one_kind(
        parse_message, point, metadata, kinds=frozenset({RejectionKind.INVALID_METADATA})
    )


@given(
    args=st.lists(valid_points | point_objects | metadata_objects | json_values, max_size=3),
    kwargs=st.dictionaries(
        st.sampled_from(["point", "metadata", "self", "other"]),
        valid_points | point_objects | metadata_objects | json_values,
        max_size=3,
    ),
)
def test_any_task_arguments_are_a_point_or_one_rejection_kind(
    args: list[Any], kwargs: dict[str, Any]
) -> None:
    _accepted_or_one_kind(
        parse_task_arguments,
        args,
        kwargs,
        kinds=frozenset(
            {
                RejectionKind.INVALID_POINT,
                RejectionKind.INVALID_METADATA,
                RejectionKind.INVALID_ARGUMENTS,
            }
        ),
    )


label_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
label_sets = st.dictionaries(label_names, st.text(max_size=30), max_size=6)
# Strings the contract keeps as they are: stripped already, non-empty.
kept_names = st.text(min_size=1, max_size=256).map(str.strip).filter(bool)
real_times = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).filter(lambda moment: moment <= datetime.now(UTC))

points = st.builds(
    Point,
    gpu_uuid=kept_names,
    metric_name=kept_names,
    value=st.floats(allow_nan=False, allow_infinity=False),
    timestamp=real_times,
    labels_raw=st.none() | label_sets.map(render_labels),
    gpu_instance=st.none() | st.text(min_size=1, max_size=64).map(str.strip).filter(bool),
)


@given(point=points)
def test_a_points_wire_form_reads_back_as_the_same_point(point: Point) -> None:
    # what a producer sends: the wire form through JSON
    wire = json.loads(json.dumps(point.wire()))
    parsed, metadata = parse_message(wire, None)
    assert parsed == point
    assert metadata == GpuMetadata()


@given(labels=label_sets)
def test_rendered_labels_read_back_exactly(labels: dict[str, str]) -> None:
    assert parse_labels(render_labels(labels)) == labels


@given(text=st.text(max_size=200) | label_sets.map(render_labels).map(lambda text: text[:-1]))
def test_parse_labels_never_raises(text: str) -> None:
    labels = parse_labels(text)
    assert labels is None or all(isinstance(value, str) for value in labels.values())
