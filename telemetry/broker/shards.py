"""Work-queue shards: ``QUEUE_SHARDS`` work queues, each GPU's points in one of them.

One quorum queue is one Raft group with one leader node, so one queue is the
collector's ceiling however many nodes the cluster has. With ``QUEUE_SHARDS=N``
(N > 1) there are N complete topologies (:class:`Topology`: work queue, delay
queues, dead letters), named ``<q>.<i>-of-<N>``; a producer picks one per point
by a stable hash of its ``gpu_uuid`` (:func:`shard_index`), over each shard's
own direct exchange. With N = 1 the layout is today's single queue, ``<q>``,
argument for argument.

The count is in the names so that two layouts never share a queue: while the
count changes, the old layout's queues drain beside the new ones
(``DRAIN_QUEUE_SHARDS``, docs/operations.md#changing-the-shard-count).

Quorum shards are declared with ``x-queue-leader-locator: balanced``, and
every work queue before any other queue of the layout, so that on a fresh
cluster the work queues' leaders land on different nodes (docs/scaling.md).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from amqp.exceptions import NotFound
from kombu import Connection

from telemetry.broker.connect import Broker, broker_errors
from telemetry.broker.retry_policy import RetryPolicy
from telemetry.broker.topology import Topology, declared_or_checked, topology_problem
from telemetry.config import MAX_QUEUE_SHARDS, Settings

# RabbitMQ picks the node with the fewest quorum leaders (below 1,000 queues; a
# random one above), instead of the node the declaring client is connected to.
LEADER_LOCATOR = "balanced"
RESHARD_DOC = "docs/operations.md#changing-the-shard-count"


def shard_index(key: str, count: int) -> int:
    """The shard of ``key`` among ``count``: CRC-32 of its UTF-8 bytes, modulo ``count``.

    The same in every process, host and Python version (``hash()`` of a string
    is salted per process, so it would not be).
    """
    if count == 1:
        return 0
    return zlib.crc32(key.encode()) % count


def shard_queue_name(base: str, index: int, count: int) -> str:
    """The work queue of shard ``index`` of ``count``: ``base`` itself when there is one."""
    return base if count == 1 else f"{base}.{index}-of-{count}"


@dataclass(frozen=True)
class ShardLayout:
    """The shards' topologies of one work queue name, in shard order."""

    topologies: tuple[Topology, ...]

    @classmethod
    def of(
        cls, settings: Settings, count: int | None = None, retry: RetryPolicy | None = None
    ) -> ShardLayout:
        """The layout of ``QUEUE_SHARDS`` (or ``count``) shards of the settings' queue, with
        the delay queues of ``retry`` (by default the policy of the settings alone)."""
        count = count or settings.queue_shards
        if count == 1:
            return cls((Topology.of(settings, retry),))
        return cls(
            tuple(
                Topology.of(
                    settings,
                    retry,
                    queue_name=shard_queue_name(settings.queue_name, index, count),
                    leader_locator=LEADER_LOCATOR if settings.queue_type == "quorum" else None,
                )
                for index in range(count)
            )
        )

    @classmethod
    def single(cls, topology: Topology) -> ShardLayout:
        """A layout of one topology: everything sent goes to its queue."""
        return cls((topology,))

    @property
    def count(self) -> int:
        """How many shards."""
        return len(self.topologies)

    def route(self, key: str) -> Topology:
        """The shard whose queue takes the point of GPU ``key``."""
        return self.topologies[shard_index(key, len(self.topologies))]

    def subset(self, indexes: Iterable[int]) -> ShardLayout:
        """Only the shards numbered ``indexes`` (a worker consuming some of them)."""
        return ShardLayout(tuple(self.topologies[index] for index in indexes))

    def work_queue_names(self) -> list[str]:
        """The work queues' names, in shard order."""
        return [topology.queue_name for topology in self.topologies]

    def named(self, queue_name: str) -> Topology | None:
        """The shard whose work queue is ``queue_name``, if it is one of these."""
        return next((t for t in self.topologies if t.queue_name == queue_name), None)

    def declare(self, channel: Any) -> None:
        """Declare every shard's queues: first all work queues, so the locator spreads
        their leaders before the dead-letter and delay queues count as leaders too."""
        for topology in self.topologies:
            topology.declare_queue(channel, topology.work_queue())
        for topology in self.topologies:
            topology.declare(channel)

    def check(self, channel: Any) -> None:
        """Check passively that every shard's work queue and dead-letter path exist."""
        for topology in self.topologies:
            topology.check(channel)

    def ensure(self, connection: Connection) -> Any:
        """A channel of ``connection`` on which every shard's topology is known to exist.

        Declared if this account may configure queues, else checked passively
        (see :meth:`Topology.ensure`).
        """
        return declared_or_checked(self, connection)


