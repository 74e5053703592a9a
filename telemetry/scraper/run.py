"""The scraper: dcgm-exporter endpoints in, one confirmed ``telemetry.ingest`` task per sample out.

Each target is scraped every interval, at a stable offset within it. The
fetch and the parse run on a bounded pool of threads; the main thread alone
publishes, through the same confirming publisher and backpressure as
``telemetry stream``, so a point counts as published only once the broker
has confirmed it.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from telemetry.broker.backlog import Backpressure
from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import Publisher
from telemetry.dcgm_exporter import points_from_samples
from telemetry.exposition import parse_exposition
from telemetry.scraper.fetch import FailureReason, ScrapeFailed, fetch_metrics
from telemetry.scraper.health import TargetHealth
from telemetry.scraper.metrics import ScraperMetrics
from telemetry.scraper.targets import Shard, Target, TargetsFile, merge_targets

logger = logging.getLogger("telemetry.scraper.run")
stats_logger = logging.getLogger("telemetry.stats")

STATS_MESSAGE = "Scraper statistics"
USER_AGENT = "telemetry-scraper/0.1"

Fetch = Callable[[str, float, int, str], bytes]
"""``(url, timeout_s, max_bytes, user_agent)`` → body, or :class:`ScrapeFailed`."""


@dataclass(frozen=True)
class ScrapeOptions:
    """What to scrape, how often, and how much to take."""

    targets: Sequence[Target] = ()
    targets_file: Path | None = None
    interval_s: float = 15.0
    timeout_s: float = 10.0
    concurrency: int = 16
    max_body_bytes: int = 10 * 1024 * 1024
    frozen_after: int = 4
    honor_timestamps: bool = True
    shard: Shard | None = None
    scrapes: int | None = None
    instance_id: str = "scraper"
    max_backlog: int = 100_000
    stats_interval_s: float = 10.0
    targets_check_s: float = 1.0


@dataclass
class ScrapeReport:
    """What a run did; ``confirmed`` is what the broker accepted."""

    targets: int = 0
    rounds: int = 0
    scrapes: int = 0
    failed_scrapes: int = 0
    samples: int = 0
    published: int = 0
    confirmed: int = 0
    overruns: int = 0
    backpressure_pauses: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    stopped: bool = False

    def stats_fields(self, instance_id: str) -> dict[str, object]:
        """The fields of the periodic statistics log line."""
        return {
            "component": "scraper",
            "instance_id": instance_id,
            "targets": self.targets,
            "scrapes": self.scrapes,
            "failed_scrapes": self.failed_scrapes,
            "published": self.published,
            "confirmed": self.confirmed,
        }


@dataclass(frozen=True)
class ScrapeResult:
    """One scrape of one target: its points, or why there are none."""

    target: Target
    duration_s: float
    finished_at_s: float
    body: bytes = b""
    points: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    samples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    failure: ScrapeFailed | None = None


def scrape_target(target: Target, options: ScrapeOptions, fetch: Fetch) -> ScrapeResult:
    """Fetch and parse one target; never raises for what the target sends."""
    started = time.monotonic()
    scraped_at = datetime.now(UTC)
    try:
        body = fetch(target.url, options.timeout_s, options.max_body_bytes, USER_AGENT)
    except ScrapeFailed as exc:
        return ScrapeResult(target, time.monotonic() - started, time.time(), failure=exc)
    exposition = parse_exposition(body.decode("utf-8", errors="replace"))
    parsed = points_from_samples(
        exposition, scraped_at, target.labels, honor_timestamps=options.honor_timestamps
    )
    return ScrapeResult(
        target,
        time.monotonic() - started,
        time.time(),
        body,
        parsed.points,
        len(exposition.samples),
        parsed.skipped,
    )


@dataclass
class _Slot:
    """A target's place in the schedule."""

    target: Target
    health: TargetHealth
    next_due: float
    done: int = 0
    in_flight: bool = False


