"""What the scraper knows of each target: up or down, frozen or changing, and when it last worked.

A target that goes down is one log line, and one more when it comes back,
however many scrapes fail in between. A target whose payload stays the same
for ``frozen_after`` scrapes in a row is flagged frozen: dcgm-exporter keeps
answering ``/health`` with OK while its DCGM connection is stuck, so only
the values show it.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

logger = logging.getLogger("telemetry.scraper.health")


@dataclass
class TargetHealth:
    """One target's state across scrapes."""

    url: str
    frozen_after: int
    up: bool | None = None
    frozen: bool = False
    failed_in_a_row: int = 0
    unchanged_in_a_row: int = 0
    last_success_s: float | None = None
    _last_digest: int | None = None

    def succeeded(self, body: bytes, at_s: float) -> None:
        """Record a scrape that returned metrics; ``at_s`` is wall-clock time."""
        if self.up is False:
            logger.warning(
                "Target %s is up again after %d failed scrape(s)", self.url, self.failed_in_a_row
            )
        self.up, self.failed_in_a_row, self.last_success_s = True, 0, at_s
        digest = zlib.crc32(body)
        self.unchanged_in_a_row = self.unchanged_in_a_row + 1 if digest == self._last_digest else 0
        self._last_digest = digest
        frozen = self.unchanged_in_a_row + 1 >= self.frozen_after
        if frozen and not self.frozen:
            logger.warning(
                "Target %s looks frozen: the same payload %d scrapes in a row "
                "(its exporter may have lost DCGM)",
                self.url,
                self.unchanged_in_a_row + 1,
            )
        elif self.frozen and not frozen:
            logger.warning("Target %s is no longer frozen: its payload changed", self.url)
        self.frozen = frozen

    def failed(self, reason: str, detail: str) -> None:
        """Record a failed scrape; the first of a run is logged."""
        if self.up is not False:
            logger.warning("Target %s is down: %s (%s)", self.url, detail, reason)
        self.up = False
        self.failed_in_a_row += 1
