"""The ``telemetry.ingest`` task: decode, call the ingest logic, map errors to ack, retry or reject.

* valid point        → stored (or counted as a duplicate), acked
* invalid message    → recorded in ``rejected``, counted, acked; never retried
* StorageUnavailable → retried with exponential backoff and jitter, up to ``MAX_RETRIES``
* anything else, or retries used up → the task fails and, because
  ``task_acks_on_failure`` is off, the message is rejected without requeue,
  which RabbitMQ dead-letters into ``<queue>.dead``
"""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task

from telemetry import runtime
from telemetry.celery_app import app
from telemetry.config import Settings
from telemetry.errors import StorageUnavailable
from telemetry.ingest import ingest_message
from telemetry.queues import ERROR_HEADER, TASK_NAME
from telemetry.stats import STATS

logger = logging.getLogger("telemetry.tasks")
_jitter = random.Random()


def backoff_delay_s(retries: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``retries + 1``: exponential, capped, half of it jittered."""
    ceiling = min(settings.retry_backoff_max_s, settings.retry_backoff_s * (2.0**retries))
    return ceiling / 2 + (rng or _jitter).uniform(0, ceiling / 2)


class IngestTask(Task):  # type: ignore[misc]
    """Counts what Celery decides after the task body: retries and dead letters."""

    # Celery's per-message handler, or batch commits in front of it (BATCH_SIZE > 1).
    Strategy = "telemetry.batching:batch_strategy"

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        STATS.incr("retries")

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        STATS.incr("dead_lettered")
        logger.error(
            "Dead-lettering message %s after %d retries: %s", task_id, self.request.retries, exc
        )


@app.task(name=TASK_NAME, bind=True, base=IngestTask)  # type: ignore[untyped-decorator]
def ingest(self: IngestTask, *args: Any, **kwargs: Any) -> str:
    """Store one telemetry point (see the message contract in the README)."""
    STATS.incr("queue_delivered")
    settings = runtime.current_settings()
    try:
        outcome = ingest_message(
            runtime.store(), STATS, args, kwargs, self.request.id, runtime.gpu_cache()
        )
    except StorageUnavailable as exc:
        if self.request.retries >= settings.max_retries:
            raise
        delay = backoff_delay_s(self.request.retries, settings)
        logger.warning(
            "Storage unavailable for %s, retry %d/%d in %.1fs: %s",
            self.request.id,
            self.request.retries + 1,
            settings.max_retries,
            delay,
            exc,
        )
        # The retry copy carries the error, so a dead letter says why it died.
        raise self.retry(
            exc=exc,
            countdown=delay,
            max_retries=settings.max_retries,
            headers={ERROR_HEADER: f"{type(exc).__name__}: {exc}"[:1000]},
        ) from exc
    return outcome.describe()
