"""The scraper's Prometheus metrics, per target, in a registry of its own.

Served on the scraper's own port (``SCRAPER_PORT``, default 9843), apart
from a worker's 9842, so a scraper and a worker can share a host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder

from telemetry.scraper.health import TargetHealth


class ScraperMetrics:
    """Every metric of one scraper, labelled by target URL where it is per target."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        target = ["target"]
        self.up = Gauge(
            "telemetry_scrape_target_up",
            "1 if the target's last scrape returned metrics, else 0.",
            target,
            registry=self.registry,
        )
        self.frozen = Gauge(
            "telemetry_scrape_target_frozen",
            "1 if the target's payload has not changed for SCRAPE_FROZEN_AFTER scrapes.",
            target,
            registry=self.registry,
        )
        self.duration = Gauge(
            "telemetry_scrape_duration_seconds",
            "How long the target's last scrape took, fetch and parse.",
            target,
            registry=self.registry,
        )
        self.samples = Gauge(
            "telemetry_scrape_samples",
            "Samples in the target's last successful scrape.",
            target,
            registry=self.registry,
        )
        self.last_success = Gauge(
            "telemetry_scrape_last_success_timestamp_seconds",
            "Unix time of the target's last successful scrape.",
            target,
            registry=self.registry,
        )
        self.published = Counter(
            "telemetry_scrape_points_published",
            "Points of the target the broker confirmed.",
            target,
            registry=self.registry,
        )
        self.skipped = Counter(
            "telemetry_scrape_samples_skipped",
            "Samples of the target not published, by reason.",
            ["target", "reason"],
            registry=self.registry,
        )
        self.failures = Counter(
            "telemetry_scrape_failures",
            "Failed scrapes of the target, by reason.",
            ["target", "reason"],
            registry=self.registry,
        )
        self.overruns = Counter(
            "telemetry_scrape_overruns",
            "Scrapes skipped because the target's previous one was still running when it was "
            "due again: a sign the interval is too short or the concurrency too low.",
            registry=self.registry,
        )
        self.targets = Gauge(
            "telemetry_scrape_targets",
            "Targets this scraper is responsible for (after --shard).",
            registry=self.registry,
        )

    def record_success(
        self,
        health: TargetHealth,
        duration_s: float,
        samples: int,
        published: int,
        skipped: Mapping[str, int],
    ) -> None:
        """A scrape that returned metrics, with what became of its samples."""
        url = health.url
        self.up.labels(url).set(1)
        self.frozen.labels(url).set(1 if health.frozen else 0)
        self.duration.labels(url).set(duration_s)
        self.samples.labels(url).set(samples)
        if health.last_success_s is not None:
            self.last_success.labels(url).set(health.last_success_s)
        self.published.labels(url).inc(published)
        for reason, count in skipped.items():
            self.skipped.labels(url, reason).inc(count)

    def record_failure(self, health: TargetHealth, duration_s: float, reason: str) -> None:
        """A failed scrape."""
        self.up.labels(health.url).set(0)
        self.duration.labels(health.url).set(duration_s)
        self.failures.labels(health.url, reason).inc()

    def forget(self, url: str) -> None:
        """Drop a target's series once it has left the targets list."""
        per_target: tuple[Gauge | Counter, ...] = (
            self.up,
            self.frozen,
            self.duration,
            self.samples,
            self.last_success,
            self.published,
        )
        for metric in per_target:
            with contextlib.suppress(KeyError):
                metric.remove(url)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics as the scraping Prometheus asked for them."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
