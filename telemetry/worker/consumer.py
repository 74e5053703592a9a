"""The worker's message consumer: every message counted once, bad ones recorded, not lost.

Each message taken from the queue is counted in ``queue_delivered`` here,
once (a retry copy is a new message and counts again). A message that can
never become a task (an undecodable body, a disallowed content type, no task
header, a body of the wrong shape) is recorded in ``rejected``, counted in
``messages_errors`` and acked, so nothing loops and an operator can see what
arrived. If even the record cannot be written, the message is rejected to
the dead-letter queue instead, so it is never lost.
"""

from __future__ import annotations

import logging
from typing import Any

from telemetry.errors import RejectionKind
from telemetry.observe.stats import STATS
from telemetry.worker import runtime
from telemetry.worker.celery_internals import GuardedConsumer
from telemetry.worker.ingest import reject_undecodable

logger = logging.getLogger("telemetry.consumer")


def raw_body(message: Any) -> str:
    """The message body as text, whatever its encoding."""
    body = message.body
    if isinstance(body, bytes | bytearray):
        return bytes(body).decode("utf-8", errors="replace")
    return str(body)


def message_id(message: Any) -> str | None:
    """The task id, or the AMQP message id, if the message has either."""
    headers = message.headers or {}
    properties = getattr(message, "properties", {}) or {}
    found = headers.get("id") or properties.get("correlation_id") or properties.get("message_id")
    return str(found) if found is not None else None


class TelemetryConsumer(GuardedConsumer):
    """Celery's consumer, with arrivals counted and bad messages recorded instead of only logged."""

    def on_arrival(self, message: Any) -> None:
        """Count every message taken from the queue, once."""
        STATS.incr("queue_delivered")

    def on_bad_message(self, message: Any, reason: str, kind: str) -> None:
        """Record and ack a message that can never become a task; dead-letter it if we cannot."""
        if message.acknowledged:
            # Celery already settled it before failing; settling twice would close the channel.
            logger.error("Bad message %s after it was settled: %s", message_id(message), reason)
            return
        outcome = reject_undecodable(
            runtime.store(),
            STATS,
            reason,
            RejectionKind(kind),
            message_id(message),
            raw_body(message),
        )
        if not outcome.settled:
            logger.error(
                "Could not record bad message, dead-lettering it: %s (%s)", reason, outcome.error
            )
            STATS.incr("dead_lettered")
            message.reject(requeue=False)
            return
        message.ack()

    def on_unknown_task_name(self, message: Any) -> None:
        """A task this worker does not know is dead-lettered (it may be valid elsewhere)."""
        STATS.incr("dead_lettered")
