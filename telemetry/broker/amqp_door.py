"""The broker layer's one door to py-amqp itself, beneath kombu: a new task message
published straight on py-amqp's channel.

kombu's ``Producer`` (serializer registry, declare check, message
preparation) is general machinery every message would pass through
(docs/performance.md has its cost). A new message to RabbitMQ needs none of it: its body
is JSON and its properties are known, so it goes to py-amqp's
``Channel.basic_publish`` with the properties the Producer would give it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import amqp

from telemetry.broker.messages import TaskMessage

JsonPublish = Callable[[TaskMessage, str, str], None]
"""Publishes one task message, its body encoded as JSON (UTF-8), to an exchange with a
routing key."""


def json_publish(channel: object, delivery_mode: int) -> JsonPublish | None:
    """A publisher of JSON task messages straight on ``channel``; None unless it is py-amqp's
    (the demo's in-memory broker has kombu's own channel)."""
    if not isinstance(channel, amqp.Channel):
        return None
    basic_publish = channel.basic_publish

    def publish(message: TaskMessage, exchange: str, routing_key: str) -> None:
        basic_publish(
            amqp.Message(
                json.dumps(message.body),
                content_type="application/json",
                content_encoding="utf-8",
                application_headers=message.headers,
                delivery_mode=delivery_mode,
                **message.properties,
            ),
            exchange=exchange,
            routing_key=routing_key,
        )

    return publish
