"""Publishing ``telemetry.ingest`` tasks with publisher confirms, many at a time.

Celery's ``delay()`` waits for each confirm in turn. Here messages are sent
without waiting, up to ``window`` unconfirmed at once; a message counts as
accepted only when RabbitMQ confirms it. If the connection drops, every
unconfirmed message is sent again after reconnecting: at-least-once, and the
collector's idempotent writes turn the repeats into counted duplicates.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from kombu import Connection, Producer
from kombu.exceptions import OperationalError

from telemetry.broker.amqp_door import JsonPublish, json_publish
from telemetry.broker.connect import broker_errors, unavailable
from telemetry.broker.messages import TaskMessage
from telemetry.broker.shards import ShardLayout
from telemetry.broker.topology import Topology
from telemetry.errors import BrokerUnavailable

logger = logging.getLogger("telemetry.broker.publisher")

# Task messages are persistent: RabbitMQ keeps them on disk until a worker acks them.
PERSISTENT = 2


class Publisher(Protocol):
    """What a source (the streamer, the scraper) needs of a publisher, such as
    :class:`ConfirmingPublisher`; tests hand in a fake."""

    confirmed: int

    def send(self, message: TaskMessage) -> None: ...

    def flush(self, timeout_s: float = 30.0) -> None: ...


class ConfirmingPublisher:
    """Sends task messages to the work queues and counts what the broker confirmed.

    Each message goes to the shard its ``shard_key`` hashes to, through that
    shard's exchange; given one :class:`Topology`, always to its queue.
    """

    def __init__(
        self,
        connection: Connection,
        layout: ShardLayout | Topology,
        window: int = 500,
        compression: str | None = None,
        connect_retries: int = 5,
    ) -> None:
        self._connection = connection
        self._layout = layout if isinstance(layout, ShardLayout) else ShardLayout.single(layout)
        self._window = max(1, window)
        self._compression = compression
        self._connect_retries = connect_retries
        self._pending: dict[int, TaskMessage] = {}
        self._next_tag = 1
        self._nacked: list[TaskMessage] = []
        self._channel: Any = None
        self._producer: Producer | None = None
        # Set when the channel is py-amqp's and bodies go uncompressed (see _send_once).
        self._publish_json: JsonPublish | None = None
        self._confirms = False
        self.confirmed = 0

    def open(self, retries: int | None = None) -> None:
        """Connect, make sure the queues exist and switch the channel to confirm mode.

        Raises :class:`BrokerUnavailable` if the broker cannot be reached
        after ``retries`` more tries (default: the reconnect budget).
        """
        try:
            self._connection.ensure_connection(
                max_retries=self._connect_retries if retries is None else retries,
                interval_start=0.5,
                interval_step=1,
                interval_max=5,
            )
            self._channel = self._layout.ensure(self._connection)
            self._confirms = hasattr(self._channel, "confirm_select")
            if self._confirms:
                self._channel.confirm_select()
                self._channel.events["basic_ack"].add(self._on_ack)
                self._channel.events["basic_nack"].add(self._on_nack)
            # No declare of its own: ensure() did what this account may do, and a
            # producer's account may not declare the exchange (it may only publish).
            self._producer = Producer(self._channel, auto_declare=False)
            self._publish_json = (
                json_publish(self._channel, PERSISTENT) if self._compression is None else None
            )
            self._next_tag = 1
        except broker_errors(self._connection) as exc:
            raise unavailable(self._connection.as_uri(), exc) from exc

    def close(self) -> None:
        """Release the channel and connection (unconfirmed messages are not waited for)."""
        self._connection.release()

    def send(self, message: TaskMessage) -> None:
        """Send one message; blocks while ``window`` messages await their confirms."""
        while True:
            try:
                self._send_once(message)
                if len(self._pending) >= self._window:
                    self._wait_until(self._window // 2)
                return
            except self._recoverable_errors() as exc:
                self._reconnect(exc)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every sent message is confirmed, resending across reconnects."""
        deadline = time.monotonic() + timeout_s
        while self._pending or self._nacked:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"{len(self._pending)} messages still unconfirmed after {timeout_s:.0f}s"
                )
            try:
                self._wait_until(0, deadline)
            except self._recoverable_errors() as exc:
                self._reconnect(exc)

    def _send_once(self, message: TaskMessage) -> None:
        # An invariant for mypy: a publisher is open()ed before anything is sent.
        assert self._producer is not None, "open() first"  # nosec B101
        # Each shard's exchange and routing key are its work queue's name.
        queue_name = self._layout.route(message.shard_key).queue_name
        if self._publish_json is not None and "content_type" not in message.properties:
            # A new message to RabbitMQ, uncompressed: py-amqp's own publish, without
            # kombu's Producer (see telemetry.broker.amqp_door).
            self._publish_json(message, queue_name, queue_name)
        else:
            # Compressed, replayed as it was encoded, or not RabbitMQ (the demo's broker).
            self._producer.publish(
                message.body,
                exchange=queue_name,
                routing_key=queue_name,
                serializer="json",
                compression=self._compression,
                headers=message.headers,
                delivery_mode=PERSISTENT,
                **message.properties,
            )
        if self._confirms:
            self._pending[self._next_tag] = message
            self._next_tag += 1
        else:
            self.confirmed += 1

    def _wait_until(self, most_pending: int, deadline: float | None = None) -> None:
        while len(self._pending) > most_pending:
            if deadline is not None and time.monotonic() > deadline:
                return
            try:
                self._connection.drain_events(timeout=1.0)
            except TimeoutError:
                continue
        self._resend_nacked()

    def _resend_nacked(self) -> None:
        while self._nacked:
            self._send_once(self._nacked.pop())

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        for tag in self._settled_tags(delivery_tag, multiple):
            del self._pending[tag]
            self.confirmed += 1

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        for tag in self._settled_tags(delivery_tag, multiple):
            logger.warning(
                "Broker refused message %s; sending it again", self._pending[tag].task_id
            )
            self._nacked.append(self._pending.pop(tag))

    def _settled_tags(self, delivery_tag: int, multiple: bool) -> list[int]:
        if not multiple:
            return [delivery_tag] if delivery_tag in self._pending else []
        # Tags are pending in the order they were sent: stop at the first one past
        # the confirm instead of scanning a whole window per confirm.
        settled = []
        for tag in self._pending:
            if tag > delivery_tag:
                break
            settled.append(tag)
        return settled

    def _reconnect(self, exc: BaseException) -> None:
        """Reconnect with backoff and resend everything not yet confirmed."""
        unconfirmed = list(self._pending.values()) + self._nacked
        logger.warning(
            "Broker connection lost (%s); reconnecting to resend %d unconfirmed messages",
            exc,
            len(unconfirmed),
        )
        retryable: tuple[type[BaseException], ...] = (
            BrokerUnavailable,
            *self._recoverable_errors(),
        )
        for attempt in range(self._connect_retries + 1):
            self._pending.clear()
            self._nacked.clear()
            try:
                self._connection.close()
            except self._recoverable_errors():
                pass
            self._connection = self._connection.clone()
            try:
                self.open()
                for message in unconfirmed:
                    self._send_once(message)
            except retryable as again:
                logger.warning("Reconnect attempt %d failed: %s", attempt + 1, again)
                time.sleep(min(2.0**attempt, 10.0))
                continue
            return
        raise BrokerUnavailable(
            f"broker unreachable after {self._connect_retries + 1} "
            f"reconnect attempts; {len(unconfirmed)} messages unconfirmed"
        )

    def _recoverable_errors(self) -> tuple[type[BaseException], ...]:
        return (
            OperationalError,
            *self._connection.recoverable_connection_errors,
            *self._connection.recoverable_channel_errors,
            *self._connection.connection_errors,
            OSError,
        )
