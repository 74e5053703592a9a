"""A one-line progress bar for terminals: count, rate and time left."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Redraws ``label [####....] done/total pct rate ETA`` at most ten times a second."""

    def __init__(
        self, total: int | None, label: str, stream: TextIO | None = None, unit: str = "rows"
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self._stream = stream or sys.stderr
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._done = 0

    @staticmethod
    def wanted(stream: TextIO | None = None) -> bool:
        """Whether a bar makes sense: only when the stream is a terminal."""
        target = stream or sys.stderr
        return bool(getattr(target, "isatty", lambda: False)())

    def update(self, done: int, force: bool = False) -> None:
        """Record ``done`` and redraw if enough time has passed."""
        self._done = done
        now = time.monotonic()
        if force or now - self._drawn_at >= 0.1:
            self._drawn_at = now
            self._stream.write("\r" + self.render(now) + "\x1b[K")
            self._stream.flush()

    def render(self, now: float | None = None) -> str:
        """The bar as text."""
        elapsed = max((now or time.monotonic()) - self._started, 1e-9)
        rate = self._done / elapsed
        if not self.total:
            return f"{self.label} {self._done:,} {self.unit}  {rate:,.0f} {self.unit}/s"
        share = min(self._done / self.total, 1.0)
        filled = int(share * 30)
        left = (self.total - self._done) / rate if rate > 0 else 0.0
        return (
            f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self._done:,}/{self.total:,} "
            f"{share:4.0%}  {rate:,.0f} {self.unit}/s  ETA {format_duration(left)}"
        )

    def finish(self) -> None:
        """Draw the last state and end the line."""
        self.update(self._done, force=True)
        self._stream.write("\n")
        self._stream.flush()


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` for a number of seconds."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
