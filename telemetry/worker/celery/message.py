"""What passes the door: kombu's message as our code reads it, a task's message handler
and Celery's promises that settle a message."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from logging import Logger
from typing import Any, Protocol


class ReceivedMessage(Protocol):
    """A message the consumer took from the queue (kombu's ``Message``), as far as we read it.

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