class Scraper:
    """Schedules scrapes, publishes their points and keeps each target's health."""

    def __init__(
        self,
        options: ScrapeOptions,
        metrics: ScraperMetrics | None = None,
        stop: threading.Event | None = None,
        fetch: Fetch = fetch_metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._options = options
        self._metrics = metrics or ScraperMetrics()
        self._stop = stop or threading.Event()
        self._publisher: Publisher | None = None
        self._backpressure: Backpressure | None = None
        self._fetch = fetch
        self._clock = clock
        self._file = TargetsFile(options.targets_file) if options.targets_file else None
        self._slots: dict[str, _Slot] = {}
        self._results: queue.Queue[ScrapeResult] = queue.Queue()
        self._finished = threading.Event()
        self._status: dict[str, object] = {}
        self._next_file_check = 0.0
        self._next_stats = 0.0
        self.report = ScrapeReport()

    def load_targets(self) -> list[Target]:
        """Read the targets file now; raises :class:`ConfigError` if it is bad."""
        file_targets = self._file.load() if self._file is not None else []
        return merge_targets(self._options.targets, file_targets)

    def status(self) -> dict[str, object]:
        """A summary for ``telemetry stats``; safe to call from any thread."""
        return dict(self._status)

    def run(
        self,
        publisher: Publisher,
        targets: Sequence[Target] | None = None,
        backlog: Callable[[], int] | None = None,
    ) -> ScrapeReport:
        """Scrape until ``scrapes`` rounds are done or ``stop`` is set; then settle.

        ``targets`` are the ones :meth:`load_targets` returned (read now when
        not given); ``backlog`` reads the work queue's depth for backpressure.
        """
        self._publisher = publisher
        if backlog is not None:
            self._backpressure = Backpressure(backlog, self._options.max_backlog, self._stop)
        report = self.report
        started = self._clock()
        self._apply(self.load_targets() if targets is None else targets, started)
        self._next_file_check = started + self._options.targets_check_s
        self._next_stats = started + self._options.stats_interval_s
        with ThreadPoolExecutor(self._options.concurrency, "scrape") as pool:
            while True:
                now = self._clock()
                if self._stop.is_set():
                    report.stopped = True
                else:
                    self._reload_targets(now)
                    self._submit_due(pool, now)
                self._settle_results()
                self._log_stats(now)
                in_flight = any(slot.in_flight for slot in self._slots.values())
                if not in_flight and (report.stopped or self._all_done()):
                    break
                # Short waits: a stop request must be noticed without a scrape finishing.
                self._finished.wait(min(max(0.0, self._next_wake() - self._clock()), 0.2))
                self._finished.clear()
        self._settle_results()
        report.rounds = min((slot.done for slot in self._slots.values()), default=0)
        report.elapsed_s = self._clock() - started
        return report

    def _reload_targets(self, now: float) -> None:
        if self._file is None or now < self._next_file_check:
            return
        changed = self._file.changed()
        if changed is not None:
            self._apply(merge_targets(self._options.targets, changed), now)
        self._next_file_check = now + self._options.targets_check_s

    def _log_stats(self, now: float) -> None:
        if now >= self._next_stats:
            stats_logger.info(
                STATS_MESSAGE, extra=self.report.stats_fields(self._options.instance_id)
            )
            self._next_stats = now + self._options.stats_interval_s

    def _next_wake(self) -> float:
        """When the loop has something to do: a scrape due, a file check or a stats line."""
        due = [slot.next_due for slot in self._slots.values() if not self._spent(slot)]
        if self._file is not None:
            due.append(self._next_file_check)
        return min([self._next_stats, *due])

    def _apply(self, targets: Sequence[Target], now: float) -> None:
        mine = {target.url: target for target in targets if target.in_shard(self._options.shard)}
        for url in list(self._slots):
            if url not in mine:
                del self._slots[url]
                self._metrics.forget(url)
        for url, target in mine.items():
            slot = self._slots.get(url)
            if slot is None:
                self._slots[url] = _Slot(
                    target,
                    TargetHealth(url, self._options.frozen_after),
                    now + target.offset_s(self._options.interval_s),
                )
            else:
                slot.target = target
        self.report.targets = len(self._slots)
        self._metrics.targets.set(len(self._slots))
        self._publish_status()

    def _spent(self, slot: _Slot) -> bool:
        return self._options.scrapes is not None and slot.done >= self._options.scrapes

    def _all_done(self) -> bool:
        if self._options.scrapes is None:
            return False
        return all(self._spent(slot) for slot in self._slots.values())

    def _submit_due(self, pool: ThreadPoolExecutor, now: float) -> None:
        interval = self._options.interval_s
        for slot in self._slots.values():
            if slot.next_due > now or self._spent(slot):
                continue
            while slot.next_due <= now:
                slot.next_due += interval
            if slot.in_flight:
                self.report.overruns += 1
                self._metrics.overruns.inc()
                continue
            slot.in_flight = True
            future = pool.submit(scrape_target, slot.target, self._options, self._fetch)
            future.add_done_callback(functools.partial(self._collect, slot.target))

    def _collect(self, target: Target, future: Future[ScrapeResult]) -> None:
        error = future.exception()
        if error is None:
            self._results.put(future.result())
        else:
            # A bug of ours must not leave the target marked in flight, never scraped again.
            logger.error("Scraping %s failed inside the scraper", target.url, exc_info=error)
            failure = ScrapeFailed(FailureReason.INTERNAL, f"{type(error).__name__}: {error}")
            self._results.put(ScrapeResult(target, 0.0, time.time(), failure=failure))
        self._finished.set()

    def _settle_results(self) -> None:
        """Publish every finished scrape's points, wait for the broker's confirms, record."""
        finished: list[ScrapeResult] = []
        while True:
            try:
                finished.append(self._results.get_nowait())
            except queue.Empty:
                break
        if not finished:
            return
        # An invariant for mypy: run() set it before any scrape finished.
        assert self._publisher is not None, "run() sets the publisher"  # nosec B101
        report = self.report
        for result in finished:
            for point, metadata in result.points:
                self._publisher.send(build_task_message(point, metadata))
            report.published += len(result.points)
            if self._backpressure is not None and result.points:
                self._backpressure.wait()
                report.backpressure_pauses = self._backpressure.pauses
        self._publisher.flush()
        report.confirmed = self._publisher.confirmed
        for result in finished:
            self._record(result)
        self._publish_status()

    def _record(self, result: ScrapeResult) -> None:
        report = self.report
        slot = self._slots.get(result.target.url)
        health = slot.health if slot is not None else TargetHealth(result.target.url, 2)
        if slot is not None:
            slot.in_flight = False
            slot.done += 1
        report.scrapes += 1
        if result.failure is not None:
            reason = str(result.failure.reason)
            health.failed(reason, str(result.failure))
            report.failed_scrapes += 1
            report.failures[reason] += 1
            if slot is not None:
                self._metrics.record_failure(health, result.duration_s, reason)
            return
        health.succeeded(result.body, result.finished_at_s)
        report.samples += result.samples
        report.skipped.update(result.skipped)
        if slot is not None:
            self._metrics.record_success(
                health, result.duration_s, result.samples, len(result.points), result.skipped
            )

    def _publish_status(self) -> None:
        healths = [slot.health for slot in self._slots.values()]
        self._status = {
            "component": "scraper",
            "targets": len(healths),
            "up": sum(1 for health in healths if health.up),
            "down": sum(1 for health in healths if health.up is False),
            "frozen": sum(1 for health in healths if health.frozen),
            "published": self.report.confirmed,
            "failed_scrapes": self.report.failed_scrapes,
        }
