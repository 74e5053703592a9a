"""The ``telemetry.ingest`` task: the one write path for one message, and Celery's verdict.

* valid point        → stored (or counted as a duplicate), acked
* invalid message    → recorded in ``rejected``, counted, acked; never retried
* StorageUnavailable → retried with exponential backoff and jitter, up to ``MAX_RETRIES``
* anything else, or retries used up → the task fails and, because
  ``task_acks_on_failure`` is off, the message is rejected without requeue,
  which RabbitMQ dead-letters into ``<queue>.dead``

With ``BATCH_SIZE`` > 1 most messages never become a task: see
:mod:`telemetry.worker.batching`. The ones that do (retries, failures of a
batch) come here.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task

from telemetry.broker.shards import retry_topology
from telemetry.broker.topology import ERROR_HEADER, TASK_NAME
from telemetry.config import Settings
from telemetry.errors import StorageUnavailable
from telemetry.observe.stats import STATS
from telemetry.worker import runtime
from telemetry.worker.app import app
from telemetry.worker.ingest import Delivery, ingest

logger = logging.getLogger("telemetry.tasks")
# Spreads retries out in time; nothing secret depends on it.
_jitter = random.Random()  # nosec B311


def backoff_delay_s(retries: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``retries + 1``: exponential, capped, half of it jittered."""
    ceiling = min(settings.retry_backoff_max_s, settings.retry_backoff_s * (2.0**retries))
    return ceiling / 2 + (rng or _jitter).uniform(0, ceiling / 2)


class IngestTask(Task):  # type: ignore[misc]
    """Counts what Celery decides after the task body: retries and dead letters."""

    # Celery's per-message handler, or batch commits in front of it (BATCH_SIZE > 1).
    Strategy = "telemetry.worker.batching:batch_strategy"

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
def ingest_task(self: IngestTask, /, *args: Any, **kwargs: Any) -> str:
    """Store one telemetry point (see docs/message-contract.md)."""
    # ``self`` is positional-only so that a keyword argument named "self" reaches the
    # validation (and is rejected as invalid_arguments) instead of failing the call.
    settings = runtime.current_settings()
    [outcome] = ingest(
        runtime.store(), STATS, [Delivery(self.request.id, args, kwargs)], runtime.gpu_cache()
    )
    if outcome.error is None:
        return outcome.describe()
    exc = outcome.error
    if not isinstance(exc, StorageUnavailable) or self.request.retries >= settings.max_retries:
        raise exc
    delay = backoff_delay_s(self.request.retries, settings)
    attempt = self.request.retries
    logger.warning(
        "Storage unavailable for %s, retry %d/%d in %.1fs: %s",
        self.request.id,
        self.request.retries + 1,
        settings.max_retries,
        delay,
        exc,
    )
    # The copy waits in the delay queue of this attempt and expires back into the
    # work queue after ``delay``: no countdown, so no ETA held in a worker and no
    # whole-second rounding (Celery's native delayed delivery on quorum queues).
    # It carries the error, so a dead letter says why it died.
    # Back to the shard it came from: its routing key is that shard's work queue.
    came_from = (self.request.delivery_info or {}).get("routing_key") or settings.queue_name
    delay_queue = retry_topology(settings, came_from).retry_queue(attempt)
    raise self.retry(
        exc=exc,
        countdown=0,
        max_retries=settings.max_retries,
        queue=delay_queue,
        # Named, or Celery would publish through the default exchange, which the
        # worker's account may not write to (docs/security.md).
        exchange=delay_queue.exchange.name,
        routing_key=delay_queue.routing_key,
        expiration=delay,
        headers={ERROR_HEADER: f"{type(exc).__name__}: {exc}"[:1000]},
    )
