"""Collector counters and their periodic JSON report.

The worker runs the threads pool, so one :class:`Stats` per process holds the
totals of every task that process ran.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import TextIO

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

    def incr(self, *names: str, by: int = 1) -> None:
        """Add ``by`` to each named counter."""
        with self._lock:
            for name in names:
                if name not in self._values:
                    raise KeyError(f"unknown counter {name!r}")
                self._values[name] += by

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of every counter."""
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        """Set every counter back to zero (for tests and the embedded demo)."""
        with self._lock:
            self._values = dict.fromkeys(COUNTERS, 0)


def stats_line(stats: Stats, instance_id: str, component: str = "collector") -> str:
    """The JSON log line: message, component, instance and every counter."""
    body: dict[str, object] = {
        "message": "Collector statistics",
        "component": component,
        "instance_id": instance_id,
    }
    body.update(stats.snapshot())
    return json.dumps(body, sort_keys=False)


class StatsReporter:
    """Logs :func:`stats_line` every ``interval_s`` seconds, and once more on :meth:`stop`."""

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
        self._emit = emit or logger.info
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
        self._emit(stats_line(self._stats, self._instance_id))

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self._emit(stats_line(self._stats, self._instance_id))


def log_stats_as_bare_json(stream: TextIO | None = None) -> None:
    """Statistics lines go out without a log prefix, so log shippers can parse them as JSON.

    The default stream is the real stderr: Celery swaps ``sys.stderr`` for a
    logging proxy in workers.
    """
    if logger.handlers:
        return
    handler = logging.StreamHandler(stream or sys.__stderr__)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)


STATS = Stats()
"""The counters of this process."""
