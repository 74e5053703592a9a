"""Batch commits: many ``telemetry.ingest`` messages written in one bulk round trip.

With ``BATCH_SIZE`` > 1 the task's execution strategy holds fresh messages in
a buffer instead of starting a task for each. When the buffer holds
``BATCH_SIZE`` messages, or its oldest has waited ``FLUSH_INTERVAL_MS``, the
batch goes to the pool as one job, which runs the one write path
(:func:`telemetry.worker.ingest.ingest`) on all of it. Then, per message:

* stored, duplicate or rejected → the ack of that message alone, after the
  write returned, and a ``task-received`` plus a ``task-succeeded`` event
  (Flower shows it like any task, with the same result text);
* failed (storage trouble for this message or the whole batch) → Celery's
  own per-task path, which retries with backoff and dead-letters exactly as
  with ``BATCH_SIZE=1``. Writes are idempotent, so a point a failed batch
  did store is counted as a duplicate there.

Retry copies (they carry a retry count) take the per-task path from the
start. Redelivered messages (their last holder died or lost the broker
before settling them) are suspects: one of them may be a poison message
that kills the worker. They wait in a
:class:`~telemetry.worker.quarantine.Quarantine` and are written one at a
time (a batch of one), the least delivered first, so a poison message is
handled while as few others as possible are held: innocents held with it
in one crash are settled in the next round, and the poison alone
reaches the queue's delivery limit and is dead-lettered (quorum queues).

Messages still buffered when the connection drops, or when
the worker stops, were never acked: RabbitMQ redelivers them. Batched
messages skip Celery's revoke and ``expires`` checks, which this collector
does not use.

Why a strategy and not a group commit in the task body: a task per message
costs Celery's whole per-task machinery (request, trace, pool hand-off), and
that machinery, not the database, would then bound how fast a worker goes.
The job runs on the worker's pool, so it works with threads and processes
alike. docs/batch-commits.md and docs/performance.md have the figures.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from telemetry.worker.batcher import Batcher, BatchOptions, BatchResult
from telemetry.worker.celery.message import MessageHandler
from telemetry.worker.celery.strategy import ConsumerPort, make_strategy
from telemetry.worker.context import WorkerContext, context_of
from telemetry.worker.ingest import DecodedMessage, ingest

logger = logging.getLogger("telemetry.batching")


def write_batch(context: WorkerContext, messages: Sequence[DecodedMessage]) -> BatchResult:
    """The one write path over a batch, counted by the context's recorder; never raises.

    An unexpected error sends every message down the per-task path, which
    reports it the way Celery reports any task error.
    """
    try:
        result = ingest(context.store(), messages, context.gpu_cache)
    except Exception:  # any surprise: the per-task path handles each message
        logger.exception("Batch of %d failed unexpectedly; each goes on alone", len(messages))
        return [None] * len(messages)
    context.recorder.ingested(result)
    return [outcome.describe() if outcome.settled else None for outcome in result.outcomes]


def build_handler(task: Any, per_task: MessageHandler, port: ConsumerPort) -> MessageHandler:
    """The ``telemetry.ingest`` message handler: Celery's own, or batching in front of it.

    The options come from the worker context on the task's app. The pool job is
    the task's ``write_batch``: a task pickles by its name, so a forked pool
    process runs the job with the context it built for itself.
    """
    context = context_of(task.app)
    options = BatchOptions.of(context.settings)
    return Batcher(task.name, per_task, port, task.write_batch, options, context.recorder).start()


batch_strategy = make_strategy(build_handler)
"""The ``Strategy`` of the ingest task (``IngestTask.Strategy`` names it)."""
