"""The ``telemetry.ingest`` task: the one write path for one message, and Celery's verdict.

* valid point        → stored (or counted as a duplicate), acked
* invalid message    → recorded in ``rejected``, counted, acked; never retried
* StorageUnavailable → retried with exponential backoff and jitter, as the task's
  retry options say (Celery's ``max_retries`` and friends, falling back on
  ``MAX_RETRIES`` and friends: :mod:`telemetry.worker.retry_options`)
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
from collections.abc import Sequence
from typing import Any

from celery import Task

from telemetry.broker.shards import retry_topology
from telemetry.broker.topology import ERROR_HEADER, TASK_NAME
from telemetry.errors import StorageUnavailable
from telemetry.worker.app import app
from telemetry.worker.batcher import BatchResult
from telemetry.worker.batching import write_batch
from telemetry.worker.context import context_of
from telemetry.worker.ingest import DecodedMessage, ingest

logger = logging.getLogger("telemetry.tasks")
# Spreads retries out in time; nothing secret depends on it.
_jitter = random.Random()  # nosec B311


class IngestTask(Task):  # type: ignore[misc]
    """Counts what Celery decides after the task body: retries and dead letters.

    Each process's counters are in the worker context on the task's app.
    """

    # Celery's per-message handler, or batch commits in front of it (BATCH_SIZE > 1).
    Strategy = "telemetry.worker.batching:batch_strategy"

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        context_of(self.app).recorder.retried()

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        context_of(self.app).recorder.dead_lettered()
        logger.error(
            "Dead-lettering message %s after %d retries: %s", task_id, self.request.retries, exc
        )

    def write_batch(self, messages: Sequence[DecodedMessage]) -> BatchResult:
        """The batch path's pool job, with this process's worker context.

        Handed to the pool as a method of the task: a task pickles by its name,
        so a forked pool process finds its own task, app and context.
        """
        return write_batch(context_of(self.app), messages)


@app.task(name=TASK_NAME, bind=True, base=IngestTask)  # type: ignore[untyped-decorator]
def ingest_task(self: IngestTask, /, *args: Any, **kwargs: Any) -> str:
    """Store one telemetry point (see docs/message-contract.md)."""
    # ``self`` is positional-only so that a keyword argument named "self" reaches the
    # validation (and is rejected as invalid_arguments) instead of failing the call.
    context = context_of(self.app)
    settings = context.settings
    result = ingest(
        context.store(), [DecodedMessage(self.request.id, args, kwargs)], context.gpu_cache
    )
    context.recorder.ingested(result)
    [outcome] = result.outcomes
    if outcome.error is None:
        return outcome.describe()
    exc = outcome.error
    if not isinstance(exc, StorageUnavailable):
        raise exc
    # Resolved at start from this task's options, the policy whose delay queues were declared.
    policy = context.retry_policy
    attempt = self.request.retries
    if policy.gives_up(attempt):
        raise exc
    delay = policy.delay_s(attempt, _jitter)
    logger.warning(
        "Storage unavailable for %s, retry %d/%s in %.1fs: %s",
        self.request.id,
        attempt + 1,
        policy.max_retries,
        delay,
        exc,
    )
    # The copy waits in the delay queue of this attempt and expires back into the
    # work queue after ``delay``: no countdown, so no ETA held in a worker and no
    # whole-second rounding (Celery's native delayed delivery on quorum queues).
    # It carries the error, so a dead letter says why it died.
    # Back to the shard it came from: its routing key is that shard's work queue.
    came_from = (self.request.delivery_info or {}).get("routing_key") or settings.queue_name
    delay_queue = retry_topology(settings, came_from, policy).retry_queue(attempt)
    raise self.retry(
        exc=exc,
        countdown=0,
        max_retries=policy.max_retries,
        queue=delay_queue,
        # Named, or Celery would publish through the default exchange, which the
        # worker's account may not write to (docs/security.md).
        exchange=delay_queue.exchange.name,
        routing_key=delay_queue.routing_key,
        expiration=delay,
        headers={ERROR_HEADER: f"{type(exc).__name__}: {exc}"[:1000]},
    )