def consumed_layout(settings: Settings, retry: RetryPolicy | None = None) -> ShardLayout:
    """The shards a worker consumes: ``WORKER_SHARDS`` of ``QUEUE_SHARDS`` (all by
    default), then every queue of the ``DRAIN_QUEUE_SHARDS`` layout being drained; each
    with the delay queues of ``retry``."""
    shards = ShardLayout.of(settings, retry=retry).subset(settings.consumed_shards).topologies
    if settings.drain_queue_shards is not None:
        shards += ShardLayout.of(settings, settings.drain_queue_shards, retry).topologies
    return ShardLayout(shards)


def retry_topology(settings: Settings, queue_name: str, retry: RetryPolicy) -> Topology:
    """The topology of the shard a message came from (by its routing key, which is its
    work queue's name), so its retry copy goes back to that shard."""
    return consumed_layout(settings, retry).named(queue_name) or Topology.of(settings, retry)


def worker_layout_problem(
    broker: Broker, settings: Settings, retry: RetryPolicy | None = None
) -> str | None:
    """Why a worker cannot start on these shards (one line), or None if it can.

    A queue that exists with other arguments, or another shard count in use
    that this worker would strand (:func:`layout_problem`). None too when the
    broker cannot be reached now: a worker retries that.
    """
    if broker.in_memory:
        return None
    problem = topology_problem(broker, consumed_layout(settings, retry))
    if problem is not None:
        return problem
    connection = broker.connection()
    try:
        return layout_problem(connection, settings, producer=False)
    except broker_errors(connection):
        return None
    finally:
        connection.release()


@dataclass(frozen=True)
class QueueState:
    """What RabbitMQ says of one queue now."""

    name: str
    messages: int
    consumers: int


def queue_states(connection: Connection, names: Iterable[str]) -> list[QueueState]:
    """The state of each named queue that exists; a missing one is left out.

    RabbitMQ closes a channel that asks after a missing queue, so each
    question goes on a channel of its own.
    """
    states = []
    for name in names:
        probe = connection.channel()
        try:
            found = probe.queue_declare(name, passive=True)
        except NotFound:
            continue
        states.append(QueueState(name, int(found.message_count), int(found.consumer_count)))
        probe.close()
    return states


def live_layouts(
    connection: Connection, settings: Settings, skip: Iterable[int]
) -> dict[int, list[QueueState]]:
    """Other shard counts of the settings' queue that are in use: their work queues hold
    messages or have consumers. Counts in ``skip`` are not asked after."""
    found: dict[int, list[QueueState]] = {}
    for count in range(1, MAX_QUEUE_SHARDS + 1):
        if count in skip:
            continue
        first = shard_queue_name(settings.queue_name, 0, count)
        if not queue_states(connection, [first]):
            continue
        states = queue_states(connection, ShardLayout.of(settings, count).work_queue_names())
        if any(state.messages or state.consumers for state in states):
            found[count] = states
    return found


def layout_problem(connection: Connection, settings: Settings, producer: bool) -> str | None:
    """One line when ``QUEUE_SHARDS`` disagrees with the shard count in use on the broker.

    A worker disagrees when another count's work queues hold messages or have
    consumers (and it does not drain them): its points would be stranded. A
    producer disagrees when nobody consumes its own shards but another
    count's are in use. The line names both ways out.
    """
    own = settings.queue_shards
    skip = {own, *([settings.drain_queue_shards] if settings.drain_queue_shards else [])}
    if producer:
        states = queue_states(connection, ShardLayout.of(settings).work_queue_names())
        if any(state.consumers for state in states):
            return None
    others = live_layouts(connection, settings, skip)
    if not others:
        return None
    count, states = next(iter(others.items()))
    messages = sum(state.messages for state in states)
    consumers = sum(state.consumers for state in states)
    return (
        f"QUEUE_SHARDS={own}, but the broker's queue {settings.queue_name!r} is in use with "
        f"{count} shard(s) ({messages} message(s) waiting, {consumers} consumer(s)): set "
        f"QUEUE_SHARDS={count} like the rest, or change the count as {RESHARD_DOC} says "
        f"(workers with QUEUE_SHARDS={own} DRAIN_QUEUE_SHARDS={count} first)"
    )
