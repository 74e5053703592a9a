"""What a worker process runs with, built once when it starts and passed down.

A :class:`WorkerContext` holds the settings, the store, the GPU cache, the
recorder (statistics and metrics) and the ingest task's retry policy.
``celery worker`` builds one from its flags, environment and the task's
options (:func:`telemetry.worker.app.apply_settings`), and each
process of a forking pool builds its own from the same settings when it
starts (Celery's ``worker_process_init``): pymongo clients are not fork-safe.

Celery hands our code its objects, not ours: a strategy gets the app, a task
and a consumer know their app. So the context rides on the app
(:func:`attach_context`) and each entry point takes it from there
(:func:`context_of`), then passes it on as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from telemetry.broker.retry_policy import RetryPolicy
from telemetry.config import Settings
from telemetry.store.gpucache import GpuCache
from telemetry.store.lazy import LazyStore
from telemetry.store.mongo import open_store
from telemetry.store.port import TelemetryWrites
from telemetry.worker.recorder import Recorder

# The app attribute the context rides on.
CONTEXT_ATTRIBUTE = "telemetry_context"


@dataclass
class WorkerContext:
    """One worker process's settings, store, GPU cache, recorder and retry policy."""

    settings: Settings
    stores: LazyStore
    recorder: Recorder
    gpu_cache: GpuCache
    # Resolved once, at start (telemetry.worker.retry_options): the retry queues the
    # worker declares and the retries its tasks schedule follow the same policy.
    retry_policy: RetryPolicy

    @classmethod
    def start(cls, settings: Settings, retry_policy: RetryPolicy) -> WorkerContext:
        """A context for ``settings``: the store connects on first use, counters at zero."""
        return cls(
            settings,
            LazyStore(lambda: open_store(settings)),
            Recorder.fresh(),
            GpuCache(settings.gpu_last_seen_lag_s),
            retry_policy,
        )

    def store(self) -> TelemetryWrites:
        """The process's store, connected on first use."""
        return self.stores.get()

    def for_pool_process(self) -> WorkerContext:
        """A context of its own for a forked pool process, from the same settings and policy."""
        return WorkerContext.start(self.settings, self.retry_policy)

    def close(self) -> None:
        """Close the store's client, if it was ever connected."""
        self.stores.reset()


def attach_context(app: Any, context: WorkerContext) -> None:
    """Make ``context`` the one the app's tasks, strategies and consumer run with."""
    setattr(app, CONTEXT_ATTRIBUTE, context)


def context_of(app: Any) -> WorkerContext:
    """The context attached to ``app``; raises if no worker started on it."""
    context: WorkerContext | None = getattr(app, CONTEXT_ATTRIBUTE, None)
    if context is None:
        raise RuntimeError(f"no worker context on app {getattr(app, 'main', app)!r}")
    return context
