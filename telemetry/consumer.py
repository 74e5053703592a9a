"""The worker's message consumer, extended so undecodable messages are counted.

Celery acks a message it cannot decode and only logs it; a message with a
disallowed content type, or no task header at all, is rejected. Here each of
them is recorded in ``rejected``, counted in ``messages_errors`` and acked,
so nothing loops and an operator can see what arrived. If even the record
cannot be written, the message is rejected to the dead-letter queue instead,
so it is never lost.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

from telemetry import runtime
from telemetry.errors import StorageRejected, StorageUnavailable
from telemetry.ingest import reject_message
from telemetry.stats import STATS

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


class TelemetryConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, with bad messages recorded instead of only logged."""

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        """The connection task events are sent on, without publisher confirms.

        Every pool thread sends its task events over this one connection.
        With ``confirm_publish`` on, a thread waiting for its confirm reads
        frames meant for the others, and the threads pool deadlocks (seen
        here after a few dozen tasks). Events are advisory (Flower); the
        messages that carry data, task retries, keep their confirms.
        """
        connection = self.app.connection_for_write(
            url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False}
        )
        return self.ensure_connected(connection)

    def _reject_bad_message(self, message: Any, reason: str) -> None:
        STATS.incr("queue_delivered")
        try:
            reject_message(runtime.store(), STATS, reason, message_id(message), raw_body(message))
        except (StorageUnavailable, StorageRejected) as exc:
            logger.error("Could not record bad message, dead-lettering it: %s (%s)", reason, exc)
            STATS.incr("dead_lettered")
            message.reject(requeue=False)
            return
        message.ack()

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """A body that is not valid for its content type."""
        self._reject_bad_message(message, f"cannot decode body: {exc}")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A disallowed content type or a malformed task message."""
        self._reject_bad_message(message, f"invalid task message: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        """A message that is not a Celery task at all."""
        self._reject_bad_message(message, "not a Celery task message (no task header)")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A task name this worker does not know: dead-lettered, as it may be valid elsewhere."""
        STATS.incr("queue_delivered", "dead_lettered")
        super().on_unknown_task(body, message, exc)
