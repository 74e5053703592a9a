"""Answering ``telemetry stats`` from a process that is not a Celery worker.

``telemetry stats`` asks every collector through Celery's control broadcast
(the ``celery.pidbox`` fanout exchange). A scraper joins that mailbox as a
node of its own, through kombu's public pidbox API, and answers only the
collector's own command: Flower's and ``celery inspect``'s commands are left
unanswered, so the scraper never shows up to them as a broken worker.

It declares nothing but its own node queue: the mailbox exchange is checked
passively (the workers declare it) and replies are published without
declaring the reply exchange (the asker declared it). So the producer account
a scraper runs with needs no configure right on either, and no write right on
the mailbox (docs/security.md#accounts-and-permissions).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from kombu import Exchange, Producer, pidbox

from telemetry.broker.connect import Broker, broker_errors

logger = logging.getLogger("telemetry.broker.status")

STATS_COMMAND = "telemetry_stats"
"""The control command ``telemetry stats`` broadcasts; workers and scrapers answer it."""
CONTROL_EXCHANGE = "celery"
"""Celery's default ``control_exchange``: the mailbox is ``celery.pidbox``."""
RECONNECT_AFTER_S = 2.0


class ReplyingNode(pidbox.Node):  # type: ignore[misc]
    """A mailbox node whose replies go out without declaring the reply exchange."""

    def reply(self, data: Any, exchange: str, routing_key: str, ticket: str, **_: Any) -> None:
        """Publish ``data`` to the asker's reply queue, as kombu's node does, minus the declare."""
        Producer(self.channel, auto_declare=False).publish(
            data,
            exchange=exchange,
            routing_key=routing_key,
            headers={"ticket": ticket, "clock": self.mailbox.clock.forward()},
            serializer="json",
        )


class StatusResponder:
    """Answers :data:`STATS_COMMAND` with ``status()``, from a thread of its own."""

    def __init__(
        self, broker: Broker, node_name: str, status: Callable[[], Mapping[str, object]]
    ) -> None:
        self._broker = broker
        self._node_name = node_name
        self._status = status
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.answered = 0

    def start(self) -> None:
        """Listen in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="status-responder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and close the connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            connection = self._broker.connection()
            try:
                self._listen(connection)
            except broker_errors(connection) as exc:
                # A lost connection, or no mailbox yet: no worker has ever started.
                logger.warning("Status replies paused: %s", exc)
                self._stop.wait(RECONNECT_AFTER_S)
            finally:
                connection.release()

    def _listen(self, connection: Any) -> None:
        mailbox = pidbox.Mailbox(
            CONTROL_EXCHANGE, type="fanout", accept=["json"], serializer="json"
        )(connection)
        mailbox.exchange = Exchange(
            mailbox.exchange.name,
            type="fanout",
            durable=False,
            delivery_mode="transient",
            passive=True,
        )
        channel = connection.channel()
        node = ReplyingNode(
            self._node_name,
            channel=channel,
            handlers={STATS_COMMAND: lambda state: dict(self._status())},
            mailbox=mailbox,
        )

        def on_message(body: Any, message: Any) -> None:
            if isinstance(body, dict) and body.get("method") == STATS_COMMAND:
                node.handle_message(body, message)
                self.answered += 1

        consumer = node.listen(channel=channel, callback=on_message)
        try:
            while not self._stop.is_set():
                try:
                    connection.drain_events(timeout=0.5)
                except TimeoutError:
                    continue
        finally:
            consumer.cancel()
