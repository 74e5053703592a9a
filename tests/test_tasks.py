"""Retry timing of the ingest task, and how it takes its arguments."""

from __future__ import annotations

import random

from celery import Celery

from telemetry.config import Settings
from telemetry.store.mongo import MongoTelemetryStore
from telemetry.worker import tasks
from telemetry.worker.tasks import backoff_delay_s


def test_backoff_doubles_with_jitter_and_is_capped(settings: Settings) -> None:
    rng = random.Random(7)
    for retries, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0), (6, 60.0), (12, 60.0)]:
        delays = [backoff_delay_s(retries, settings, rng) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert max(delays) - min(delays) > ceiling / 4, "jitter spreads retries out"


def test_a_keyword_argument_named_self_is_rejected_not_a_failed_call(
    collector_app: Celery, mock_store: MongoTelemetryStore, sample_point: dict[str, object]
) -> None:
    # found by tests/test_fuzz_decoder.py: kwargs {"self": ..., "point": ...} raised
    # TypeError (multiple values for 'self'), so the message was dead-lettered, not rejected
    result = tasks.ingest_task.run(self=1, point=sample_point)
    assert result == "rejected: unexpected task arguments: ['self']"
    record = mock_store.database["rejected"].find_one()
    assert record is not None and record["kind"] == "invalid_arguments"
