"""RabbitMQ topology: the work queue, its delayed retries and its dead letters.

::

    producer ──► exchange <q> ──(<q>)──► queue <q> ──► workers
                     ▲                     │ rejected without requeue, or
                     │                     │ delivered more than DELIVERY_LIMIT times (quorum)
                     │                     ▼
                     │   exchange <q>.dlx ──(<q>.dead)──► queue <q>.dead
                     │
                     └── expired ── queue <q>.retry.<ms>ms ◄── exchange <q>.retry ◄── a retry
                                                                             copy, from the worker

``QUEUE_TYPE`` makes the queues classic or quorum (replicated, with a delivery
limit). With quorum, dead-lettering is at-least-once, so a dead letter is never
dropped between two queues. A retry copy waits in the delay queue of its
attempt until its time-to-live runs out, then RabbitMQ dead-letters it back to
the work queue: the same on both queue types, with no ETA held in a worker and
no whole-second rounding (Celery's native delayed delivery needs both).

Retry copies go through an exchange of their own, never RabbitMQ's default
exchange: the right to publish to that one (``amq.default``) is the right to
publish into every queue of the virtual host, a worker's control mailbox
included (docs/security.md#accounts-and-permissions).

Everything that publishes or consumes makes sure the topology exists before
it starts, because RabbitMQ drops a dead letter whose exchange has no bound
queue (:meth:`Topology.ensure`): an account that may configure the queues
declares them; one that may not (a producer's, an operator's) checks that
they exist, which needs no rights. Every declaration of a queue must carry the
same arguments, or RabbitMQ refuses it (:class:`TopologyMismatch`), so this
module is the only place that builds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from amqp.exceptions import AccessRefused, NotFound, PreconditionFailed
from kombu import Connection, Exchange, Queue

from telemetry.broker.connect import Broker, broker_errors, connect, unavailable
from telemetry.broker.retry_policy import RetryPolicy
from telemetry.config import QueueType, Settings
from telemetry.errors import BrokerUnavailable, PermanentError

TASK_NAME = "telemetry.ingest"
# Set on every retry copy: the error that made the worker retry.
ERROR_HEADER = "x-telemetry-error"
MIGRATION_DOC = "docs/scaling.md#changing-the-queue-type"
ACCOUNTS_DOC = "docs/security.md#accounts-and-permissions"


class TopologyMismatch(PermanentError):
    """Raised when a queue exists with other arguments (another type or delivery limit)."""


class TopologyMissing(PermanentError):
    """Raised when a queue or exchange is missing and this account may not declare it."""


def dead_queue_name(queue_name: str) -> str:
    """The queue that RabbitMQ dead-letters ``queue_name``'s failed messages into."""
    return f"{queue_name}.dead"


def dead_exchange_name(queue_name: str) -> str:
    """The exchange that routes ``queue_name``'s dead letters."""
    return f"{queue_name}.dlx"


def retry_exchange_name(queue_name: str) -> str:
    """The exchange that routes ``queue_name``'s retry copies to their delay queues."""
    return f"{queue_name}.retry"


