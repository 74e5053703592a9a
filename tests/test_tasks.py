"""Retry timing of the ingest task."""

from __future__ import annotations

import random

from telemetry.config import Settings
from telemetry.worker.tasks import backoff_delay_s


def test_backoff_doubles_with_jitter_and_is_capped(settings: Settings) -> None:
    rng = random.Random(7)
    for retries, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0), (6, 60.0), (12, 60.0)]:
        delays = [backoff_delay_s(retries, settings, rng) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert max(delays) - min(delays) > ceiling / 4, "jitter spreads retries out"
