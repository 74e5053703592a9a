"""What passes the door: kombu's message as our code reads it, the message offered to
the batch path, a task's message handler and Celery's promises that settle a message.

The stages of a message and their names are explained once, in the door's
docstring (:mod:`telemetry.worker.celery`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from logging import Logger
from typing import Any, Protocol

from vine import promise

logger = logging.getLogger("telemetry.celery")


class ReceivedMessage(Protocol):
    """A message the consumer took from the queue (kombu's ``Message``), as far as we read
    it (stage 1).

    ``headers`` are the protocol-2 task headers (``task``, ``id``,
    ``retries``, ``argsrepr``, …); ``body`` is what the broker sent, which
    py-amqp hands over as text once it has decoded it as UTF-8.
    """

    headers: Mapping[str, Any]  # AMQP table values: text, numbers, lists, tables
    body: bytes | str
    properties: Mapping[str, object]
    delivery_info: Mapping[str, object]
    channel: object
    content_type: str | None
    content_encoding: str | None
    accept: Collection[str] | None

    @property
    def acknowledged(self) -> bool:
        """Whether it was acked or rejected already."""
        ...

    def ack(self, multiple: bool = False) -> None:
        """Settle it (with ``multiple``, every delivery on its channel up to it)."""
        ...

    def reject(self, requeue: bool = False) -> None:
        """Give it back to the queue, or with ``requeue=False`` to the dead-letter queue."""
        ...

    def decode(self) -> Any:
        """The body, decoded by its content type (the decoded value is kept): JSON's values."""
        ...

    def ack_log_error(self, logger: Logger, errors: tuple[type[BaseException], ...]) -> None:
        """Ack it, logging any of ``errors`` instead of raising it."""
        ...

    def reject_log_error(
        self, logger: Logger, errors: tuple[type[BaseException], ...], requeue: bool = False
    ) -> None:
        """Reject it, logging any of ``errors`` instead of raising it."""
        ...


Settler = Callable[..., object]
"""Celery's ack or reject promise: ``settle(logger, connection_errors, **options)``."""


class MessageHandler(Protocol):
    """A task's message handler, as Celery calls it: ``handle(message, body, ack, reject,
    callbacks)``, where ``body`` is Celery's payload and the rest are Celery's own objects."""

    def __call__(
        self,
        message: ReceivedMessage,
        body: object,
        ack: Settler,
        reject: Settler,
        callbacks: object,
        /,
    ) -> object: ...


class OfferedMessage:
    """A task message offered to the batch path, with the means to settle it (stage 2).

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
