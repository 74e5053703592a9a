"""A task message handed to a strategy, with the means to settle it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from vine import promise

from telemetry.worker.celery.message import MessageHandler, ReceivedMessage, Settler

logger = logging.getLogger("telemetry.celery")


class Delivered:
    """A task message handed to a strategy, with the means to settle it.

    A message taken before Celery's handler (:meth:`.strategy.ConsumerPort.take_first`)
    gets the ack and reject promises Celery would have given it only if it
    needs them: most are acked together with their batch.
    """

    __slots__ = (
        "_ack",
        "_body",
        "_callbacks",
        "_connection_errors",
        "_consumer",
        "_reject",
        "message",
    )

    def __init__(
        self,
        message: ReceivedMessage,
        body: object,
        ack: Settler | None,
        reject: Settler | None,
        callbacks: object,
        errors: tuple[type[BaseException], ...],
        consumer: Any = None,  # Celery's worker consumer, when the promises are to be made
    ) -> None:
        self.message = message
        self._body = body
        self._ack = ack
        self._reject = reject
        self._callbacks = callbacks
        self._connection_errors = errors
        self._consumer = consumer

    def _settlers(self) -> tuple[Settler, Settler]:
        """The ack and reject promises, made as Celery's handler makes them if not given."""
        if self._ack is None or self._reject is None:
            consumer = self._consumer
            on_error = consumer._restore_prefetch_count_after_connection_restart
            self._ack = promise(
                consumer.call_soon_ack, (self.message.ack_log_error,), on_error=on_error
            )
            self._reject = promise(
                consumer.call_soon_ack, (self.message.reject_log_error,), on_error=on_error
            )
        return self._ack, self._reject

    @property
    def headers(self) -> Mapping[str, Any]:
        """The protocol-2 task headers."""
        return self.message.headers

    @property
    def channel_open(self) -> bool:
        """Whether the channel it came on is still open (only then can it be acked)."""
        # kombu's in-memory channel has no is_open; it never closes under a worker.
        return bool(getattr(self.message.channel, "is_open", True))

    @property
    def delivery_count(self) -> int:
        """How many times it was delivered before without being settled (0 when fresh).

        Quorum queues count it exactly (``x-delivery-count``); a classic queue
        only says whether it was delivered before (``redelivered``).
        """
        counted = (self.message.headers or {}).get("x-delivery-count")
        if counted is not None:
            return int(counted)
        return 1 if (self.message.delivery_info or {}).get("redelivered") else 0

    @property
    def acknowledged(self) -> bool:
        """Whether it was acked or rejected already."""
        return bool(self.message.acknowledged)

    def decode(self) -> tuple[Sequence[Any], Mapping[str, Any]]:
        """The task's args and kwargs (protocol 2 body ``[args, kwargs, embed]``).

        The consumer checked the body's shape before any strategy sees it
        (:func:`.bodies.body_shape_problem`).
        """
        args, kwargs, _embed = self.message.decode()
        return args, kwargs

    def ack(self) -> None:
        """Ack on the consumer's thread, logging a connection error instead of raising it."""
        ack, _ = self._settlers()
        ack(logger, self._connection_errors)

    def requeue(self) -> None:
        """Give it back to the queue."""
        _, reject = self._settlers()
        reject(logger, self._connection_errors, requeue=True)

    def hand_to(self, handler: MessageHandler) -> object:
        """Run Celery's own handler on it, as if it had never been held."""
        ack, reject = self._settlers()
        return handler(self.message, self._body, ack, reject, self._callbacks)
