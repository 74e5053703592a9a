"""Readings: how a series' value follows the time.

A :class:`Wave` is a slow sine; :func:`integer`, :func:`double`,
:func:`constant` and :func:`energy_mj` turn one into the text of a sample's
value at a given time, as dcgm-exporter prints it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

Reading = Callable[[float], str]


@dataclass(frozen=True)
class Wave:
    """``base + amplitude * sin(omega * t + phase)``: a reading that drifts slowly."""

    base: float
    amplitude: float
    omega: float
    phase: float

    def at(self, now: float) -> float:
        """The value at ``now`` (seconds since the epoch)."""
        return self.base + self.amplitude * math.sin(self.omega * now + self.phase)

    def scaled(self, factor: float, offset: float = 0.0) -> Wave:
        """``offset + factor * self``: a reading that follows this one."""
        return Wave(offset + factor * self.base, factor * self.amplitude, self.omega, self.phase)

    def integral(self, start: float, end: float) -> float:
        """The integral from ``start`` to ``end``; increasing in ``end`` while base > amplitude."""
        cos_end = math.cos(self.omega * end + self.phase)
        cos_start = math.cos(self.omega * start + self.phase)
        return self.base * (end - start) - self.amplitude / self.omega * (cos_end - cos_start)


def wave(key: str, base: float, amplitude: float) -> Wave:
    """A wave whose period (4 to 14 minutes) and phase come from ``key``."""
    digest = zlib.crc32(key.encode())
    period_s = 240.0 + (digest % 601)
    phase = (digest >> 10) % 6283 / 1000.0
    return Wave(base, amplitude, 2.0 * math.pi / period_s, phase)


def integer(source: Wave) -> Reading:
    """An integer field (``%d``)."""
    return lambda now: str(round(source.at(now)))


def double(source: Wave) -> Reading:
    """A double field, printed as Go's ``%f``."""
    return lambda now: f"{source.at(now):f}"


def constant(text: str) -> Reading:
    """A field that does not change, such as a clock pinned by the driver."""
    return lambda now: text


def energy_mj(power_w: Wave, boot_time_s: float) -> Reading:
    """The energy counter in mJ: the integral of the power since boot, never decreasing."""
    return lambda now: str(int(1000.0 * power_w.integral(boot_time_s, max(now, boot_time_s))))
