"""The publisher's confirm bookkeeping: what RabbitMQ's acks and nacks settle."""

from __future__ import annotations

from kombu import Connection

from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.topology import Topology
from telemetry.config import load_settings


def publisher_with_pending(tags: range) -> ConfirmingPublisher:
    publisher = ConfirmingPublisher(
        Connection("memory://localhost/"), Topology.of(load_settings(env={}))
    )
    for tag in tags:
        publisher._pending[tag] = build_task_message({"gpu_uuid": f"GPU-{tag}"}, None)
    return publisher


def test_a_multiple_ack_settles_every_tag_up_to_it_and_no_further() -> None:
    publisher = publisher_with_pending(range(1, 7))
    publisher._on_ack(3, multiple=True)
    assert (sorted(publisher._pending), publisher.confirmed) == ([4, 5, 6], 3)
    publisher._on_ack(5, multiple=False)
    assert (sorted(publisher._pending), publisher.confirmed) == ([4, 6], 4)
    publisher._on_ack(6, multiple=True)
    assert (publisher._pending, publisher.confirmed) == ({}, 6)


def test_a_multiple_nack_queues_those_messages_to_be_sent_again() -> None:
    publisher = publisher_with_pending(range(1, 5))
    refused = [publisher._pending[1], publisher._pending[2]]
    publisher._on_nack(2, multiple=True)
    assert sorted(publisher._pending) == [3, 4]
    assert publisher._nacked == refused
    assert publisher.confirmed == 0
