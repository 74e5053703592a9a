"""Response bodies of the read API, as pydantic models: they are the OpenAPI schemas too.

Times are strings (RFC 3339, UTC, milliseconds, ``Z``) rather than datetimes,
so the exact text a client receives is fixed here and not left to a JSON
encoder's defaults.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

EXAMPLE_UUID = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
EXAMPLE_HOST = "mtv5-dgx1-hgpu-031"
EXAMPLE_MODEL = "NVIDIA H100 80GB HBM3"
EXAMPLE_METRIC = "DCGM_FI_DEV_GPU_UTIL"
EXAMPLE_TIME = "2025-07-18T20:42:34.000Z"
EXAMPLE_INSTANCE = "13"


class MigInstance(BaseModel):
    """A MIG GPU instance the collector has stored points of."""

    gpu_instance: str = Field(
        description="The instance id (dcgm-exporter's GPU_I_ID).", examples=[EXAMPLE_INSTANCE]
    )
    profile: str | None = Field(
        description="The instance's profile, e.g. 1g.5gb, when a producer sent it.",
        examples=["1g.5gb"],
    )
    first_seen: str | None = Field(
        description="Time of the instance's oldest stored point.", examples=[EXAMPLE_TIME]
    )
    last_seen: str | None = Field(
        description=(
            "Time of the instance's newest point, as the collector last recorded it; like the "
            "GPU's, it may trail by up to GPU_LAST_SEEN_LAG_S seconds."
        ),
        examples=[EXAMPLE_TIME],
    )


class Gpu(BaseModel):
    """One GPU as the collector last heard of it; metadata fields are null when never sent."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "uuid": EXAMPLE_UUID,
                    "hostname": EXAMPLE_HOST,
                    "device": "nvidia0",
                    "gpu_index": 0,
                    "model_name": EXAMPLE_MODEL,
                    "container": None,
                    "pod": None,
                    "namespace": None,
                    "pci_bus_id": "00000000:3B:00.0",
                    "driver_version": "535.129.03",
                    "first_seen": "2025-07-18T20:42:34.000Z",
                    "last_seen": "2025-07-18T21:42:33.000Z",
                    "mig_instances": [],
                }
            ]
        }
    )

    uuid: str = Field(description="The GPU's UUID, as DCGM reports it.")
    hostname: str | None = Field(description="Host the GPU is in.")
    device: str | None = Field(description="Device name on the host, e.g. nvidia0.")
    gpu_index: int | None = Field(description="Index of the GPU on its host.")
    model_name: str | None = Field(description="GPU model.")
    container: str | None = Field(description="Container using the GPU, if any.")
    pod: str | None = Field(description="Kubernetes pod using the GPU, if any.")
    namespace: str | None = Field(description="Kubernetes namespace of that pod, if any.")
    pci_bus_id: str | None = Field(description="PCI bus id, e.g. 00000000:3B:00.0.")
    driver_version: str | None = Field(description="NVIDIA driver version on the host.")
    first_seen: str | None = Field(description="Time of the GPU's oldest stored point.")
    last_seen: str | None = Field(
        description=(
            "Time of the GPU's newest point, as the collector last recorded it; it may trail "
            "the newest point by up to GPU_LAST_SEEN_LAG_S seconds."
        )
    )
    mig_instances: list[MigInstance] = Field(
        description=(
            "The GPU's MIG instances that sent points, numeric ids in number order; empty for "
            "a GPU that is not split (its points are the whole GPU's)."
        )
    )


class GpuList(BaseModel):
    """One page of GPUs, ordered by UUID."""

    gpus: list[Gpu] = Field(description="GPUs on this page, ordered by uuid.")
    total: int = Field(description="GPUs matching the filters, over all pages.", examples=[247])
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page.",
        examples=[None],
    )


class LatestMetric(BaseModel):
    """A metric stored for a GPU, with its newest value."""

    metric_name: str = Field(description="DCGM field name.", examples=[EXAMPLE_METRIC])
    gpu_instance: str | None = Field(
        default=None,
        description="The MIG instance of this series; left out for the whole GPU.",
        examples=[EXAMPLE_INSTANCE],
        exclude_if=lambda value: value is None,
    )
    value: float = Field(description="The newest stored value.", examples=[87.0])
    timestamp: str = Field(description="Time of that value.", examples=[EXAMPLE_TIME])


class MetricList(BaseModel):
    """The metrics stored for one GPU, by name."""

    gpu_uuid: str = Field(description="The GPU asked about.", examples=[EXAMPLE_UUID])
    metrics: list[LatestMetric] = Field(
        description=(
            "One entry per metric and MIG instance, ordered by name, then instance; the whole "
            "GPU's entry of a metric (no gpu_instance) comes first."
        )
    )


class TelemetryPoint(BaseModel):
    """One stored point, or with `step` one bucket of points summarised."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "metric_name": EXAMPLE_METRIC,
                    "value": 87.0,
                    "timestamp": EXAMPLE_TIME,
                    "labels": {"DCGM_FI_DRIVER_VERSION": "535.129.03", "gpu": "0"},
                }
            ]
        }
    )

    metric_name: str = Field(description="DCGM field name.")
    gpu_instance: str | None = Field(
        default=None,
        description="The MIG instance the point is of; left out for the whole GPU.",
        exclude_if=lambda value: value is None,
    )
    value: float = Field(description="The value; with `step`, the bucket's `agg` of values.")
    timestamp: str = Field(
        description=(
            "Time of the point; with `step`, the start of its bucket (buckets are aligned to "
            "multiples of `step` since the Unix epoch)."
        )
    )
    labels: dict[str, str] = Field(
        description="The point's Prometheus labels; empty for downsampled buckets."
    )
    # Left out of raw points, which are the four fields exactly (pydantic >= 2.11).
    count: int | None = Field(
        default=None,
        description="With `step` only: how many stored points the bucket summarises.",
        exclude_if=lambda value: value is None,
    )


class TelemetryPage(BaseModel):
    """One page of a GPU's points, ordered by timestamp, metric_name, then gpu_instance."""

    gpu_uuid: str = Field(description="The GPU asked about.", examples=[EXAMPLE_UUID])
    step: str | None = Field(
        default=None, description="The bucket width when downsampled, else null.", examples=[None]
    )
    agg: str | None = Field(
        default=None, description="The aggregation when downsampled, else null.", examples=[None]
    )
    points: list[TelemetryPoint] = Field(description="Points (or buckets) on this page.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page.",
        examples=[None],
    )


class Health(BaseModel):
    """A probe's answer."""

    status: str = Field(description="`ok` (alive) or `ready` (database answers).", examples=["ok"])


class Error(BaseModel):
    """Every error the API returns."""

    error: str = Field(
        description=(
            "Stable machine-readable code: invalid_time, invalid_window, window_too_large, "
            "invalid_limit, invalid_step, invalid_agg, invalid_cursor, invalid_parameter, "
            "unknown_parameter, unauthorized, not_found, database_unavailable, query_timeout, "
            "database_error."
        ),
        examples=["invalid_time"],
    )
    message: str = Field(
        description="What was wrong, for a person.",
        examples=["start_time='yesterday' is not an RFC 3339 time such as 2025-07-18T20:42:34Z"],
    )
