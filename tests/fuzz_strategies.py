"""Hypothesis strategies for the message contract, shared by the property tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import strategies as st

# What JSON decodes to (kombu's decoder accepts NaN and Infinity too).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    # A float's range ends: JSON has no limit on digits.
    | st.sampled_from([10**309, -(10**309)])
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)

offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)
# Any datetime datetime.fromisoformat can read back, at the edges of its range too.
any_times = st.datetimes(timezones=st.none() | offsets).map(lambda moment: moment.isoformat())
# The calendar's two ends, where an offset can carry a time out of datetime's range.
edge_times = st.builds(
    lambda moment, offset: moment.replace(tzinfo=offset).isoformat(),
    st.datetimes(min_value=datetime(9999, 12, 31)) | st.datetimes(max_value=datetime(1, 1, 1, 23)),
    offsets,
)
timestamps = (
    any_times
    | edge_times
    | st.sampled_from(["", " ", "now", "2025-07-18T20:42:34Z", "1970-01-01T00:00:00Z"])
)
numbers = json_scalars | st.sampled_from(["75", " 1e3 ", "NaN", "inf", "1_000", "0x10"])
names = st.text(max_size=300) | st.sampled_from(["GPU-1", "DCGM_FI_DEV_GPU_UTIL", "  "])

# A point object: mostly the contract's fields with plausible or hostile values.
point_objects = st.fixed_dictionaries(
    {},
    optional={
        "gpu_uuid": names | json_scalars,
        "metric_name": names | json_scalars,
        "value": numbers,
        "timestamp": timestamps | json_scalars,
        "labels_raw": st.text(max_size=50) | json_scalars,
        "gpu_instance": st.text(max_size=70) | json_scalars,
        "unknown": json_values,
    },
)
# Valid points, so that the metadata beside them is validated too.
valid_points = st.fixed_dictionaries(
    {
        "gpu_uuid": st.sampled_from(["GPU-1", " GPU-2 "]),
        "metric_name": st.sampled_from(["DCGM_FI_DEV_GPU_UTIL", "m"]),
        "value": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**20), 10**20),
        "timestamp": st.sampled_from(["2025-07-18T20:42:34Z", "2025-07-18T22:42:34.5+02:00"]),
    },
    optional={"gpu_instance": st.text(max_size=70), "labels_raw": st.text(max_size=30)},
)
edge_integers = st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, 10**309, -(2**63) - 1])
metadata_strings = st.none() | st.text(max_size=300)
metadata_objects = st.fixed_dictionaries(
    {},
    optional={
        "hostname": metadata_strings,
        "device": metadata_strings | json_scalars,
        "gpu_index": edge_integers
        | json_scalars
        | st.sampled_from(["0", " 3 ", "-1", "1.5", str(2**63), str(2**63 - 1)]),
        "model_name": metadata_strings,
        "pod": metadata_strings,
        "pci_bus_id": metadata_strings,
        "other": json_values,
    },
)
