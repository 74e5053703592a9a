"""Collector counters and their periodic JSON report.

Each worker process keeps one :class:`Stats` in its worker context
(:mod:`telemetry.worker.context`), holding the totals of every message that
process handled; the worker's recorder is the one writer.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Mapping


class Count(enum.StrEnum):
    """The collector's counters, by the name the statistics line gives each."""

    MESSAGES_PROCESSED = "messages_processed"
    MESSAGES_ERRORS = "messages_errors"
    GPUS_STORED = "gpus_stored"
    TELEMETRY_STORED = "telemetry_stored"
    QUEUE_DELIVERED = "queue_delivered"
    DUPLICATES = "duplicates"
    RETRIES = "retries"
    DEAD_LETTERED = "dead_lettered"


COUNTERS = tuple(count.value for count in Count)

logger = logging.getLogger("telemetry.stats")


class Stats:
    """Thread-safe counters, one per :class:`Count`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(Count, 0)

    def incr(self, name: Count) -> None:
        """Add one to the counter ``name``."""
        with self._lock:
            self._values[name] += 1

    def add(self, counts: Mapping[Count, int]) -> None:
        """Add each of ``counts`` to its counter, all under one lock."""
        with self._lock:
            for name, by in counts.items():
                self._values[name] += by

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of every counter, by its name."""
        with self._lock:
            return {name.value: value for name, value in self._values.items()}


STATS_MESSAGE = "Collector statistics"


def stats_fields(stats: Stats, instance_id: str) -> dict[str, object]:
    """Component, instance and every counter: the fields of a statistics log line."""
    body: dict[str, object] = {"component": "collector", "instance_id": instance_id}
    body.update(stats.snapshot())
    return body


class StatsReporter:
    """Logs the statistics every ``interval_s`` seconds, and once more on :meth:`stop`.

    Each report is one log record with the counters as extra fields, so the
    JSON log line carries them as top-level fields.
    """

    def __init__(self, stats: Stats, instance_id: str, interval_s: float) -> None:
        self._stats = stats
        self._instance_id = instance_id
        self._interval_s = interval_s
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
        logger.info(STATS_MESSAGE, extra=stats_fields(self._stats, self._instance_id))
