"""One store per process, made on first use."""

from __future__ import annotations

import threading
from collections.abc import Callable

from telemetry.store.port import TelemetryWrites


class LazyStore:
    """One store per process, made on first use: pymongo clients are not fork-safe,
    so a pool process makes its own after the fork."""

    def __init__(self, factory: Callable[[], TelemetryWrites]) -> None:
        self._factory = factory
        self._store: TelemetryWrites | None = None
        self._lock = threading.Lock()

    def get(self) -> TelemetryWrites:
        """The store, created the first time it is asked for."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = self._factory()
        return self._store

    def reset(self, factory: Callable[[], TelemetryWrites] | None = None) -> None:
        """Forget the store, closing it (and optionally change how the next one is made)."""
        with self._lock:
            if self._store is not None:
                self._store.close()
            self._store = None
            if factory is not None:
                self._factory = factory
