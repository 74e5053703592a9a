"""The strategy seam: a task's message handler built by our code, in front of Celery's own.

Celery calls a task's ``Strategy`` with its own consumer and expects a
message handler back. :func:`make_strategy` turns a builder of ours into
such a strategy, and hands it a :class:`ConsumerPort`: the few things the
batch path needs of Celery's consumer, typed, instead of the consumer itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

from celery import Task
from celery.worker.strategy import default as default_strategy

from telemetry.worker.celery.acks import KombuMessage, Unsettled
from telemetry.worker.celery.events import TaskEventSender
from telemetry.worker.celery.message import MessageHandler, OfferedMessage, ReceivedMessage, Settler

Slot = TypeVar("Slot")
Result = TypeVar("Result")


class Cancellable(Protocol):
    """A timer entry."""

    def cancel(self) -> None: ...


class ConsumerPort:
    """What the batch path needs of Celery's worker consumer, and nothing more."""

    # The attribute that keeps one object per consumer across strategy rebuilds.
    _SLOT = "telemetry_slot"

    def __init__(self, consumer: Any) -> None:  # Celery's worker consumer
        self._consumer = consumer

    def offered(
        self,
        message: ReceivedMessage,
        body: object,
        ack: Settler,
        reject: Settler,
        callbacks: object,
    ) -> OfferedMessage:
        """Wrap a message a strategy was handed."""
        return OfferedMessage(
            message, body, ack, reject, callbacks, self._consumer.connection_errors
        )

    def take_first(self, task_name: str, take: Callable[[OfferedMessage], bool]) -> None:
        """Offer each ``task_name`` message to ``take`` before Celery's own handler sees it.

        ``take`` returns whether it took the message; if not, Celery handles it
        (and calls the task's strategy) as usual. Celery's handler makes two
        promises and a request per message; a batched message needs neither.
        """
        takers: dict[str, Callable[[OfferedMessage], bool]] | None = getattr(
            self._consumer, "takers", None
        )
        if takers is not None:  # a consumer other than GuardedConsumer: the strategy alone
            takers[task_name] = take

    def ack_together(self, offered: Sequence[OfferedMessage]) -> None:
        """Ack these messages on the consumer's thread, a run of them with one frame."""
        unsettled: Unsettled | None = getattr(self._consumer, "unsettled", None)
        if unsettled is None:
            for one in offered:
                one.ack()
            return
        messages = cast("list[KombuMessage]", [one.message for one in offered])
        self._consumer.call_soon(unsettled.ack, messages)

    def run_in_pool(
        self,
        job: Callable[..., Result],
        args: tuple[object, ...],
        on_result: Callable[[Result], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Run ``job(*args)`` on the worker's pool (threads or processes); callbacks after."""
        self._consumer.pool.apply_async(job, args=args, callback=on_result, error_callback=on_error)

    def call_soon(self, function: Callable[..., object], *args: object) -> None:
        """Run ``function(*args)`` on the consumer's own thread, where Celery's calls belong."""
        self._consumer.call_soon(function, *args)

    def later(self, seconds: float, function: Callable[[], None]) -> Cancellable:
        """Call ``function`` once, ``seconds`` from now, on the consumer's timer."""
        entry: Cancellable = self._consumer.timer.call_after(seconds, function)
        return entry

    def events(self) -> TaskEventSender:
        """A sender of task events through this worker's event dispatcher."""
        return TaskEventSender(getattr(self._consumer, "event_dispatcher", None))

    def swap_slot(self, value: Slot) -> Slot | None:
        """Keep ``value`` on the consumer; return what was kept before (None the first time).

        Celery builds strategies anew after every reconnect, on the same
        consumer; this is how the new one finds the old one's state.
        """
        previous: Slot | None = getattr(self._consumer, self._SLOT, None)
        setattr(self._consumer, self._SLOT, value)
        return previous


HandlerBuilder = Callable[[Task, MessageHandler, ConsumerPort], MessageHandler]
"""Ours: ``build(task, celery_handler, port)`` returns the task's message handler."""

Strategy = Callable[..., MessageHandler]
"""Celery's: ``strategy(task, app, consumer, **options)`` returns the task's message handler."""


def celery_task_handler(task: Task, app: Any, consumer: Any, **options: Any) -> MessageHandler:
    """Celery's own per-task message handler for ``task`` (the app and consumer are Celery's)."""
    handler: MessageHandler = default_strategy(task, app, consumer, **options)
    return handler


def make_strategy(build: HandlerBuilder) -> Strategy:
    """A task ``Strategy``: ``build(task, celery_handler, port)`` returns the message handler."""

    def strategy(task: Task, app: Any, consumer: Any, **options: Any) -> MessageHandler:
        return build(
            task, celery_task_handler(task, app, consumer, **options), ConsumerPort(consumer)
        )

    return strategy
