"""``telemetry stats``: every running collector's counters and the depth of its queues.

The counters themselves are kept by :mod:`telemetry.observe.stats`.
"""

from __future__ import annotations

from typing import Any

from telemetry.broker.connect import Broker
from telemetry.broker.shards import ShardLayout
from telemetry.broker.status import STATS_COMMAND
from telemetry.broker.topology import topology_channel
from telemetry.config import Settings
from telemetry.observe.stats import COUNTERS


def cluster_stats(settings: Settings, timeout_s: float = 2.0) -> dict[str, Any]:
    """Counters of each worker consuming ``settings.queue_name``, a summary of each scraper
    feeding it, and the depth of each shard's work queue and dead letters (and of the
    layout being drained, with ``DRAIN_QUEUE_SHARDS``).

    Raises :class:`BrokerUnavailable` if the broker cannot be reached.
    """
    # The broadcast speaks Celery's control protocol, and publishes on the app's connections.
    from telemetry.worker.app import app, configure_broker

    configure_broker(app, settings)
    topologies = ShardLayout.of(settings).topologies
    if settings.drain_queue_shards is not None:
        topologies += ShardLayout.of(settings, settings.drain_queue_shards).topologies
    layout = ShardLayout(topologies)
    with topology_channel(Broker.of(settings), layout) as (connection, channel):
        depths = {
            name: int(channel.queue_declare(name, passive=True).message_count)
            for topology in layout.topologies
            for name in (topology.queue_name, topology.dead_name)
        }
        replies = app.control.broadcast(
            STATS_COMMAND, reply=True, timeout=timeout_s, connection=connection
        )
    answers = {
        node: counters
        for reply in replies or []
        for node, counters in reply.items()
        if isinstance(counters, dict) and counters.get("queue") == settings.queue_name
    }
    workers = {node: body for node, body in answers.items() if body.get("component") != "scraper"}
    scrapers = {node: body for node, body in answers.items() if body.get("component") == "scraper"}
    return {
        "workers": dict(sorted(workers.items())),
        "scrapers": dict(sorted(scrapers.items())),
        "queues": depths,
    }


def render_table(stats: dict[str, Any]) -> str:
    """A plain table: one row per worker, a total row, then the queue depths."""
    columns = ["worker", *COUNTERS]
    rows = [
        [node, *(str(counters.get(name, 0)) for name in COUNTERS)]
        for node, counters in stats["workers"].items()
    ]
    if len(rows) > 1:
        rows.append(
            [
                "TOTAL",
                *(str(sum(c.get(name, 0) for c in stats["workers"].values())) for name in COUNTERS),
            ]
        )
    widths = [
        max(len(column), *(len(row[index]) for row in rows)) if rows else len(column)
        for index, column in enumerate(columns)
    ]
    lines = [
        "  ".join(
            text.rjust(width) if index else text.ljust(width)
            for index, (text, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [columns, *rows]
    ]
    if not rows:
        lines.append("(no worker answered)")
    lines.append("")
    lines.extend(scraper_line(node, body) for node, body in stats.get("scrapers", {}).items())
    lines.extend(f"queue {name}: {depth} waiting" for name, depth in stats["queues"].items())
    return "\n".join(lines)


def scraper_line(node: str, status: dict[str, Any]) -> str:
    """One scraper in one line: its targets up, down and frozen, and what it published."""
    return (
        f"{node}: {status.get('targets', 0)} targets, {status.get('up', 0)} up, "
        f"{status.get('down', 0)} down, {status.get('frozen', 0)} frozen; "
        f"{status.get('published', 0)} points published, "
        f"{status.get('failed_scrapes', 0)} failed scrapes"
    )
