"""This process's settings and MongoDB store, set once when a worker starts."""

from __future__ import annotations

import threading

from telemetry.config import Settings, load_settings
from telemetry.store.gpucache import GpuCache
from telemetry.store.lazy import LazyStore
from telemetry.store.mongo import open_store
from telemetry.store.port import TelemetryWrites

_lock = threading.Lock()
_settings: Settings | None = None
_gpu_cache: GpuCache | None = None


def current_settings() -> Settings:
    """The settings this process runs with; read from the environment if never set."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = load_settings()
        return _settings


def configure(settings: Settings) -> None:
    """Adopt ``settings`` and make the next store (and GPU cache) from them."""
    global _settings, _gpu_cache
    with _lock:
        _settings = settings
        _gpu_cache = None
    STORE.reset(lambda: open_store(settings))


def gpu_cache() -> GpuCache:
    """The process's memory of GPU records, made on first use."""
    global _gpu_cache
    settings = current_settings()
    with _lock:
        if _gpu_cache is None:
            _gpu_cache = GpuCache(settings.gpu_last_seen_lag_s)
        return _gpu_cache


def store() -> TelemetryWrites:
    """The process's store, connected on first use."""
    return STORE.get()


STORE = LazyStore(lambda: open_store(current_settings()))
