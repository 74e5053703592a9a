"""This process's settings and MongoDB store, set once when a worker starts."""

from __future__ import annotations

import threading

from telemetry.config import Settings, load_settings
from telemetry.storage import LazyStore, MongoTelemetryStore, open_store

_lock = threading.Lock()
_settings: Settings | None = None


def current_settings() -> Settings:
    """The settings this process runs with; read from the environment if never set."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = load_settings()
        return _settings


def configure(settings: Settings) -> None:
    """Adopt ``settings`` and make the next store from them."""
    global _settings
    with _lock:
        _settings = settings
    STORE.reset(lambda: open_store(settings))


def store() -> MongoTelemetryStore:
    """The process's store, connected on first use."""
    return STORE.get()


STORE = LazyStore(lambda: open_store(current_settings()))
