"""The collector's Celery app with one extra task that does nothing but count.

``celery -A benchmarks.noop worker`` runs it with the same pool, concurrency
and settings as the real worker, which gives the per-task ceiling.
"""

from __future__ import annotations

from typing import Any

from telemetry.observe.stats import Count
from telemetry.worker.app import app
from telemetry.worker.context import context_of

NOOP_TASK = "bench.noop"


@app.task(name=NOOP_TASK, bind=True)  # type: ignore[untyped-decorator]
def noop(self: Any, /, *args: Any, **kwargs: Any) -> None:
    """Count the message and return."""
    context_of(self.app).recorder.stats.incr(Count.MESSAGES_PROCESSED)


__all__ = ["app", "noop"]
