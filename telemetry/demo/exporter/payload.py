"""The ``/metrics`` payload of a stand-in dcgm-exporter, with made-up GPUs.

The payload follows dcgm-exporter 3.x/4.x:

- Prometheus text 0.0.4; per family a ``# HELP`` and a ``# TYPE`` line, then
  its samples, without timestamps.
- Labels in dcgm-exporter's order: ``gpu``, ``UUID``, ``pci_bus_id``,
  ``device``, ``modelName``, on a MIG instance ``GPU_I_PROFILE`` and
  ``GPU_I_ID``, then ``Hostname``, ``DCGM_FI_DRIVER_VERSION``, and
  ``container``, ``namespace``, ``pod`` when a pod uses the GPU.
- Integers print as integers, doubles as Go's ``%f`` (six decimals).

A node's GPUs, with the defaults (4 GPUs, MIG and pods on): GPU 0 is split
into three MIG instances (3g.20gb, 2g.10gb, 1g.5gb; a pod uses the first),
GPU 1 runs one pod, GPU 2 is time-sliced between two pods (each series is
repeated once per pod, with the same value) and the others are idle. As on
real hardware, a MIG GPU has no ``DCGM_FI_DEV_GPU_UTIL`` nor
``DCGM_FI_DEV_MEM_COPY_UTIL``, and its device-wide fields (clocks,
temperatures, power, energy) repeat on every instance with one value.

Values are a deterministic function of the time and the series: slow sines
(periods of 4 to 14 minutes), and ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``,
a counter, is the exact integral of the power since ``boot_time``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from telemetry.demo.exporter.readings import (
    Reading,
    Wave,
    constant,
    double,
    energy_mj,
    integer,
    wave,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_MODEL = "NVIDIA A100-SXM4-40GB"
DEFAULT_DRIVER_VERSION = "535.129.03"
# 2025-01-01T00:00:00Z: the energy counter counts from here, so it is the same
# in every process that renders the same node.
DEFAULT_BOOT_TIME_S = 1_735_689_600.0
# Framebuffer sizes in MiB, as an A100-SXM4-40GB reports them.
WHOLE_GPU_FB_MIB = 40_536
MIG_INSTANCES = (("3g.20gb", 1, 19_968), ("2g.10gb", 5, 9_856), ("1g.5gb", 13, 4_864))


@dataclass(frozen=True)
class Pod:
    """A Kubernetes container that uses a GPU or a MIG instance."""

    container: str
    namespace: str
    name: str


@dataclass(frozen=True)
class Slice:
    """What series are reported for: a whole GPU, or one MIG instance of it."""

    profile: str | None
    instance_id: int | None
    fb_mib: int
    pods: tuple[Pod, ...]


@dataclass(frozen=True)
class Gpu:
    """One made-up GPU of a node."""

    index: int
    uuid: str
    pci_bus_id: str
    slices: tuple[Slice, ...]

    @property
    def mig(self) -> bool:
        """Whether the GPU is split into MIG instances."""
        return self.slices[0].profile is not None


@dataclass(frozen=True)
class Family:
    """One metric family: its ``# HELP``/``# TYPE`` lines and its series."""

    header: str
    series: tuple[tuple[str, Reading], ...]


def gpu_uuid(node: str, index: int) -> str:
    """A stable made-up UUID for GPU ``index`` of ``node``, in NVIDIA's format."""
    hexdigits = hashlib.sha256(f"stand-in/{node}/{index}".encode()).hexdigest()
    groups = (hexdigits[:8], hexdigits[8:12], hexdigits[12:16], hexdigits[16:20], hexdigits[20:32])
    return "GPU-" + "-".join(groups)


