"""The collector's Prometheus metrics, and the small functions that record them.

Call the module-level functions from anywhere in the worker; they record into
this process's :class:`CollectorMetrics`:

* :func:`count_stat` mirrors a :class:`~telemetry.stats.Stats` counter (the
  worker subscribes it to ``STATS``, so every ``STATS.incr`` shows here too);
* :func:`count_error` counts one rejected message by its
  :class:`~telemetry.errors.RejectionKind`, a bounded label;
* :func:`observe_db_write` ``(seconds, batch_size)`` records one database
  commit: how long it took and how many points it wrote;
  :func:`db_write_timer` ``(batch_size)`` times a block and records it if the
  block does not raise;
* :func:`observe_latencies` ``(seconds)`` records the ingest latencies of a
  batch's stored points, each now minus the point's timestamp
  (:func:`seconds_since`);
* :func:`in_flight_inc` / :func:`in_flight_dec` ``(n=1)`` move the gauge of
  messages in flight. The worker already counts each task from its start to
  its end (Celery's ``task_prerun`` / ``task_postrun``); code that holds
  messages past that (a batch waiting for its commit) adds them itself.

In a worker whose pool forks (prefork), :func:`enable_multiprocess` runs in
the main process before the pool starts: every process then writes its
values to files in one directory, and :func:`exposition` sums them
(prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

from telemetry.config import set_process_environment
from telemetry.errors import RejectionKind
from telemetry.observe.prometheus_door import (
    observe_all,
    use_multiprocess_values,
    use_process_values,
)

# Where prometheus_client's multiprocess mode keeps its files; the library reads it.
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# Stats counter → (Prometheus counter, help). ``messages_errors`` is not here:
# it is counted with its reason by count_error.
STAT_COUNTERS: dict[str, tuple[str, str]] = {
    "queue_delivered": (
        "telemetry_messages_delivered",
        "Messages this worker took from the queue (each retry copy counts again).",
    ),
    "messages_processed": (
        "telemetry_messages_processed",
        "Messages brought to a final, acked outcome: stored, duplicate or rejected.",
    ),
    "telemetry_stored": ("telemetry_points_stored", "New documents in the telemetry collection."),
    "gpus_stored": ("telemetry_gpus_stored", "GPU upserts acknowledged by MongoDB."),
    "duplicates": ("telemetry_duplicates", "Points that were already stored."),
    "retries": ("telemetry_retries", "Retries scheduled after a storage failure."),
    "dead_lettered": (
        "telemetry_dead_lettered",
        "Messages rejected to the dead-letter queue.",
    ),
}

LATENCY_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
DB_WRITE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def seconds_since(moment: datetime, now: datetime | None = None) -> float:
    """Seconds from ``moment`` to ``now`` (default: this instant), never negative."""
    elapsed = ((now or datetime.now(UTC)) - moment).total_seconds()
    return max(0.0, elapsed)


class CollectorMetrics:
    """Every collector metric, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.counters = {
            stat: Counter(name, help_text, registry=registry)
            for stat, (name, help_text) in STAT_COUNTERS.items()
        }
        self.errors = Counter(
            "telemetry_messages_errors",
            "Invalid messages, recorded in the rejected collection, by reason.",
            ["reason"],
            registry=registry,
        )
        for kind in RejectionKind:
            # Every reason shows from the start, at 0, so rate() has a baseline.
            self.errors.labels(reason=kind.value)
        self.latency = Histogram(
            "telemetry_ingest_latency_seconds",
            "From the point's timestamp (set when it is published) to when it is stored.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.db_write = Histogram(
            "telemetry_db_write_seconds",
            "Time of each database commit that succeeded.",
            buckets=DB_WRITE_BUCKETS_S,
            registry=registry,
        )
        self.batch_size = Histogram(
            "telemetry_db_write_batch_size",
            "Points written by each database commit that succeeded.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batched = Counter(
            "telemetry_messages_batched",
            "Messages settled by a batch commit rather than one task each; stays 0 with "
            "BATCH_SIZE=1, and falling behind processed means batches fall back to tasks.",
            registry=registry,
        )
        self.in_flight = Gauge(
            "telemetry_messages_in_flight",
            "Messages being processed now.",
            registry=registry,
            # Summed over the live processes of a forking pool.
            multiprocess_mode="livesum",
        )


