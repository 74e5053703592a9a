"""The one door to Celery's and kombu's internals. No other module touches them.

The collector relies on these private or semi-private parts of Celery 5.7
(pinned to ``celery>=5.7,<5.8`` in pyproject.toml for that reason); each is
used only in this module:

* ``celery.worker.strategy.default``: Celery's per-task message handler,
  which the batch path sits in front of (:func:`celery_task_handler`), and
  the strategy signature ``(task, app, consumer, **options)`` returning
  ``handle(message, body, ack, reject, callbacks)``, with ``ack`` and
  ``reject`` the consumer's ``ack_log_error`` / ``reject_log_error`` promises;
* the worker consumer (``celery.worker.consumer.Consumer``): its ``pool``
  (``apply_async`` with callbacks), ``timer.call_after``,
  ``call_soon``, ``connection_errors``, ``event_dispatcher``,
  ``create_task_handler`` (wrapped to see every message first; a message the
  batch path takes there skips Celery's handler, so its ack and reject
  promises are made as Celery makes them, with ``call_soon_ack``,
  ``on_task_message`` and ``_restore_prefetch_count_after_connection_restart``),
  ``connection_for_write`` / ``ensure_connected``, ``update_strategies``
  and the ``strategies`` it fills (one message handler per task name, the
  only way a message reaches a task), and the hooks ``on_decode_error``,
  ``on_invalid_task``, ``on_unknown_message`` and ``on_unknown_task``;
* the consumer's ``connect`` and ``hub`` (``add_reader``), to wake the loop
  on signals (:class:`SignalWakeup`) and to read its
  socket with a :class:`DrainingReader` instead of kombu's
  ``Transport.on_readable``, through what py-amqp's ``Connection.drain_events``
  does for each frame (``transport.read_frame`` and ``on_inbound_frame``,
  which returns true once a method is whole) and its ``connected``; and
  py-amqp's ``TCPTransport``, whose reads go through
  its ``_quick_recv`` attribute and keep what a read returns beyond what was
  asked, so that a :class:`ReadAhead` can read a chunk at a time;
* kombu's ``Message.ack(multiple=True)`` and its ``_state`` field, to settle a
  run of deliveries with one multiple-ack (:class:`Unsettled`), marking the
  others of the run acknowledged as kombu would;
* kombu's ``Message._decoded_cache``, where :func:`decode_plain_json` leaves a
  body decoded without kombu's per-object hook, so ``Message.decode()``
  returns it from then on;
* the event dispatcher's ``mutex``, ``producer``, ``exchange``, ``clock``,
  ``hostname``, ``pid``, ``serializer``, ``headers`` and ``delivery_mode``,
  to send a batch's task events as one ``task.multi`` message, the way
  Celery's own buffered events are sent, with the fields ``celery.events.Event``
  adds and ``celery.utils.time.utcoffset``; the clock's ``mutex`` and ``value``
  (kombu's ``LamportClock``), to take a batch's run of clock values at once;
* ``celery.worker.state.should_stop``, to stop a worker run in a thread;
* ``celery.apps.worker.Worker`` (``emit_banner``,
  ``install_platform_tweaks``, ``install_worker_term_handler``) and
  ``celery.utils.nodenames`` (the default node name), for the worker class;
* ``celery.concurrency.prefork.TaskPool``, to tell whether the pool forks;
* ``celery.utils.saferepr.saferepr``, so a batch's task results read in
  Flower exactly as the per-task path's do (Celery's ``resultrepr_maxsize``);
* ``celery.utils.imports.import_from_cwd``, to find the user's ``celeryconfig``
  in the working directory the way Celery finds config modules;
* ``celery.app.amqp.AMQP`` and its ``Connection`` attribute, the class Celery
  makes every broker connection with (:class:`TelemetryAMQP` puts the
  collector's :class:`~telemetry.broker.connect.BrokerConnection` there, so
  the worker's connections get TLS options per failover host).

``tests/test_celery_internals.py`` checks that each of them is still where
this module expects it, so a Celery upgrade that moves one fails a test
instead of silently falling back to slower paths.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from json.encoder import encode_basestring_ascii
from types import ModuleType
from typing import Any, ClassVar, NamedTuple, Protocol

from amqp.exceptions import RecoverableConnectionError
from amqp.transport import TCPTransport
from celery.app.amqp import AMQP
from celery.apps import worker as celery_apps_worker
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.utils.imports import import_from_cwd
from celery.utils.nodenames import default_nodename, host_format
from celery.utils.saferepr import saferepr
from celery.utils.time import utcoffset
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from celery.worker.strategy import default as default_strategy
from kombu.exceptions import ContentDisallowed, DecodeError
from vine import promise

from telemetry.broker.connect import BrokerConnection
from telemetry.errors import RejectionKind

logger = logging.getLogger("telemetry.celery")

# What `celery worker` passes as the node name when -n is not given.
CELERY_DEFAULT_NODENAME: str = host_format(default_nodename(None))
# Celery's routing key for a message that carries a list of events.
MULTI_EVENT_ROUTING_KEY = "task.multi"

MessageHandler = Callable[..., Any]
"""A task's message handler: ``handle(message, body, ack, reject, callbacks)``."""