@dataclass(frozen=True)
class Topology:
    """The queues of one work queue name, as the settings make them."""

    queue_name: str
    queue_type: QueueType
    delivery_limit: int
    retry_ceilings_ms: tuple[int, ...] = ()
    # Where RabbitMQ places a quorum queue's leader (``x-queue-leader-locator``); None
    # leaves the argument out, and the leader on the node the declaring client is on.
    leader_locator: str | None = None

    @classmethod
    def of(
        cls,
        settings: Settings,
        retry: RetryPolicy | None = None,
        *,
        queue_name: str | None = None,
        leader_locator: str | None = None,
    ) -> Topology:
        """The topology the settings describe, for their queue or for ``queue_name`` (a
        shard), with a delay queue per ceiling of ``retry`` (by default the policy of the
        settings alone)."""
        return cls(
            queue_name or settings.queue_name,
            settings.queue_type,
            settings.delivery_limit,
            tuple((retry or RetryPolicy.of(settings)).ceilings_ms()),
            leader_locator,
        )

    @property
    def dead_name(self) -> str:
        """The dead-letter queue's name."""
        return dead_queue_name(self.queue_name)

    def _typed(self, arguments: dict[str, Any], dead_letters: bool) -> dict[str, Any]:
        """``arguments`` plus what the queue type needs; quorum dead-letters at least once."""
        if self.queue_type == "classic":
            return arguments
        typed = {"x-queue-type": "quorum", **arguments}
        if self.leader_locator is not None:
            typed["x-queue-leader-locator"] = self.leader_locator
        if dead_letters:
            # At-least-once dead-lettering needs reject-publish overflow (RabbitMQ 3.10+).
            typed["x-dead-letter-strategy"] = "at-least-once"
            typed["x-overflow"] = "reject-publish"
        return typed

    def work_queue(self) -> Queue:
        """The durable queue workers consume, dead-lettering into ``<q>.dead``."""
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": dead_exchange_name(self.queue_name),
            "x-dead-letter-routing-key": self.dead_name,
        }
        if self.queue_type == "quorum":
            arguments["x-delivery-limit"] = self.delivery_limit
        return Queue(
            self.queue_name,
            Exchange(self.queue_name, type="direct", durable=True),
            routing_key=self.queue_name,
            durable=True,
            queue_arguments=self._typed(arguments, dead_letters=True),
        )

    def dead_queue(self) -> Queue:
        """The durable queue that holds dead letters until they are replayed or purged."""
        return Queue(
            self.dead_name,
            Exchange(dead_exchange_name(self.queue_name), type="direct", durable=True),
            routing_key=self.dead_name,
            durable=True,
            queue_arguments=self._typed({}, dead_letters=False) or None,
        )

    def retry_queue(self, attempt: int) -> Queue:
        """Where retry number ``attempt + 1`` waits; its time-to-live is that attempt's ceiling.

        A copy's own expiration (its jittered delay, at most the ceiling) ends
        the wait sooner; then RabbitMQ dead-letters it back to the work queue.
        """
        ceiling_ms = self.retry_ceilings_ms[min(attempt, len(self.retry_ceilings_ms) - 1)]
        arguments = {
            "x-message-ttl": ceiling_ms,
            "x-dead-letter-exchange": self.queue_name,
            "x-dead-letter-routing-key": self.queue_name,
        }
        return Queue(
            f"{self.queue_name}.retry.{ceiling_ms}ms",
            Exchange(retry_exchange_name(self.queue_name), type="direct", durable=True),
            routing_key=f"{self.queue_name}.retry.{ceiling_ms}ms",
            durable=True,
            queue_arguments=self._typed(arguments, dead_letters=True),
        )

    def retry_queues(self) -> list[Queue]:
        """Every delay queue, one per distinct ceiling."""
        seen: dict[str, Queue] = {}
        for attempt in range(len(self.retry_ceilings_ms)):
            queue = self.retry_queue(attempt)
            seen.setdefault(queue.name, queue)
        return list(seen.values())

    def queue_names(self) -> list[str]:
        """The names of every queue of this topology."""
        return [self.queue_name, self.dead_name, *(q.name for q in self.retry_queues())]

    def exchange_names(self) -> list[str]:
        """The names of every exchange of this topology."""
        return [
            self.queue_name,
            dead_exchange_name(self.queue_name),
            retry_exchange_name(self.queue_name),
        ]

    def declare(self, channel: Any) -> None:
        """Declare every exchange, queue and binding on ``channel``.

        Raises :class:`TopologyMismatch` in one line when a queue exists with
        other arguments; the channel is closed by RabbitMQ then.
        """
        for queue in (self.dead_queue(), self.work_queue(), *self.retry_queues()):
            self.declare_queue(channel, queue)

    def declare_queue(self, channel: Any, queue: Queue) -> None:
        """Declare one of this topology's queues (with its exchange and binding) on ``channel``.

        Raises :class:`TopologyMismatch` in one line when it exists with other arguments.
        """
        try:
            queue(channel).declare()
        except PreconditionFailed as exc:
            raise self.mismatch(queue.name, exc) from exc

    def check(self, channel: Any) -> None:
        """Check passively that the work queue and its dead letters' path exist (this needs
        no rights).

        The delay queues are not checked: their names follow the retry policy,
        which is the workers' (a worker declares its own). Raises
        :class:`TopologyMissing` naming the first one missing; the channel is
        closed by RabbitMQ then.
        """
        for name in (self.queue_name, dead_exchange_name(self.queue_name)):
            try:
                channel.exchange_declare(name, "direct", passive=True)
            except NotFound as exc:
                raise self.missing("exchange", name) from exc
        for name in (self.queue_name, self.dead_name):
            try:
                channel.queue_declare(name, passive=True)
            except NotFound as exc:
                raise self.missing("queue", name) from exc

    def ensure(self, connection: Connection) -> Any:
        """A channel of ``connection`` on which the whole topology is known to exist.

        Declared if this account may configure the queues (a worker's; guest in
        development); else checked passively: a producer's or an operator's
        account relies on a worker, or ``tools/rabbitmq_accounts.py``, having
        declared it. Raises :class:`TopologyMismatch` or :class:`TopologyMissing`.
        """
        return declared_or_checked(self, connection)

    def missing(self, kind: str, name: str) -> TopologyMissing:
        """The one-line error for a queue or exchange this account cannot declare."""
        return TopologyMissing(
            f"{kind} {name!r} does not exist, and this broker account may not declare it: "
            f"start a worker once, or create the layout with python -m tools.rabbitmq_accounts "
            f"({ACCOUNTS_DOC})"
        )

    def mismatch(self, queue_name: str, exc: BaseException) -> TopologyMismatch:
        """The one-line error for a queue that exists with other arguments."""
        text = str(exc)
        reason = text[text.find("inequivalent arg") :] if "inequivalent arg" in text else text
        reason = reason.split(" for queue ", 1)[0]
        return TopologyMismatch(
            f"queue {queue_name!r} already exists with other settings ({reason}); "
            f"this collector wants a {self.queue_type} queue"
            + (f" with DELIVERY_LIMIT={self.delivery_limit}" if self.queue_type == "quorum" else "")
            + f". Set QUEUE_TYPE (and DELIVERY_LIMIT) to what it was made with, or drain and "
            f"redeclare it: {MIGRATION_DOC}"
        )