_lock = threading.Lock()
_current = CollectorMetrics(CollectorRegistry(auto_describe=True))
_multiprocess_dir: Path | None = None


def reset() -> CollectorMetrics:
    """Start again from zero in a fresh registry (for tests); return the new metrics."""
    global _current
    with _lock:
        _current = CollectorMetrics(CollectorRegistry(auto_describe=True))
        return _current


def count_stat(name: str, by: int = 1) -> None:
    """Add ``by`` to the counter that mirrors the statistics counter ``name``, if there is one."""
    counter = _current.counters.get(name)
    if counter is not None:
        counter.inc(by)


def count_error(kind: RejectionKind) -> None:
    """Count one invalid message under its kind."""
    _current.errors.labels(reason=kind.value).inc()


def observe_latencies(seconds: Sequence[float]) -> None:
    """Record the ingest latencies of stored points, as observing each in turn would,
    a batch at once (:func:`~telemetry.observe.prometheus_door.observe_all`)."""
    if not seconds:
        return
    observe_all(_current.latency, seconds)


def observe_db_write(seconds: float, batch_size: int) -> None:
    """Record one successful database commit of ``batch_size`` points taking ``seconds``."""
    _current.db_write.observe(seconds)
    _current.batch_size.observe(batch_size)


@contextmanager
def db_write_timer(batch_size: int) -> Iterator[None]:
    """Time the block as one commit of ``batch_size`` points; nothing is recorded if it raises."""
    started = time.perf_counter()
    yield
    observe_db_write(time.perf_counter() - started, batch_size)


def count_batched(n: int) -> None:
    """``n`` messages were settled by one batch commit."""
    _current.batched.inc(n)


def in_flight_inc(n: int = 1) -> None:
    """``n`` more messages are being processed."""
    _current.in_flight.inc(n)


def in_flight_dec(n: int = 1) -> None:
    """``n`` messages are done with."""
    _current.in_flight.dec(n)


def enable_multiprocess(directory: Path) -> None:
    """Keep every process's values in files under ``directory``, summed when scraped.

    Call it in the main process before the pool forks; the directory should be
    fresh and empty. prometheus_client picks its value class when it is first
    imported, from ``PROMETHEUS_MULTIPROC_DIR``; here the worker decides only
    once it knows its pool, so the class is chosen again with the library's
    own factory, and the metrics are made anew with it.
    """
    global _current, _multiprocess_dir
    with _lock:
        set_process_environment(MULTIPROC_DIR_VARIABLE, str(directory))
        use_multiprocess_values()
        _multiprocess_dir = directory
        # Not the registry scraped: that one reads the files (see exposition).
        _current = CollectorMetrics(CollectorRegistry(auto_describe=True))


def disable_multiprocess() -> None:
    """Back to values in this process only; the files and their directory are deleted."""
    global _current, _multiprocess_dir
    with _lock:
        if _multiprocess_dir is None:
            return
        use_process_values()
        shutil.rmtree(_multiprocess_dir, ignore_errors=True)
        set_process_environment(MULTIPROC_DIR_VARIABLE, None)
        _multiprocess_dir = None
        _current = CollectorMetrics(CollectorRegistry(auto_describe=True))


def multiprocess_dir() -> Path | None:
    """The directory of the per-process files, or None outside multiprocess mode."""
    return _multiprocess_dir


def mark_process_dead(pid: int) -> None:
    """Drop an exited pool process's in-flight gauge (its counters stay in the sums)."""
    if _multiprocess_dir is not None:
        multiprocess.mark_process_dead(pid, str(_multiprocess_dir))  # type: ignore[no-untyped-call]


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The scrape body and its content type, in the format the ``Accept`` header asks for."""
    encoder, content_type = choose_encoder(accept or "")
    if _multiprocess_dir is None:
        return encoder(_current.registry), content_type
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(_multiprocess_dir))  # type: ignore[no-untyped-call]
    return encoder(registry), content_type
