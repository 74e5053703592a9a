"""Backpressure for producers: how many messages wait in the work queue, and pausing on it.

The streamer and the scraper both publish through a :class:`ConfirmingPublisher`
opened by :func:`open_publisher` and pause through one :class:`Backpressure`,
so both sources behave the same when the workers fall behind.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kombu.exceptions import OperationalError

from telemetry.broker.connect import Broker, broker_errors, unavailable
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.shards import ShardLayout, layout_problem
from telemetry.broker.topology import TopologyMismatch, TopologyMissing
from telemetry.config import Settings

logger = logging.getLogger("telemetry.broker.backlog")

FIRST_PAUSE_S = 0.1
LONGEST_PAUSE_S = 5.0


def open_publisher(settings: Settings, compression: str | None = None) -> ConfirmingPublisher:
    """A confirming publisher to the settings' work queues, connected and declared.

    A broker that is down at start is an error at once (:class:`BrokerUnavailable`);
    one lost later is reconnected to, and every unconfirmed message sent again.
    Raises :class:`TopologyMismatch` when ``QUEUE_SHARDS`` disagrees with the
    count the workers use (:func:`layout_problem`).
    """
    broker = Broker.of(settings)
    publisher = ConfirmingPublisher(
        broker.connection(),
        ShardLayout.of(settings),
        compression=compression,
        connect_retries=10,
    )
    try:
        publisher.open(retries=1)
    except TopologyMissing as exc:
        # A producer's account may not declare: its shards may be missing because the
        # workers run another count, which says more than "start a worker".
        problem = shard_count_problem(broker, settings)
        raise (TopologyMismatch(problem) if problem else exc) from exc
    if not broker.in_memory:
        problem = shard_count_problem(broker, settings)
        if problem is not None:
            publisher.close()
            raise TopologyMismatch(problem)
    return publisher


def shard_count_problem(broker: Broker, settings: Settings) -> str | None:
    """Why a producer's ``QUEUE_SHARDS`` would strand its points (one line), or None."""
    connection = broker.connection()
    try:
        return layout_problem(connection, settings, producer=True)
    except broker_errors(connection) as exc:
        raise unavailable(broker, exc) from exc
    finally:
        connection.release()


class QueueBacklog:
    """Reads how many messages wait in the work queues (every shard's), on a connection
    of its own.

    A broker that cannot be asked right now (it is restarting, say) reads as
    no backlog: the publisher is already retrying, and backpressure is advisory.
    """

    def __init__(self, broker: Broker, queue_names: Sequence[str]) -> None:
        self._connection = broker.connection()
        self._queue_names = list(queue_names)
        self._channel: Any = None

    def __call__(self) -> int:
        errors = (
            OperationalError,
            OSError,
            *self._connection.recoverable_connection_errors,
            *self._connection.recoverable_channel_errors,
        )
        try:
            if self._channel is None:
                self._channel = self._connection.channel()
            return sum(
                int(self._channel.queue_declare(name, passive=True).message_count)
                for name in self._queue_names
            )
        except errors as exc:
            logger.warning("Could not read the queue backlog (%s); carrying on", exc)
            self.close()
            self._connection = self._connection.clone()
            return 0

    def close(self) -> None:
        """Release the connection."""
        self._channel = None
        with contextlib.suppress(OSError, OperationalError):
            self._connection.release()


class Backpressure:
    """Holds a producer back while the work queues hold more than ``max_backlog`` messages.

    Waits grow from 0.1 s to 5 s, so a long outage of the workers costs the
    broker one question every few seconds, not a busy loop.
    """

    def __init__(
        self,
        backlog: Callable[[], int],
        max_backlog: int,
        stop: threading.Event,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._backlog = backlog
        self._max_backlog = max_backlog
        self._stop = stop
        self._sleep = sleep
        self.pauses = 0

    def wait(self) -> None:
        """Return once the backlog is at or under the bound, or ``stop`` is set."""
        pause = FIRST_PAUSE_S
        while not self._stop.is_set():
            depth = self._backlog()
            if depth <= self._max_backlog:
                return
            self.pauses += 1
            logger.warning(
                "Queue backlog %d is over %d; pausing %.1fs", depth, self._max_backlog, pause
            )
            self._sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE_S)
