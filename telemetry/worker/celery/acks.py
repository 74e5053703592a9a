"""Multiple-ack bookkeeping: a batch of deliveries settled with one frame where it is safe."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from telemetry.worker.celery.message import ReceivedMessage

logger = logging.getLogger("telemetry.celery")


class KombuMessage(ReceivedMessage, Protocol):
    """A received message with kombu's field that says whether it is settled (``"ACK"``
    once acked), which a multiple-ack must set on the messages it settled."""

    _state: str


class Unsettled:
    """The task channel's deliveries not yet settled, in delivery order; consumer thread only.

    Acking each message of a batch costs a frame and a socket write apiece.
    :meth:`ack` settles a batch with one multiple-ack instead: RabbitMQ's
    ``multiple`` acks every delivery up to a tag, so it is used only as far
    as every earlier delivery still unsettled on the channel belongs to the
    batch; the rest are acked one by one.
    """

    SWEEP_AT = 10_000

    def __init__(self, connection_errors: tuple[type[BaseException], ...]) -> None:
        self._connection_errors = connection_errors
        self._channel: object = None
        self._open: deque[KombuMessage] = deque()  # messages in delivery order

    def arrived(self, message: KombuMessage) -> None:
        """Note a delivery; a new channel (after a reconnect) starts a new list."""
        if message.channel is not self._channel:
            self._channel, self._open = message.channel, deque()
        front = self._open
        front.append(message)
        # Settled elsewhere (Celery's per-task path, a bad message): forget them as soon
        # as nothing unsettled is before them, so the list stays about a prefetch long.
        while front and front[0].acknowledged:
            front.popleft()
        if len(front) > self.SWEEP_AT:
            # Behind one message held for long (a hung task, say): sweep the settled out.
            self._open = deque(m for m in self._open if not m.acknowledged)

    def ack(self, messages: Sequence[KombuMessage]) -> None:
        """Ack ``messages``: one multiple-ack for the leading run, single acks for the rest."""
        channel = self._channel
        wanted = {id(m) for m in messages if m.channel is channel and not m.acknowledged}
        front = self._open
        run: list[KombuMessage] = []
        while front:
            message = front[0]
            if id(message) in wanted:
                run.append(message)
            elif not message.acknowledged:
                break  # held by someone else: a multiple-ack past it would settle it too
            front.popleft()
        try:
            if run:
                run[-1].ack(multiple=True)
                for message in run[:-1]:
                    message._state = "ACK"  # settled by the multiple-ack above
            # Behind a held one, or of an older channel: one by one. Those still
            # listed leave the front once it reaches them.
            for message in messages:
                if not message.acknowledged:
                    message.ack()
        except self._connection_errors as exc:
            # The channel is gone: RabbitMQ redelivers whatever was not acked.
            logger.error("Could not ack %d messages: %r", len(messages), exc)