class Cancellable(Protocol):
    """A timer entry."""

    def cancel(self) -> None: ...


class Delivered:
    """A task message handed to a strategy, with the means to settle it.

    A message taken before Celery's handler (:meth:`ConsumerPort.take_first`)
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
        message: Any,
        body: Any,
        ack: Any,
        reject: Any,
        callbacks: Any,
        errors: Any,
        consumer: Any = None,
    ) -> None:
        self.message = message
        self._body = body
        self._ack = ack
        self._reject = reject
        self._callbacks = callbacks
        self._connection_errors = errors
        self._consumer = consumer

    def _settlers(self) -> tuple[Any, Any]:
        """The ack and reject promises, made as Celery's handler makes them if not given."""
        if self._ack is None:
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
        headers: Mapping[str, Any] = self.message.headers
        return headers

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

    def decode(self) -> tuple[Any, Any]:
        """The task's args and kwargs (protocol 2 body ``[args, kwargs, embed]``)."""
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

    def hand_to(self, handler: MessageHandler) -> Any:
        """Run Celery's own handler on it, as if it had never been held."""
        ack, reject = self._settlers()
        return handler(self.message, self._body, ack, reject, self._callbacks)


class Unsettled:
    """The task channel's deliveries not yet settled, in delivery order; consumer thread only.

    Acking each message of a batch costs a frame and a socket write apiece
    (a fifth of the worker's CPU, profiled). :meth:`ack` settles a batch with
    one multiple-ack instead: RabbitMQ's ``multiple`` acks every delivery up
    to a tag, so it is used only as far as every earlier delivery still
    unsettled on the channel belongs to the batch; the rest are acked one by
    one.
    """

    SWEEP_AT = 10_000

    def __init__(self, connection_errors: Any) -> None:
        self._connection_errors = connection_errors
        self._channel: Any = None
        self._open: deque[Any] = deque()  # messages in delivery order

    def arrived(self, message: Any) -> None:
        """Note a delivery; a new channel (after a reconnect) starts a new list."""
        if message.channel is not self._channel:
            self._channel, self._open = message.channel, deque()
        front = self._open
        front.append(message)
        # Settled elsewhere (Celery's per-task path, a bad message): forget them as soon
        # as nothing unsettled is before them, so the list stays about a prefetch long.
        while front and front[0].acknowledged:
            front.popleft()
        if len(front) > self.SWEEP_AT:
            # Behind one message held for long (a hung task, say): sweep the settled out.
            self._open = deque(m for m in self._open if not m.acknowledged)

    def ack(self, messages: list[Any]) -> None:
        """Ack ``messages``: one multiple-ack for the leading run, single acks for the rest."""
        channel = self._channel
        wanted = {id(m) for m in messages if m.channel is channel and not m.acknowledged}
        front = self._open
        run: list[Any] = []
        while front:
            message = front[0]
            if id(message) in wanted:
                run.append(message)
            elif not message.acknowledged:
                break  # held by someone else: a multiple-ack past it would settle it too
            front.popleft()
        try:
            if run:
                run[-1].ack(multiple=True)
                for message in run[:-1]:
                    message._state = "ACK"  # settled by the multiple-ack above
            # Behind a held one, or of an older channel: one by one. Those still
            # listed leave the front once it reaches them.
            for message in messages:
                if not message.acknowledged:
                    message.ack()
        except self._connection_errors as exc:
            # The channel is gone: RabbitMQ redelivers whatever was not acked.
            logger.error("Could not ack %d messages: %r", len(messages), exc)


