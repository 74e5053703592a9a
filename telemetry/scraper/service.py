"""``telemetry scrape`` as a process: settings in; broker, endpoints and status around the loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from telemetry.broker.backlog import QueueBacklog, open_publisher
from telemetry.broker.connect import Broker
from telemetry.broker.shards import ShardLayout
from telemetry.broker.status import StatusResponder
from telemetry.config import Settings
from telemetry.errors import ConfigError
from telemetry.observe.health import HealthServer
from telemetry.scraper.metrics import ScraperMetrics
from telemetry.scraper.run import STATS_MESSAGE, ScrapeOptions, Scraper, ScrapeReport
from telemetry.scraper.targets import Shard, command_line_targets

logger = logging.getLogger("telemetry.scraper.service")
stats_logger = logging.getLogger("telemetry.stats")


def options_from(
    settings: Settings, targets: Sequence[str], scrapes: int | None = None
) -> ScrapeOptions:
    """Scrape options from the settings and the ``--target`` flags; raises :class:`ConfigError`."""
    if not targets and settings.scrape_targets_file is None:
        raise ConfigError("no targets: pass --target URL or --targets-file FILE")
    if settings.scrape_timeout_s >= settings.scrape_interval_s:
        raise ConfigError(
            f"--timeout {settings.scrape_timeout_s:g}s must be less than "
            f"--interval {settings.scrape_interval_s:g}s"
        )
    return ScrapeOptions(
        targets=command_line_targets(targets),
        targets_file=settings.scrape_targets_file,
        interval_s=settings.scrape_interval_s,
        timeout_s=settings.scrape_timeout_s,
        concurrency=settings.scrape_concurrency,
        max_body_bytes=settings.scrape_max_body_bytes,
        frozen_after=settings.scrape_frozen_after,
        honor_timestamps=settings.scrape_honor_timestamps,
        shard=Shard.parse(settings.scrape_shard),
        scrapes=scrapes,
        instance_id=settings.instance_id,
        max_backlog=settings.max_backlog,
        stats_interval_s=settings.stats_interval_s,
    )


def run_scrape(
    settings: Settings,
    options: ScrapeOptions,
    stop: threading.Event | None = None,
    compression: str | None = None,
    print_report: bool = True,
    answer_stats: bool = True,
) -> ScrapeReport:
    """Check the targets, connect, scrape until done or stopped, settle, print the summary.

    Raises :class:`ConfigError` for a bad targets file and
    :class:`BrokerUnavailable` when the broker cannot be used. ``answer_stats``
    makes it answer ``telemetry stats`` (the demo's in-process broker has no
    such mailbox).
    """
    metrics = ScraperMetrics()
    scraper = Scraper(options, metrics, stop=stop)
    # The targets file is checked before anything connects: a typo is exit 2, not a hang.
    targets = scraper.load_targets()
    publisher = open_publisher(settings, compression)
    backlog = QueueBacklog(Broker.of(settings), ShardLayout.of(settings).work_queue_names())
    health: HealthServer | None = None
    responder: StatusResponder | None = None
    try:
        health = _start_endpoints(settings.scraper_port, metrics)
        if answer_stats:
            responder = StatusResponder(
                Broker.of(settings),
                f"scraper@{settings.instance_id}",
                lambda: {**scraper.status(), "queue": settings.queue_name},
            )
            responder.start()
        report = scraper.run(publisher, targets, backlog)
    finally:
        if responder is not None:
            responder.stop()
        if health is not None:
            health.stop()
        backlog.close()
        publisher.close()
    stats_logger.info(STATS_MESSAGE, extra=report.stats_fields(options.instance_id))
    if print_report:
        print_summary(report, options)
    return report


def _start_endpoints(port: int, metrics: ScraperMetrics) -> HealthServer | None:
    if port == 0:
        return None
    server = HealthServer(port, checks=[], scrape=metrics.exposition)
    try:
        server.start()
    except OSError as exc:
        logger.error(
            "Scraper metrics and health off: cannot listen on port %d (%s); "
            "each scraper on a host needs a SCRAPER_PORT of its own",
            port,
            exc,
        )
        return None
    logger.info("Scraper metrics and health on %s (/healthz)", server.url("/metrics"))
    return server


def print_summary(report: ScrapeReport, options: ScrapeOptions) -> None:
    """The human summary on stdout."""
    where = f" from {options.targets_file}" if options.targets_file else ""
    print(
        f"Scraped {report.targets} target(s){where}: {report.scrapes:,} scrapes in "
        f"{report.elapsed_s:.1f}s, {report.failed_scrapes:,} failed"
        f"{' — stopped early' if report.stopped else ''}"
    )
    print(
        f"  points published: {report.published:,}   confirmed by the broker: "
        f"{report.confirmed:,}   samples read: {report.samples:,}"
    )
    if report.skipped:
        print("  samples skipped: " + _by_reason(report.skipped))
    if report.failures:
        print("  failed scrapes: " + _by_reason(report.failures))
    if report.overruns:
        print(f"  overruns (a scrape still running when due again): {report.overruns:,}")


def _by_reason(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in sorted(counts.items()))