def escape(value: str) -> str:
    """A label value escaped for the text format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class StandInExporter:
    """The ``/metrics`` payload of one node's dcgm-exporter, rendered for any time."""

    def __init__(
        self,
        node: str,
        gpus: int = 4,
        mig: bool = True,
        pods: bool = True,
        *,
        model: str = DEFAULT_MODEL,
        driver_version: str = DEFAULT_DRIVER_VERSION,
        boot_time_s: float = DEFAULT_BOOT_TIME_S,
    ) -> None:
        if gpus < 1:
            raise ValueError(f"a node has at least one GPU, not {gpus}")
        self.node = node
        self.model = model
        self.driver_version = driver_version
        self.boot_time_s = boot_time_s
        self.gpus = tuple(self._gpu(index, mig, pods) for index in range(gpus))
        self._families = self._build_families()
        self._frozen_at: float | None = None

    @property
    def gpu_uuids(self) -> tuple[str, ...]:
        """The UUIDs of the node's GPUs, by index."""
        return tuple(gpu.uuid for gpu in self.gpus)

    @property
    def samples(self) -> int:
        """How many samples one scrape returns."""
        return sum(len(family.series) for family in self._families)

    @property
    def frozen(self) -> bool:
        """Whether the payload has stopped changing (see :meth:`freeze`)."""
        return self._frozen_at is not None

    def freeze(self, at: float | None = None) -> None:
        """Serve the payload of time ``at`` (default now) from now on, like a stuck DCGM."""
        self._frozen_at = time.time() if at is None else at

    def thaw(self) -> None:
        """Let the payload follow the time again."""
        self._frozen_at = None

    def payload(self, now: float) -> str:
        """What ``/metrics`` serves at ``now``: :meth:`render` of now, or of the frozen time."""
        frozen_at = self._frozen_at
        return self.render(now if frozen_at is None else frozen_at)

    def render(self, now: float) -> str:
        """The payload at ``now`` (seconds since the epoch)."""
        parts: list[str] = []
        for family in self._families:
            parts.append(family.header)
            for prefix, reading in family.series:
                parts.append(prefix)
                parts.append(reading(now))
                parts.append("\n")
        return "".join(parts)

    def _gpu(self, index: int, mig: bool, pods: bool) -> Gpu:
        # GPU 0 is the MIG one; the next GPUs get the pods: one dedicated, one time-sliced.
        role = index if mig else index + 1
        node = self.node
        slices: tuple[Slice, ...]
        if role == 0:
            slices = tuple(
                Slice(
                    profile,
                    instance_id,
                    fb_mib,
                    (Pod("server", "inference", f"infer-{node}-{instance_id}"),)
                    if pods and number == 0
                    else (),
                )
                for number, (profile, instance_id, fb_mib) in enumerate(MIG_INSTANCES)
            )
        elif role == 1 and pods:
            slices = (
                Slice(
                    None,
                    None,
                    WHOLE_GPU_FB_MIB,
                    (Pod("trainer", "training", f"train-{node}-{index}"),),
                ),
            )
        elif role == 2 and pods:
            notebooks = tuple(
                Pod("jupyter", "research", f"notebook-{node}-{suffix}") for suffix in "ab"
            )
            slices = (Slice(None, None, WHOLE_GPU_FB_MIB, notebooks),)
        else:
            slices = (Slice(None, None, WHOLE_GPU_FB_MIB, ()),)
        domain, bus = divmod(index, 16)
        pci_bus_id = f"{domain:08X}:{bus * 16 + 7:02X}:00.0"
        return Gpu(index, gpu_uuid(node, index), pci_bus_id, slices)

    def _labels(self, gpu: Gpu, piece: Slice, pod: Pod | None) -> str:
        pairs = [
            ("gpu", str(gpu.index)),
            ("UUID", gpu.uuid),
            ("pci_bus_id", gpu.pci_bus_id),
            ("device", f"nvidia{gpu.index}"),
            ("modelName", self.model),
        ]
        if piece.profile is not None:
            pairs += [("GPU_I_PROFILE", piece.profile), ("GPU_I_ID", str(piece.instance_id))]
        pairs += [("Hostname", self.node), ("DCGM_FI_DRIVER_VERSION", self.driver_version)]
        if pod is not None:
            pairs += [("container", pod.container), ("namespace", pod.namespace), ("pod", pod.name)]
        return ",".join(f'{name}="{escape(value)}"' for name, value in pairs)

    def _build_families(self) -> list[Family]:
        # Per GPU one utilisation wave drives power and temperatures, so they agree.
        device: dict[int, dict[str, Reading]] = {}
        per_slice: dict[tuple[int, int], dict[str, Reading]] = {}
        for gpu in self.gpus:
            key = f"{self.node}/{gpu.index}"
            busy = any(piece.pods for piece in gpu.slices)
            util = wave(key, 70.0, 25.0) if busy else wave(key, 3.0, 2.0)
            power = util.scaled(3.2, offset=55.0)
            device[gpu.index] = {
                "DCGM_FI_DEV_SM_CLOCK": integer(util.scaled(5.0, offset=900.0))
                if busy
                else constant("210"),
                "DCGM_FI_DEV_MEM_CLOCK": constant("1215"),
                "DCGM_FI_DEV_MEMORY_TEMP": integer(util.scaled(0.25, offset=31.0)),
                "DCGM_FI_DEV_GPU_TEMP": integer(util.scaled(0.35, offset=30.0)),
                "DCGM_FI_DEV_POWER_USAGE": double(power),
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": energy_mj(power, self.boot_time_s),
                "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": constant("0"),
                "DCGM_FI_DEV_GPU_UTIL": integer(util),
                "DCGM_FI_DEV_MEM_COPY_UTIL": integer(util.scaled(0.6)),
                "DCGM_FI_DEV_XID_ERRORS": constant("0"),
            }
            for number, piece in enumerate(gpu.slices):
                slice_key = f"{key}/{number}"
                active = wave(slice_key, 0.7, 0.25) if piece.pods else wave(slice_key, 0.02, 0.015)
                used_share = wave(slice_key + "/fb", 0.55, 0.2) if piece.pods else None
                used_mib = (
                    used_share.scaled(piece.fb_mib)
                    if used_share is not None
                    else Wave(3.0, 0.0, 1.0, 0.0)
                )
                per_slice[gpu.index, number] = {
                    "DCGM_FI_DEV_FB_FREE": integer(used_mib.scaled(-1.0, offset=piece.fb_mib)),
                    "DCGM_FI_DEV_FB_USED": integer(used_mib),
                    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": double(active),
                    "DCGM_FI_PROF_DRAM_ACTIVE": double(active.scaled(0.45)),
                }
        families: list[Family] = []
        for name, kind, text in FIELDS:
            series: list[tuple[str, Reading]] = []
            for gpu in self.gpus:
                if gpu.mig and name in NOT_ON_MIG:
                    continue
                for number, piece in enumerate(gpu.slices):
                    readings = per_slice[gpu.index, number]
                    reading = readings[name] if name in readings else device[gpu.index][name]
                    for pod in piece.pods or (None,):
                        series.append((f"{name}{{{self._labels(gpu, piece, pod)}}} ", reading))
            families.append(Family(f"# HELP {name} {text}\n# TYPE {name} {kind}\n", tuple(series)))
        return families


# The families, in dcgm-exporter's default order: name, type, help.
FIELDS = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        "Total energy consumption since boot (in mJ).",
    ),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries."),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active."),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge", "Ratio of cycles the device memory interface is busy."),
)
# DCGM cannot measure these on a GPU in MIG mode; dcgm-exporter leaves them out.
NOT_ON_MIG = frozenset({"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL"})
