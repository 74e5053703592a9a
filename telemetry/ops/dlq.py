"""Dead-letter tooling: list, show, replay and purge ``<queue>.dead``.

Listing reads messages without acknowledging them and then closes the
channel, so RabbitMQ puts every one of them back. Replay moves messages: each
is republished to the work queue, confirmed by the broker, and only then
acknowledged in the dead-letter queue, so a crash in between leaves a copy in
both places and never in neither; the collector's idempotent writes make the
copy harmless.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kombu.exceptions import OperationalError

from telemetry.broker.connect import Broker
from telemetry.broker.messages import TaskMessage
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.shards import ShardLayout
from telemetry.broker.topology import ERROR_HEADER, Topology, topology_channel
from telemetry.config import Settings
from telemetry.errors import ConfigError


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message, as an operator wants to see it."""

    task_id: str
    task: str
    point: str
    error: str
    death: str
    died_at: datetime | None
    retries: int
    headers: dict[str, Any]
    body: Any

    def line(self) -> str:
        """One line for ``dlq list``."""
        when = f"{self.died_at:%Y-%m-%d %H:%M:%S}Z" if self.died_at else "?"
        error = self.error if len(self.error) <= 160 else self.error[:157] + "..."
        return f"{self.task_id}  {when}  {self.point}  [{self.death}] {error}"


def describe(headers: dict[str, Any], body: Any) -> DeadLetter:
    """Pull the useful parts out of a dead letter's headers and body."""
    deaths = headers.get("x-death") or []
    first = deaths[0] if deaths else {}
    died_at = first.get("time")
    if isinstance(died_at, datetime) and died_at.tzinfo is None:
        died_at = died_at.replace(tzinfo=UTC)
    death = (
        (f"{first.get('reason', '?')} from {first.get('queue', '?')} x{first.get('count', 1)}")
        if first
        else "no x-death header"
    )
    kwargs = body[1] if isinstance(body, list) and len(body) == 3 else {}
    point = kwargs.get("point") if isinstance(kwargs, dict) else None
    summary = (
        f"{point.get('gpu_uuid', '?')} {point.get('metric_name', '?')}"
        if isinstance(point, dict)
        else "(no point)"
    )
    return DeadLetter(
        task_id=str(headers.get("id", "?")),
        task=str(headers.get("task", "?")),
        point=summary,
        error=str(headers.get(ERROR_HEADER) or "no error recorded; see the worker log"),
        death=death,
        died_at=died_at if isinstance(died_at, datetime) else None,
        retries=int(headers.get("retries") or 0),
        headers=headers,
        body=body,
    )


def decoded_body(message: Any) -> Any:
    """The body as JSON if it is JSON, else as text."""
    try:
        return message.decode()
    except (ValueError, TypeError, OperationalError):
        raw = message.body
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


class DeadLetterQueue:
    """The dead-letter queue of one work queue."""

    def __init__(self, broker: Broker, topology: Topology) -> None:
        self.broker = broker
        self.topology = topology
        self.queue_name = topology.queue_name
        self.dead_name = topology.dead_name

    def count(self) -> int:
        """How many messages are dead-lettered."""
        with topology_channel(self.broker, self.topology) as (_, channel):
            return int(channel.queue_declare(self.dead_name, passive=True).message_count)

    def peek(self, limit: int | None = None) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first; all stay in the queue."""
        letters: list[DeadLetter] = []
        with topology_channel(self.broker, self.topology) as (connection, _):
            # A channel of its own: closing it returns every unacked message.
            reader = connection.channel()
            while limit is None or len(letters) < limit:
                message = self.topology.dead_queue()(reader).get(no_ack=False)
                if message is None:
                    break
                letters.append(describe(dict(message.headers or {}), decoded_body(message)))
            reader.close()
        return letters

    def find(self, task_id: str) -> DeadLetter | None:
        """The dead letter with this task id, if there is one."""
        return next((letter for letter in self.peek() if letter.task_id == task_id), None)

    def replay(self, limit: int | None = None) -> int:
        """Move up to ``limit`` dead letters back to the work queue; return how many moved."""
        moved = 0
        with topology_channel(self.broker, self.topology) as (connection, _):
            reader = connection.channel()
            publisher = ConfirmingPublisher(connection.clone(), self.topology, window=1)
            publisher.open(retries=1)
            try:
                while limit is None or moved < limit:
                    message = self.topology.dead_queue()(reader).get(no_ack=False)
                    if message is None:
                        break
                    publisher.send(replay_message(message))
                    publisher.flush()
                    message.ack()
                    moved += 1
            finally:
                publisher.close()
                reader.close()
        return moved

    def purge(self) -> int:
        """Delete every dead letter; return how many there were."""
        with topology_channel(self.broker, self.topology) as (_, channel):
            return int(channel.queue_purge(self.dead_name) or 0)


def shard_dead_letters(settings: Settings, shard: int | None = None) -> list[DeadLetterQueue]:
    """The dead-letter queue of each shard, or of shard number ``shard`` only.

    Raises :class:`ConfigError` when ``QUEUE_SHARDS`` has no such shard.
    """
    layout = ShardLayout.of(settings)
    if shard is not None and shard >= layout.count:
        raise ConfigError(
            f"there is no shard {shard}: QUEUE_SHARDS={layout.count} numbers them "
            f"0 to {layout.count - 1}"
        )
    chosen = layout.topologies if shard is None else (layout.topologies[shard],)
    broker = Broker.of(settings)
    return [DeadLetterQueue(broker, topology) for topology in chosen]


def replay_message(message: Any) -> TaskMessage:
    """The message to republish: same task and id, a fresh retry budget, no death record."""
    headers = dict(message.headers or {})
    replays = int(headers.pop("x-telemetry-replays", 0) or 0) + 1
    for name in (
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        ERROR_HEADER,
    ):
        headers.pop(name, None)
    headers.update({"retries": 0, "eta": None, "x-telemetry-replays": replays})
    properties = {
        key: message.properties[key]
        for key in ("correlation_id", "reply_to", "priority")
        if message.properties.get(key) is not None
    }
    properties["content_type"] = message.content_type
    properties["content_encoding"] = message.content_encoding
    return TaskMessage(str(headers.get("id", "")), headers, properties, message.body)


def render(letter: DeadLetter) -> str:
    """Everything about one dead letter, for ``dlq show``."""
    return json.dumps(
        {
            "task_id": letter.task_id,
            "task": letter.task,
            "point": letter.point,
            "error": letter.error,
            "death": letter.death,
            "retries": letter.retries,
            "headers": letter.headers,
            "body": letter.body,
        },
        indent=2,
        default=str,
    )
