"""Task events for a whole batch, sent as one event message per batch.

Flower (through Celery's event receiver) accepts a message whose body is a
list of events: Celery itself sends ``task.multi`` messages of up to 24
buffered events. A batch's events go out the same way, but as one message,
which costs one JSON encoding and one publish per batch instead of one per
24 tasks. Events are advisory: a failure to send them is logged, never
raised into the ingest path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from celery.events import Event
from celery.utils.time import utcoffset

logger = logging.getLogger("telemetry.taskevents")

ROUTING_KEY = "task.multi"


class BatchEvents:
    """Publishes lists of task events through a worker's event dispatcher."""

    def __init__(self, dispatcher: Any) -> None:
        self._dispatcher = dispatcher

    @property
    def enabled(self) -> bool:
        """Whether the worker sends task events at all (``-E``, on by default here)."""
        return bool(self._dispatcher is not None and self._dispatcher.enabled)

    def send(self, each: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """One event per (type, fields), in order, all in one message."""
        if not self.enabled:
            return
        dispatcher = self._dispatcher
        offset = utcoffset()
        events = [
            Event(
                type_,
                hostname=dispatcher.hostname,
                utcoffset=offset,
                pid=dispatcher.pid,
                clock=dispatcher.clock.forward(),
                **fields,
            )
            for type_, fields in each
        ]
        if not events:
            return
        try:
            with dispatcher.mutex:
                producer = dispatcher.producer
                if producer is None:
                    return
                producer.publish(
                    events,
                    routing_key=ROUTING_KEY,
                    exchange=dispatcher.exchange.name,
                    declare=[dispatcher.exchange],
                    serializer=dispatcher.serializer,
                    headers=dispatcher.headers,
                    delivery_mode=dispatcher.delivery_mode,
                )
        except Exception as exc:  # advisory: never fail the ingest path over an event
            logger.warning("Could not send %d task events: %s", len(events), exc)
