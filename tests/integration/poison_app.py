"""The collector's worker, whose handling of one point kills the whole process.

``celery -A tests.integration.poison_app worker`` is the real worker in every
other way. It stands in for a poison message: one that crashes the worker
(a native library fault, an out-of-memory kill) every time it is handled,
which no exception handler can turn into a rejection.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from telemetry.store.mongo import InsertOutcome, MongoTelemetryStore
from telemetry.worker.app import app

POISON_GPU = "GPU-POISON"
CRASH_EXIT_CODE = 70

_insert_points = MongoTelemetryStore.insert_points


def insert_points_or_die(
    self: MongoTelemetryStore, documents: Sequence[dict[str, Any]]
) -> list[InsertOutcome]:
    """Insert as the store does, unless the poison is among the points: then die at once."""
    if any(document["gpu_uuid"] == POISON_GPU for document in documents):
        os._exit(CRASH_EXIT_CODE)
    return _insert_points(self, documents)


MongoTelemetryStore.insert_points = insert_points_or_die  # type: ignore[method-assign]

__all__ = ["app"]
