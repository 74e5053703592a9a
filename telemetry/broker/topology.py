"""RabbitMQ topology: the work queue and where its failures are dead-lettered.

::

    producer ──► exchange <q> ──(<q>)──► queue <q> ──► workers
                                           │ rejected without requeue
                                           ▼
                 exchange <q>.dlx ──(<q>.dead)──► queue <q>.dead

Both queues are declared by everything that publishes or consumes, because
RabbitMQ drops a dead letter whose exchange has no bound queue. Every
declaration of ``<q>`` must carry the same arguments, or RabbitMQ refuses it,
so this module is the only place that builds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import Connection, Exchange, Queue

from telemetry.broker.connect import broker_errors, connect, unavailable

TASK_NAME = "telemetry.ingest"
# Set on every retry copy: the error that made the worker retry.
ERROR_HEADER = "x-telemetry-error"


def dead_queue_name(queue_name: str) -> str:
    """The queue that RabbitMQ dead-letters ``queue_name``'s failed messages into."""
    return f"{queue_name}.dead"


def dead_exchange_name(queue_name: str) -> str:
    """The exchange that routes ``queue_name``'s dead letters."""
    return f"{queue_name}.dlx"


def work_queue(queue_name: str) -> Queue:
    """The durable queue workers consume, with its dead-letter exchange set."""
    return Queue(
        queue_name,
        Exchange(queue_name, type="direct", durable=True),
        routing_key=queue_name,
        durable=True,
        queue_arguments={
            "x-dead-letter-exchange": dead_exchange_name(queue_name),
            "x-dead-letter-routing-key": dead_queue_name(queue_name),
        },
    )


def dead_queue(queue_name: str) -> Queue:
    """The durable queue that holds dead letters until they are replayed or purged."""
    return Queue(
        dead_queue_name(queue_name),
        Exchange(dead_exchange_name(queue_name), type="direct", durable=True),
        routing_key=dead_queue_name(queue_name),
        durable=True,
    )


def declare_topology(channel: Any, queue_name: str) -> None:
    """Declare both exchanges, both queues and their bindings on ``channel``."""
    dead_queue(queue_name)(channel).declare()
    work_queue(queue_name)(channel).declare()


@contextmanager
def topology_channel(broker_url: str, queue_name: str) -> Iterator[tuple[Connection, Any]]:
    """A connection and a channel with the topology declared, for short operator commands.

    Raises :class:`BrokerUnavailable` with one readable line if the broker
    cannot be used; the connection is released on the way out.
    """
    connection = connect(broker_url)
    try:
        try:
            channel = connection.channel()
            declare_topology(channel, queue_name)
        except broker_errors(connection) as exc:
            raise unavailable(broker_url, exc) from exc
        yield connection, channel
    finally:
        connection.release()


def queue_consumers(broker_url: str, queue_name: str) -> int:
    """How many consumers the work queue has now."""
    with topology_channel(broker_url, queue_name) as (_, channel):
        return int(channel.queue_declare(queue_name, passive=True).consumer_count)
