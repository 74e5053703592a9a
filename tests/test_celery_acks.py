"""Multiple-ack bookkeeping (telemetry/worker/celery/acks.py): a batch in one frame, safely."""

from __future__ import annotations

from typing import Any

from telemetry.worker.celery.acks import Unsettled


class FakeChannel:
    """Records the acks sent on it."""

    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []


class FakeDelivery:
    """What Unsettled reads and calls on a kombu message."""

    def __init__(self, channel: FakeChannel, tag: int) -> None:
        self.channel = channel
        self.delivery_tag = tag
        self._state = "RECEIVED"

    @property
    def acknowledged(self) -> bool:
        return self._state != "RECEIVED"

    def ack(self, multiple: bool = False) -> None:
        assert not self.acknowledged
        self.channel.acks.append((self.delivery_tag, multiple))
        self._state = "ACK"


def delivered_on(channel: FakeChannel, tags: range) -> tuple[Unsettled, list[Any]]:
    unsettled = Unsettled(connection_errors=(OSError,))
    messages = [FakeDelivery(channel, tag) for tag in tags]
    for message in messages:
        unsettled.arrived(message)
    return unsettled, messages


def test_a_batch_at_the_front_is_settled_with_one_multiple_ack() -> None:
    channel = FakeChannel()
    unsettled, messages = delivered_on(channel, range(1, 11))
    unsettled.ack(messages[:6])
    assert channel.acks == [(6, True)]
    assert all(message.acknowledged for message in messages[:6])
    assert not any(message.acknowledged for message in messages[6:])


def test_a_multiple_ack_never_covers_a_delivery_held_elsewhere() -> None:
    channel = FakeChannel()
    unsettled, messages = delivered_on(channel, range(1, 11))
    messages[0].ack()  # settled by Celery's own path: no obstacle
    channel.acks.clear()
    # tag 4 is still held (a quarantined message, say): the run stops before it
    unsettled.ack([messages[i] for i in (1, 2, 4, 5)])
    assert channel.acks == [(3, True), (5, False), (6, False)]
    assert not messages[3].acknowledged
    # once tag 4 is settled too, the next batch runs from the front again
    unsettled.ack([messages[3]])
    unsettled.ack(messages[6:])
    assert channel.acks[-2:] == [(4, True), (10, True)]


def test_a_new_channel_starts_a_new_list() -> None:
    old, new = FakeChannel(), FakeChannel()
    unsettled, _ = delivered_on(old, range(1, 4))
    fresh = [FakeDelivery(new, tag) for tag in (1, 2)]
    for message in fresh:
        unsettled.arrived(message)
    unsettled.ack(fresh)
    assert new.acks == [(2, True)]
    assert old.acks == []
