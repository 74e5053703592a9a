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
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed, DecodeError

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


def body_shape_problem(message: Any) -> str | None:
    """Why a protocol-2 task body is not ``[args, kwargs, embed]``, or None if it is.

    Celery would fail on such a body outside the task, leaving the message
    neither acked nor rejected until the worker stops, and then again in the
    next worker. Bodies that cannot be decoded at all are left to Celery,
    which reports them through :meth:`TelemetryConsumer.on_decode_error`.
    """
    if not isinstance(message.headers, dict) or "task" not in message.headers:
        return None
    try:
        body = message.decode()
    except (ValueError, DecodeError, ContentDisallowed):
        return None
    if not isinstance(body, list | tuple) or len(body) != 3:
        return "body must be [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return "args must be a list"
    if not isinstance(kwargs, dict):
        return "kwargs must be an object"
    if embed is not None and not isinstance(embed, dict):
        return "embed must be an object"
    return None


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

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Celery's message handler, made safe against bodies of the wrong shape.

        A JSON body that is not ``[args, kwargs, embed]`` makes Celery's
        request parsing raise in the consumer itself, which stops the whole
        worker ("Unrecoverable error", seen here with ``{"a": 1}``), and the
        unacked message then stops the next worker too. Here it is recorded
        and acked like any other bad message.
        """
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            problem = body_shape_problem(message)
            if problem is not None:
                self._reject_bad_message(message, f"malformed task message: {problem}")
                return None
            try:
                return handle(message)
            except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
                self._reject_bad_message(message, f"malformed task message: {exc!r}")
                return None

        return on_task_received

    def _reject_bad_message(self, message: Any, reason: str) -> None:
        if message.acknowledged:
            # Celery already settled it before failing; settling twice would close the channel.
            logger.error("Bad message %s after it was settled: %s", message_id(message), reason)
            return
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
