"""A per-worker memory of what each GPU's record already says, to skip needless upserts.

With DCGM every GPU reports ten metrics at the same instant, so nine of ten
GPU upserts would change nothing. A batch's merged update for a GPU is
skipped when the record is known to hold its metadata already and its time
span lies within ``lag_s`` of the ``last_seen`` written. So
``gpus.last_seen`` trails the newest point by at most ``lag_s`` seconds of
point time; ``first_seen`` and the metadata are always exact. Entries are
only remembered after a write succeeded, and are forgotten after ``ttl_s``,
so a record lost on the server is written again. A GPU's MIG instances follow
the same rule, each on its own: an instance not yet written, a profile that
differs, or a time outside the instance's written span (with the same lag)
needs a write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from telemetry.store.mongo import GpuUpdate, InstanceSpan


@dataclass
class _Entry:
    fields: dict[str, Any]
    first_seen: datetime
    last_seen: datetime
    written_at: float = field(default=0.0)
    instances: dict[str, InstanceSpan] | None = None


class GpuCache:
    """Thread-safe; one per worker process."""

    def __init__(
        self, lag_s: float, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lag = timedelta(seconds=lag_s)
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def needs_write(self, update: GpuUpdate) -> bool:
        """Whether this GPU upsert would change (or confirm) anything."""
        with self._lock:
            entry = self._entries.get(update.gpu_uuid)
            if entry is None or self._clock() - entry.written_at > self._ttl_s:
                return True
            if not update.fields.items() <= entry.fields.items():  # a field new or changed
                return True
            if (
                update.first_seen < entry.first_seen
                or update.last_seen > entry.last_seen + self._lag
            ):
                return True
            return update.instances is not None and self._instances_change(entry, update.instances)

    def _instances_change(self, entry: _Entry, instances: dict[str, InstanceSpan]) -> bool:
        known = entry.instances or {}
        for instance, seen in instances.items():
            written = known.get(instance)
            if (
                written is None
                or (seen.profile is not None and seen.profile != written.profile)
                or seen.first_seen < written.first_seen
                or seen.last_seen > written.last_seen + self._lag
            ):
                return True
        return False

    def remember(self, update: GpuUpdate) -> None:
        """Record what a successful upsert wrote."""
        with self._lock:
            entry = self._entries.get(update.gpu_uuid)
            if entry is None:
                entry = _Entry({}, update.first_seen, update.last_seen)
                self._entries[update.gpu_uuid] = entry
            entry.fields.update(update.fields)
            entry.first_seen = min(entry.first_seen, update.first_seen)
            entry.last_seen = max(entry.last_seen, update.last_seen)
            entry.written_at = self._clock()
            if update.instances is not None:
                if entry.instances is None:
                    entry.instances = {}
                for instance, seen in update.instances.items():
                    written = entry.instances.get(instance)
                    if written is None:
                        # A copy: the update's spans are the batch's, not the cache's.
                        entry.instances[instance] = InstanceSpan(
                            seen.profile, seen.first_seen, seen.last_seen
                        )
                    else:
                        written.widen(seen.profile, seen.first_seen)
                        written.widen(None, seen.last_seen)
