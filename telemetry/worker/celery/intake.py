"""What the worker's consumer does with every message before any task handler sees it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed, DecodeError

from telemetry.errors import RejectionKind
from telemetry.worker.celery.acks import Unsettled
from telemetry.worker.celery.bodies import body_shape_problem, decode_plain_json
from telemetry.worker.celery.message import OfferedMessage, ReceivedMessage
from telemetry.worker.celery.reader import DrainingReader, ReadAhead
from telemetry.worker.signal_wakeup import SIGNAL_WAKEUP


class GuardedConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, reporting every message to :meth:`on_arrival` first and every
    bad one to :meth:`on_bad_message`, instead of only logging it.

    Its steps are Celery's but for native delayed delivery, which would declare 28
    exchanges and queues per broker for ETA tasks: this collector sends none (a retry
    waits in a delay queue of its own, see telemetry.broker.topology).

    Celery acks a message it cannot decode and only logs it; a disallowed
    content type or a message without a task header is rejected; and a JSON
    body that is not ``[args, kwargs, embed]`` makes its request parsing
    raise in the consumer itself, which stops the whole worker
    ("Unrecoverable error", for a body such as ``{"a": 1}``). Subclasses decide.

    Two more refusals, before any decoding: a body longer than
    :meth:`max_body_length` is a bad message (``oversize``), and only the
    tasks :meth:`accepts` get a message handler. Celery registers its
    built-in tasks (``celery.map``, ``celery.chain``, ``celery.chord_unlock``,
    ``celery.backend_cleanup``, …) in every app; a message naming one of them
    is an unknown task here (:meth:`on_unknown_task`), never run.
    """

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        """Celery's consumer steps without ``DelayedDelivery``."""

        default_steps: ClassVar[list[str]] = [
            step
            for step in Consumer.Blueprint.default_steps
            if not step.endswith(":DelayedDelivery")
        ]

    @functools.cached_property
    def takers(self) -> dict[str, Callable[[OfferedMessage], bool]]:
        """Per task name, what each of its messages is offered to before Celery's handler.

        Filled by :meth:`ConsumerPort.take_first`; see :meth:`_taken_first`.
        """
        return {}

    @property
    def unsettled(self) -> Unsettled | None:
        """The deliveries of the task channel not yet settled (see :class:`Unsettled`).

        None where the transport has no multiple-ack: kombu's virtual transports
        (the demo's in-memory broker) ack only the tag named, so each message
        is acked on its own there. Asked once messages flow, when the
        connection is known.
        """
        if "_unsettled" not in self.__dict__:
            transport = getattr(getattr(self, "connection", None), "transport", None)
            amqp = getattr(transport, "driver_type", None) == "amqp"
            self.__dict__["_unsettled"] = Unsettled(self.connection_errors) if amqp else None
        tracker: Unsettled | None = self.__dict__["_unsettled"]
        return tracker

    def on_arrival(self, message: ReceivedMessage) -> None:
        """Called once for every message taken from the queue."""

    def max_body_length(self) -> int | None:
        """The longest body a message may have (bytes, or characters once py-amqp has
        decoded it as UTF-8 text); None for no bound. Asked once per connection."""
        return None

    def accepts(self, task_name: str) -> bool:
        """Whether a message may run the registered task ``task_name``; every one here."""
        return True

    def update_strategies(self) -> None:
        """Celery's message handlers, for the tasks :meth:`accepts` only.

        Any other name, Celery's built-in tasks included, then finds no
        handler, and Celery's handler calls :meth:`on_unknown_task` for it:
        nothing per message is added to do so.
        """
        super().update_strategies()
        for name in [name for name in self.strategies if not self.accepts(name)]:
            del self.strategies[name]

    def on_bad_message(self, message: ReceivedMessage, reason: str, kind: RejectionKind) -> None:
        """Called for a message that can never become a task; it is not settled yet."""
        raise NotImplementedError

    def connect(self) -> Any:
        """Celery's consumer connection (kombu's), its socket read by a :class:`DrainingReader`,
        and the event loop woken by signals
        (:data:`~telemetry.worker.signal_wakeup.SIGNAL_WAKEUP`)."""
        connection = super().connect()
        if self.hub is not None and connection.transport.driver_type == "amqp":
            amqp_connection = connection.connection
            # The same socket again: the hub keeps its registration and takes the new reader.
            self.hub.add_reader(
                amqp_connection.sock,
                DrainingReader(ReadAhead.of(amqp_connection.transport)),
                amqp_connection,
                self.hub,
            )
            SIGNAL_WAKEUP.register(self.hub)
        return connection

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        """The connection task events are sent on (kombu's), without publisher confirms.

        Every pool thread sends its task events over this one connection.
        With ``confirm_publish`` on, a thread waiting for its confirm reads
        frames meant for the others, and the threads pool deadlocks. Events
        are advisory (Flower); the messages that carry data, task retries,
        keep their confirms.
        """
        connection = self.app.connection_for_write(
            url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False}
        )
        return self.ensure_connected(connection)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], object]:
        """Celery's message handler, seeing every message first and safe against bad shapes."""
        handle = super().create_task_handler(*args, **kwargs)
        takers = self.takers
        longest = self.max_body_length()
        limit = sys.maxsize if longest is None else longest

        def on_task_received(message: Any) -> object:  # kombu's message
            unsettled = self.unsettled
            if unsettled is not None:
                unsettled.arrived(message)
            self.on_arrival(message)
            if len(message.body) > limit:
                self.on_bad_message(
                    message,
                    f"message body of {len(message.body)} is over the bound of {limit}",
                    RejectionKind.OVERSIZE,
                )
                return None
            decode_plain_json(message)
            problem = body_shape_problem(message)
            if problem is not None:
                self.on_bad_message(
                    message, f"malformed task message: {problem}", RejectionKind.BAD_SHAPE
                )
                return None
            try:
                if takers and self._taken_first(takers, message):
                    return None
                return handle(message)
            except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
                self.on_bad_message(
                    message, f"malformed task message: {exc!r}", RejectionKind.BAD_SHAPE
                )
                return None

        return on_task_received

    def _taken_first(
        self, takers: Mapping[str, Callable[[OfferedMessage], bool]], message: ReceivedMessage
    ) -> bool:
        """Whether the taker of ``message``'s task (:attr:`takers`) took it.

        Undecodable and disallowed bodies are reported as Celery's handler reports them.
        """
        headers = message.headers
        take = takers.get(str(headers.get("task"))) if isinstance(headers, dict) else None
        if take is None:
            return False
        # Protocol 2: no payload (the body stays in the message, decoded on demand), and
        # the ack and reject promises are made only if needed.
        offered = OfferedMessage(
            message, None, None, None, self.on_task_message, self.connection_errors, consumer=self
        )
        try:
            return take(offered)
        except DecodeError as exc:
            self.on_decode_error(message, exc)
        except ContentDisallowed as exc:
            self.on_invalid_task(None, message, exc)
        return True

    def on_decode_error(self, message: ReceivedMessage, exc: Exception) -> None:
        """A body that is not valid for its content type."""
        self.on_bad_message(message, f"cannot decode body: {exc}", RejectionKind.UNDECODABLE)

    def on_invalid_task(self, body: object, message: ReceivedMessage, exc: Exception) -> None:
        """A disallowed content type or a malformed task message."""
        self.on_bad_message(message, f"invalid task message: {exc}", RejectionKind.INVALID_TASK)

    def on_unknown_message(self, body: object, message: ReceivedMessage) -> None:
        """A message that is not a Celery task at all."""
        self.on_bad_message(
            message, "not a Celery task message (no task header)", RejectionKind.NOT_A_TASK
        )

    def on_unknown_task(self, body: object, message: ReceivedMessage, exc: Exception) -> None:
        """A task name this worker does not know: Celery dead-letters it (valid elsewhere)."""
        # Celery's part first: should it raise, the message is reported as a bad one
        # instead, and must not have been counted as dead-lettered already.
        super().on_unknown_task(body, message, exc)
        self.on_unknown_task_name(message)

    def on_unknown_task_name(self, message: ReceivedMessage) -> None:
        """Called before Celery rejects a message for a task this worker does not know."""
