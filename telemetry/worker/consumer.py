"""The worker's message consumer: every message counted once, bad ones recorded, not lost.

Each message taken from the queue is counted in ``queue_delivered`` here,
once (a retry copy is a new message and counts again). A message that can
never become a task (an undecodable body, a disallowed content type, no task
header, a body of the wrong shape) is recorded in ``rejected``, counted in
``messages_errors`` and acked, so nothing loops and an operator can see what
arrived. If even the record cannot be written, the message is rejected to
the dead-letter queue instead, so it is never lost. A body longer than
``MAX_MESSAGE_BYTES`` is such a message too (``oversize``), refused before it
is decoded.

Only ``telemetry.ingest`` runs: a message naming any other task, one of
Celery's built-in tasks included, is dead-lettered (``unknown_task``), never
executed.
"""

from __future__ import annotations

import functools
import logging

from telemetry.errors import RejectionKind
from telemetry.store.mongo import RAW_MESSAGE_MAX_CHARS
from telemetry.worker.celery.intake import GuardedConsumer
from telemetry.worker.celery.message import ReceivedMessage
from telemetry.worker.context import WorkerContext, context_of
from telemetry.worker.ingest import reject_undecodable

logger = logging.getLogger("telemetry.consumer")


# Enough of a body to fill the record and to tell that it was cut (4 bytes per character).
_RAW_KEPT_CHARS = RAW_MESSAGE_MAX_CHARS + 1


def raw_body(message: ReceivedMessage) -> str:
    """The start of the message body as text, whatever its encoding: as much as
    ``rejected`` keeps and a little more, so an oversize body is never copied whole."""
    body = message.body
    if isinstance(body, bytes | bytearray):
        return bytes(body[: 4 * _RAW_KEPT_CHARS]).decode("utf-8", errors="replace")
    return str(body)[:_RAW_KEPT_CHARS]


def message_id(message: ReceivedMessage) -> str | None:
    """The task id, or the AMQP message id, if the message has either."""
    headers = message.headers or {}
    properties = getattr(message, "properties", {}) or {}
    found = headers.get("id") or properties.get("correlation_id") or properties.get("message_id")
    return str(found) if found is not None else None


CELERY_BUILT_IN_PREFIX = "celery."
"""The names of the tasks Celery registers in every app."""


class TelemetryConsumer(GuardedConsumer):
    """Celery's consumer, with arrivals counted and bad messages recorded instead of only logged.

    It runs with the worker context on its app.
    """

    @functools.cached_property
    def context(self) -> WorkerContext:
        """The worker context of this process (the consumer runs in the main process, whose
        context is attached once, before the consumer is made)."""
        return context_of(self.app)

    def accepts(self, task_name: str) -> bool:
        """The app's own tasks, never Celery's built-ins (``celery.map``, ``celery.chord_unlock``,
        …): the collector's app registers only ``telemetry.ingest``, and an app built on it
        (a benchmark's no-op task) runs its own too."""
        return not task_name.startswith(CELERY_BUILT_IN_PREFIX)

    def max_body_length(self) -> int:
        """``MAX_MESSAGE_BYTES``."""
        return self.context.settings.max_message_bytes

    def on_arrival(self, message: ReceivedMessage) -> None:
        """Count every message taken from the queue, once."""
        self.context.recorder.arrived()

    def on_bad_message(self, message: ReceivedMessage, reason: str, kind: RejectionKind) -> None:
        """Record and ack a message that can never become a task; dead-letter it if we cannot."""
        if message.acknowledged:
            # Celery already settled it before failing; settling twice would close the channel.
            logger.error("Bad message %s after it was settled: %s", message_id(message), reason)
            return
        context = self.context
        result = reject_undecodable(
            context.store(), reason, kind, message_id(message), raw_body(message)
        )
        context.recorder.ingested(result)
        [outcome] = result.outcomes
        if not outcome.settled:
            logger.error(
                "Could not record bad message, dead-lettering it: %s (%s)", reason, outcome.error
            )
            context.recorder.dead_lettered()
            message.reject(requeue=False)
            return
        message.ack()

    def on_unknown_task_name(self, message: ReceivedMessage) -> None:
        """A task this worker does not run is dead-lettered, never run (another version may
        know the name; an operator sees it in ``telemetry dlq list``)."""
        headers = message.headers or {}
        logger.warning(
            "Dead-lettering message %s: task %r is not one this collector runs (%s)",
            message_id(message),
            str(headers.get("task"))[:200],
            RejectionKind.UNKNOWN_TASK.value,
        )
        self.context.recorder.unknown_task()