class ConsumerPort:
    """What the batch path needs of Celery's worker consumer, and nothing more."""

    # The attribute that keeps one object per consumer across strategy rebuilds.
    _SLOT = "telemetry_slot"

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def delivered(
        self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any
    ) -> Delivered:
        """Wrap a message a strategy was handed."""
        return Delivered(message, body, ack, reject, callbacks, self._consumer.connection_errors)

    def take_first(self, task_name: str, take: Callable[[Delivered], bool]) -> None:
        """Offer each ``task_name`` message to ``take`` before Celery's own handler sees it.

        ``take`` returns whether it took the message; if not, Celery handles it
        (and calls the task's strategy) as usual. Celery's handler makes two
        promises and a request per message; a batched message needs neither.
        """
        takers: dict[str, Callable[[Delivered], bool]] | None = getattr(
            self._consumer, "takers", None
        )
        if takers is not None:  # a consumer other than GuardedConsumer: the strategy alone
            takers[task_name] = take

    def ack_together(self, delivered: list[Delivered]) -> None:
        """Ack these messages on the consumer's thread, a run of them with one frame."""
        unsettled: Unsettled | None = getattr(self._consumer, "unsettled", None)
        if unsettled is None:
            for one in delivered:
                one.ack()
            return
        self._consumer.call_soon(unsettled.ack, [one.message for one in delivered])

    def run_in_pool(
        self,
        job: Callable[..., Any],
        args: tuple[Any, ...],
        on_result: Callable[[Any], None],
        on_error: Callable[[Any], None],
    ) -> None:
        """Run ``job(*args)`` on the worker's pool (threads or processes); callbacks after."""
        self._consumer.pool.apply_async(job, args=args, callback=on_result, error_callback=on_error)

    def call_soon(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` on the consumer's own thread, where Celery's calls belong."""
        self._consumer.call_soon(function, *args)

    def later(self, seconds: float, function: Callable[[], None]) -> Cancellable:
        """Call ``function`` once, ``seconds`` from now, on the consumer's timer."""
        entry: Cancellable = self._consumer.timer.call_after(seconds, function)
        return entry

    def events(self) -> TaskEventSender:
        """A sender of task events through this worker's event dispatcher."""
        return TaskEventSender(getattr(self._consumer, "event_dispatcher", None))

    def swap_slot(self, value: Any) -> Any:
        """Keep ``value`` on the consumer; return what was kept before (None the first time).

        Celery builds strategies anew after every reconnect, on the same
        consumer; this is how the new one finds the old one's state.
        """
        previous = getattr(self._consumer, self._SLOT, None)
        setattr(self._consumer, self._SLOT, value)
        return previous


def celery_task_handler(task: Any, app: Any, consumer: Any, **options: Any) -> MessageHandler:
    """Celery's own per-task message handler for ``task``."""
    handler: MessageHandler = default_strategy(task, app, consumer, **options)
    return handler


def make_strategy(
    build: Callable[[Any, MessageHandler, ConsumerPort], MessageHandler],
) -> Callable[..., MessageHandler]:
    """A task ``Strategy``: ``build(task, celery_handler, port)`` returns the message handler."""

    def strategy(task: Any, app: Any, consumer: Any, **options: Any) -> MessageHandler:
        return build(
            task, celery_task_handler(task, app, consumer, **options), ConsumerPort(consumer)
        )

    return strategy


class SettledTask(NamedTuple):
    """A task message the batch path settled: what its two task events say of it."""

    task_id: str
    headers: Mapping[str, Any]  # its protocol-2 headers
    received_at: float  # wall clock, when the consumer took it
    result_text: str  # as Celery shows results (:func:`result_text`)


class TaskEventSender:
    """Sends a batch's task events as one event message, as Celery's buffered events are sent.

    Flower (through Celery's event receiver) accepts a message whose body is
    a list of events. For each settled task the batch sends the
    ``task-received`` and ``task-succeeded`` events Celery's own worker would
    send, with the same fields. Events are advisory: a failure to send them
    is logged, never raised into the ingest path.
    """

    def __init__(self, dispatcher: Any) -> None:
        self._dispatcher = dispatcher
        # The channel the event exchange was last declared on: kombu's own "declare
        # once" check copies the exchange on every publish (4 % of the worker's time).
        self._declared_on: Any = None

    @property
    def enabled(self) -> bool:
        """Whether the worker sends task events at all (``-E``, on by default here)."""
        return bool(self._dispatcher is not None and self._dispatcher.enabled)

    def send_settled(
        self, task_name: str, settled: Sequence[SettledTask], runtime_s: float
    ) -> None:
        """A ``task-received`` event for each of ``settled``, then a ``task-succeeded`` for each.

        The batch takes its run of Lamport clock values under one lock, and
        the JSON text is rendered directly (:func:`render_task_events`):
        building the events as dicts and encoding them took 79,000 instructions
        per point, this 30,000 (callgrind); the worker's whole share of
        pymongo's insert is less than the former (py-spy).
        """
        if not self.enabled or not settled:
            return
        dispatcher = self._dispatcher
        clock = dispatcher.clock
        with clock.mutex:
            first_clock = clock.value + 1
            clock.value += 2 * len(settled)
        body = render_task_events(
            task_name,
            settled,
            runtime_s,
            EventSource(dispatcher.hostname, dispatcher.pid, utcoffset()),
            first_clock,
            time.time(),
        )
        self._publish(body, len(settled) * 2)

    def _publish(self, body: str, count: int) -> None:
        dispatcher = self._dispatcher
        options: dict[str, Any] = {"content_type": "application/json", "content_encoding": "utf-8"}
        if dispatcher.serializer != "json":
            # Another event serializer configured: the same events, encoded its way.
            options = {"serializer": dispatcher.serializer}
            body = json.loads(body)
        try:
            with dispatcher.mutex:
                producer = dispatcher.producer
                if producer is None:
                    return
                channel = producer.channel
                producer.publish(
                    body,
                    routing_key=MULTI_EVENT_ROUTING_KEY,
                    exchange=dispatcher.exchange.name,
                    declare=[dispatcher.exchange] if channel is not self._declared_on else [],
                    headers=dispatcher.headers,
                    delivery_mode=dispatcher.delivery_mode,
                    **options,
                )
                self._declared_on = channel
        except Exception as exc:  # advisory: never fail the ingest path over an event
            logger.warning("Could not send %d task events: %s", count, exc)


class EventSource(NamedTuple):
    """The fields ``celery.events.Event`` adds to every event of this worker."""

    hostname: str
    pid: int
    utcoffset: int


def _json_text(value: Any) -> str:
    """``value`` as JSON: strings (nearly every header) without the encoder's set-up."""
    if type(value) is str:
        return encode_basestring_ascii(value)
    if value is None:
        return "null"
    return json.dumps(value, default=repr)


def render_task_events(
    task_name: str,
    settled: Sequence[SettledTask],
    runtime_s: float,
    source: EventSource,
    first_clock: int,
    now: float,
) -> str:
    """The JSON list of events :meth:`TaskEventSender.send_settled` sends, as text.

    The fields are those Celery's worker sends: ``task-received`` with the
    task's name, argument summaries, root and parent ids, retries, eta and
    expires (both None for a batched message); ``task-succeeded`` with the
    result text and the run time; each with type, timestamp, clock, hostname,
    utcoffset and pid. ``tests/test_celery_internals.py`` checks them against
    Celery's ``Event``.
    """
    common = (
        f',"hostname":{_json_text(source.hostname)},'
        f'"utcoffset":{int(source.utcoffset)},"pid":{int(source.pid)}}}'
    )
    name = _json_text(task_name)
    texts: list[str] = []
    clock = first_clock
    for task in settled:
        headers = task.headers
        texts.append(
            f'{{"type":"task-received","uuid":{_json_text(task.task_id)},"name":{name},'
            f'"args":{_json_text(headers.get("argsrepr", ""))},'
            f'"kwargs":{_json_text(headers.get("kwargsrepr", ""))},'
            f'"root_id":{_json_text(headers.get("root_id"))},'
            f'"parent_id":{_json_text(headers.get("parent_id"))},'
            f'"retries":0,"eta":null,"expires":null,'
            f'"timestamp":{float(task.received_at)!r},"clock":{clock}{common}'
        )
        clock += 1
    finished = f',"runtime":{float(runtime_s)!r},"timestamp":{float(now)!r}'
    for task in settled:
        texts.append(
            f'{{"type":"task-succeeded","uuid":{_json_text(task.task_id)},'
            f'"result":{_json_text(task.result_text)}{finished},"clock":{clock}{common}'
        )
        clock += 1
    return "[" + ",".join(texts) + "]"


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
    ("Unrecoverable error", seen with ``{"a": 1}``). Subclasses decide.

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
    def takers(self) -> dict[str, Callable[[Delivered], bool]]:
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

    def on_arrival(self, message: Any) -> None:
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

    def on_bad_message(self, message: Any, reason: str, kind: RejectionKind) -> None:
        """Called for a message that can never become a task; it is not settled yet."""
        raise NotImplementedError

    def connect(self) -> Any:
        """Celery's consumer connection, its socket read by a :class:`DrainingReader`."""
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
        """Celery's message handler, seeing every message first and safe against bad shapes."""
        handle = super().create_task_handler(*args, **kwargs)
        takers = self.takers
        longest = self.max_body_length()
        limit = sys.maxsize if longest is None else longest

        def on_task_received(message: Any) -> Any:
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

    def _taken_first(self, takers: Mapping[str, Callable[[Delivered], bool]], message: Any) -> bool:
        """Whether the taker of ``message``'s task (:attr:`takers`) took it.

        Undecodable and disallowed bodies are reported as Celery's handler reports them.
        """
        headers = message.headers
        take = takers.get(str(headers.get("task"))) if isinstance(headers, dict) else None
        if take is None:
            return False
        # Protocol 2: no payload (the body stays in the message, decoded on demand), and
        # the ack and reject promises are made only if needed.
        delivered = Delivered(
            message, None, None, None, self.on_task_message, self.connection_errors, consumer=self
        )
        try:
            return take(delivered)
        except DecodeError as exc:
            self.on_decode_error(message, exc)
        except ContentDisallowed as exc:
            self.on_invalid_task(None, message, exc)
        return True

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """A body that is not valid for its content type."""
        self.on_bad_message(message, f"cannot decode body: {exc}", RejectionKind.UNDECODABLE)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A disallowed content type or a malformed task message."""
        self.on_bad_message(message, f"invalid task message: {exc}", RejectionKind.INVALID_TASK)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        """A message that is not a Celery task at all."""
        self.on_bad_message(
            message, "not a Celery task message (no task header)", RejectionKind.NOT_A_TASK
        )

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A task name this worker does not know: Celery dead-letters it (valid elsewhere)."""
        # Celery's part first: should it raise, the message is reported as a bad one
        # instead, and must not have been counted as dead-lettered already.
        super().on_unknown_task(body, message, exc)
        self.on_unknown_task_name(message)

    def on_unknown_task_name(self, message: Any) -> None:
        """Called before Celery rejects a message for a task this worker does not know."""


class DrainingReader:
    """Reads up to :attr:`LIMIT` messages each time the event loop finds the socket readable.

    kombu's reader takes one message per turn of Celery's event loop and
    schedules itself again; each turn polls the socket, checks the timers
    and makes a promise. This one takes messages while the socket has them,
    up to a bound, so timers, acks and shutdown still come between runs of
    messages: 6 % less worker CPU per point (alternating 40,000-point drains).
    During a run a :class:`ReadAhead` reads the socket a chunk at a time.
    Errors pass on as from kombu's reader, and Celery reconnects on them.

    It does for each frame what py-amqp's ``drain_events`` does (read a frame,
    hand it to the connection's frame handler, count a method once whole),
    without the three calls and the timeout context ``drain_events`` wraps
    around every frame: 11 % less worker CPU per point (alternating drains).
    """

    LIMIT = 64

    def __init__(self, read_ahead: ReadAhead | None = None) -> None:
        self._read_ahead = read_ahead

    def __call__(self, connection: Any, loop: Any) -> None:
        if not connection.connected:
            raise RecoverableConnectionError("Socket was disconnected")
        read_frame = connection.transport.read_frame
        on_frame = connection.on_inbound_frame
        # Non-blocking for the run: py-amqp would set a timeout of 0 and restore it
        # around every frame, two system calls a frame (5 % of the worker's CPU,
        # alternating drains). Writes during a run are rare and small (a bad
        # message's ack, a control reply); one that met a full send buffer would
        # fail as a connection error, and Celery reconnects.
        sock = connection.sock
        blocking = sock.gettimeout()
        sock.settimeout(0)
        read_ahead = self._read_ahead
        if read_ahead is not None:
            read_ahead.start()
        try:
            methods = 0
            while methods < self.LIMIT:
                try:
                    # Raises a timeout when not even a frame's header has come: py-amqp
                    # keeps any part of it, and the rest wakes the poll.
                    frame = read_frame()
                except TimeoutError:
                    return
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EINTR):
                        return
                    raise
                if on_frame(frame):
                    methods += 1
        finally:
            if read_ahead is not None:
                read_ahead.stop()
            with suppress(OSError):  # closed meanwhile: nothing to restore
                sock.settimeout(blocking)
        # Run again before the next poll: the socket may hold more, and py-amqp's buffer too.
        loop.call_soon(self, connection, loop)


class ReadAhead:
    """py-amqp's socket reads, at least :attr:`CHUNK` bytes at a time during a
    :class:`DrainingReader` run.

    py-amqp reads each frame with three exact ``recv`` calls (header, payload,
    end octet): nine system calls a message. It keeps whatever a read returns
    beyond what it asked for and serves its next reads from that
    (``TCPTransport._read``), so during a run its reads ask the socket for a
    chunk; outside runs they are exact, as before.

    Nothing read waits unparsed while the event loop polls the socket. A run
    ends at its limit, and runs again before the next poll; or when a read
    finds the socket empty. py-amqp reads the socket only when what it holds
    falls short of the part it is reading, and gives up only on a frame's
    header (for the rest of a frame whose header is in, it waits in the
    read). So it then holds less than a header, and the rest of that frame
    will wake the poll.

    0.8 socket reads a message instead of 9.6 (strace of a drain, every
    thread's reads), and about 9 % less worker CPU per point in alternating
    drains, over two steps (docs/performance.md). 8 KiB chunks did better
    than 2 and 32 KiB: each slice of py-amqp's buffer copies the rest of it.
    """

    CHUNK = 8192

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        exact: Callable[[int], bytes] = transport._quick_recv
        chunk = self.CHUNK
        self._exact = exact
        self._chunked: Callable[[int], bytes] = lambda wanted: exact(max(wanted, chunk))

    @classmethod
    def of(cls, transport: Any) -> ReadAhead | None:
        """One for a plain-TCP py-amqp transport; None for others (TLS reads its own way)."""
        return cls(transport) if isinstance(transport, TCPTransport) else None

    def start(self) -> None:
        """Read a chunk whenever py-amqp reads the socket."""
        self._transport._quick_recv = self._chunked

    def stop(self) -> None:
        """Read exactly what py-amqp asks for, as py-amqp does on its own."""
        self._transport._quick_recv = self._exact


class SignalWakeup:
    """Wakes the consumer's event loop whenever the process gets a signal.

    Celery's shutdown signals only set a flag, which its loop reads between
    polls; a poll waits for a message or the next timer. With nothing held
    for a batch, the next timer can be a second or two away (stopping an idle
    worker took 1.2 s, against 0.7 s while a timer ticked every 20 ms).
    Python writes a byte to the wake-up descriptor for every signal, before
    any handler runs; the loop polls the other end of a socket pair and
    returns at once. Only the main thread can set it, and only if nothing
    else in the process has set one.
    """

    def __init__(self) -> None:
        self._pair: tuple[socket.socket, socket.socket] | None = None  # (receiver, sender)

    @property
    def fileno(self) -> int | None:
        """The descriptor the event loop polls; None until installed."""
        return None if self._pair is None else self._pair[0].fileno()

    def register(self, hub: Any) -> None:
        """Have ``hub`` poll for signals (again after a reconnect); install on first use."""
        if self._pair is None:
            self._pair = self._installed()
        if self._pair is not None:
            hub.add_reader(self._pair[0].fileno(), self.drain)

    @staticmethod
    def _installed() -> tuple[socket.socket, socket.socket] | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        receiver, sender = socket.socketpair()
        receiver.setblocking(False)
        sender.setblocking(False)
        previous = signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
        if previous != -1:  # someone else's: leave it theirs
            signal.set_wakeup_fd(previous)
            receiver.close()
            sender.close()
            return None
        return receiver, sender

    def drain(self) -> None:
        """Read the bytes the signals wrote; the flags they set are read by the loop."""
        if self._pair is None:
            return
        with suppress(BlockingIOError, InterruptedError):
            while self._pair[0].recv(512):
                pass

    def uninstall(self) -> None:
        """Stop writing signals to the socket pair, and close it (for tests)."""
        if self._pair is None:
            return
        signal.set_wakeup_fd(-1)
        for end in self._pair:
            end.close()
        self._pair = None


SIGNAL_WAKEUP = SignalWakeup()
"""The worker process's one :class:`SignalWakeup`: a process has one wake-up descriptor."""


# kombu's JSON envelope for types JSON lacks (datetime, UUID, Decimal, bytes).
KOMBU_TYPE_MARKER = '"__type__"'
KOMBU_TYPE_MARKER_BYTES = KOMBU_TYPE_MARKER.encode()


def decode_plain_json(message: Any) -> None:
    """Decode a plain JSON body with the C decoder alone, caching it where kombu looks.

    kombu decodes JSON with a Python ``object_hook`` called for every object and
    a new decoder per message: an eighth of the worker's CPU (profiled). A body
    that holds no kombu type envelope decodes to the same value without the
    hook. Anything else (another content type or encoding, an envelope, a
    body that is not JSON) is left to kombu, which decodes or reports it as before.
    """
    body = message.body  # py-amqp hands a utf-8 body over as text already
    if isinstance(body, bytes):
        enveloped = KOMBU_TYPE_MARKER_BYTES in body
    elif isinstance(body, str):
        enveloped = KOMBU_TYPE_MARKER in body
    else:
        return
    if (
        enveloped
        or message.content_type != "application/json"
        or (message.content_encoding or "utf-8").lower() != "utf-8"
        or (message.accept is not None and "application/json" not in message.accept)
    ):
        return
    try:
        message._decoded_cache = json.loads(body)
    except ValueError:
        return


def body_shape_problem(message: Any) -> str | None:
    """Why a protocol-2 task body is not ``[args, kwargs, embed]``, or None if it is.

    Bodies that cannot be decoded at all are left to Celery, which reports
    them through :meth:`GuardedConsumer.on_decode_error`.
    """
    if not isinstance(message.headers, dict) or "task" not in message.headers:
        return None
    if "id" not in message.headers:
        # Celery reads such a message as protocol 1 and, for an unknown task name, raises
        # out of its own handler (a TypeError, or a DecodeError that stops the consumer).
        return "a task message needs an id header"
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


class BaseWorker(celery_apps_worker.Worker):  # type: ignore[misc]
    """Celery's ``celery worker`` class, with a JSON start-up line instead of the banner."""

    def json_logs(self) -> bool:
        """Whether this process logs JSON; then the banner and term notice are log lines."""
        return False

    def emit_banner(self) -> None:
        """Celery's banner on stdout; with JSON logs, one log line with the same facts."""
        if not self.json_logs():
            super().emit_banner()
            return
        pool = self.pool_cls if isinstance(self.pool_cls, str) else self.pool_cls.__module__
        logging.getLogger("telemetry.worker").info(
            "Worker %s starting",
            self.hostname,
            extra={
                "node": self.hostname,
                "broker": self.app.connection().as_uri(),
                "queues": sorted(self.app.amqp.queues),
                "concurrency": self.concurrency,
                "pool": pool.rsplit(".", 1)[-1],
                "task_events": bool(self.task_events),
            },
        )

    def install_platform_tweaks(self, worker: Any) -> None:
        """Celery's signal handlers; with JSON logs, SIGTERM prints no plain-text line."""
        super().install_platform_tweaks(worker)
        if self.json_logs():
            # The shutdown is logged by the worker_shutting_down signal instead.
            celery_apps_worker.install_worker_term_handler(worker, verbose=False)


def pool_forks(pool_cls: Any) -> bool:
    """Whether a worker's pool class runs tasks in forked processes."""
    return isinstance(pool_cls, type) and issubclass(pool_cls, PreforkPool)


@contextmanager
def stoppable_worker_thread() -> Iterator[Callable[[], None]]:
    """For a worker run in a thread of this process: yields ``stop()``, a warm shutdown."""

    def stop() -> None:
        worker_state.should_stop = 0

    try:
        yield stop
    finally:
        worker_state.should_stop = None


def import_from_working_directory(name: str) -> ModuleType:
    """Import module ``name`` from the working directory first, as Celery imports config."""
    module: ModuleType = import_from_cwd(name)
    return module


# Celery's default resultrepr_maxsize: how long a result text in an event may be.
RESULT_REPR_MAX_CHARS = 1024


def result_text(result: Any) -> str:
    """A task result as Celery writes it into a ``task-succeeded`` event."""
    text: str = saferepr(result, RESULT_REPR_MAX_CHARS)
    return text


class TelemetryAMQP(AMQP):  # type: ignore[misc]
    """Celery's AMQP helper, making every broker connection a :class:`BrokerConnection`."""

    Connection = BrokerConnection
    BrokerConnection = BrokerConnection