class Declarable(Protocol):
    """Queues that can be declared, or checked passively: a :class:`Topology`, or several."""

    def declare(self, channel: Any) -> None: ...

    def check(self, channel: Any) -> None: ...


def declared_or_checked(queues: Declarable, connection: Connection) -> Any:
    """A channel of ``connection`` on which ``queues`` are declared, or, where this account
    may not declare them, checked to exist (see :meth:`Topology.ensure`)."""
    channel = connection.channel()
    try:
        queues.declare(channel)
        return channel
    except AccessRefused:
        pass  # RabbitMQ closed that channel: check on a new one
    channel = connection.channel()
    queues.check(channel)
    return channel


class Ensurable(Protocol):
    """Queues that can be made sure of on a connection: a :class:`Topology`, or several."""

    def ensure(self, connection: Connection) -> Any: ...


@contextmanager
def topology_channel(broker: Broker, topology: Ensurable) -> Iterator[tuple[Connection, Any]]:
    """A connection and a channel with the topology ensured, for short operator commands.

    Raises :class:`BrokerUnavailable` with one readable line if the broker
    cannot be used, :class:`TopologyMismatch` if a queue exists with other
    arguments; the connection is released on the way out.
    """
    connection = connect(broker)
    try:
        try:
            channel = topology.ensure(connection)
        except broker_errors(connection) as exc:
            raise unavailable(broker, exc) from exc
        yield connection, channel
    finally:
        connection.release()


def queue_consumers(broker: Broker, topology: Topology) -> int:
    """How many consumers the work queue has now."""
    with topology_channel(broker, topology) as (_, channel):
        name = topology.queue_name
        return int(channel.queue_declare(name, passive=True).consumer_count)


def topology_problem(broker: Broker, topology: Ensurable) -> str | None:
    """Why this topology cannot be declared on the broker (one line), or None if it can.

    None too when the broker cannot be reached now: a worker retries that.
    """
    if broker.in_memory:
        return None
    try:
        with topology_channel(broker, topology):
            return None
    except TopologyMismatch as exc:
        return str(exc)
    except BrokerUnavailable:
        return None
