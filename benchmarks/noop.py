"""The collector's Celery app with one extra task that does nothing but count.

``celery -A benchmarks.noop worker`` runs it with the same pool, concurrency
and settings as the real worker, which gives the per-task ceiling.
"""

from __future__ import annotations

from typing import Any

from telemetry.observe.stats import STATS
from telemetry.worker.app import app

NOOP_TASK = "bench.noop"


@app.task(name=NOOP_TASK)  # type: ignore[untyped-decorator]
def noop(*args: Any, **kwargs: Any) -> None:
    """Count the message and return."""
    STATS.incr("messages_processed")


__all__ = ["app", "noop"]
