"""Collector counters and their periodic JSON report.

The worker runs the threads pool, so one :class:`Stats` per process holds the
totals of every task that process ran.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

COUNTERS = (
    "messages_processed",
    "messages_errors",
    "gpus_stored",
    "telemetry_stored",
    "queue_delivered",
    "duplicates",
    "retries",
    "dead_lettered",
)

logger = logging.getLogger("telemetry.stats")


class Stats:
    """Thread-safe counters named in :data:`COUNTERS`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)
        # Replaced, never changed in place, so incr can call them outside the lock
        # without copying the list on every call (it runs once per message).
        self._listeners: tuple[Callable[[str, int], None], ...] = ()

    def subscribe(self, listener: Callable[[str, int], None]) -> None:
        """Call ``listener(name, by)`` after each counter :meth:`incr` adds to (once per listener).

        The worker mirrors its counters into Prometheus this way.
        """
        with self._lock:
            if listener not in self._listeners:
                self._listeners = (*self._listeners, listener)

    def incr(self, *names: str, by: int = 1) -> None:
        """Add ``by`` to each named counter."""
        with self._lock:
            for name in names:
                if name not in self._values:
                    raise KeyError(f"unknown counter {name!r}")
                self._values[name] += by
            listeners = self._listeners
        for listener in listeners:
            for name in names:
                listener(name, by)

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of every counter."""
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        """Set every counter back to zero (for tests and the embedded demo)."""
        with self._lock:
            self._values = dict.fromkeys(COUNTERS, 0)


STATS_MESSAGE = "Collector statistics"


def stats_fields(stats: Stats, instance_id: str, component: str = "collector") -> dict[str, object]:
    """Component, instance and every counter: the fields of a statistics log line."""
    body: dict[str, object] = {"component": component, "instance_id": instance_id}
    body.update(stats.snapshot())
    return body


def stats_line(stats: Stats, instance_id: str, component: str = "collector") -> str:
    """The statistics as one JSON object: message, component, instance and every counter."""
    return json.dumps({"message": STATS_MESSAGE, **stats_fields(stats, instance_id, component)})


class StatsReporter:
    """Logs the statistics every ``interval_s`` seconds, and once more on :meth:`stop`.

    Each report is one log record with the counters as extra fields, so the
    JSON log line carries them as top-level fields. ``emit``, when given,
    receives :func:`stats_line` instead.
    """

    def __init__(
        self,
        stats: Stats,
        instance_id: str,
        interval_s: float,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self._stats = stats
        self._instance_id = instance_id
        self._interval_s = interval_s
        self._emit = emit
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats-reporter", daemon=True)

    def start(self) -> None:
        """Begin reporting in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the periodic reports and emit the final one."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._report()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self._report()

    def _report(self) -> None:
        if self._emit is not None:
            self._emit(stats_line(self._stats, self._instance_id))
        else:
            logger.info(STATS_MESSAGE, extra=stats_fields(self._stats, self._instance_id))


STATS = Stats()
"""The counters of this process."""
