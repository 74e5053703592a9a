"""The ``telemetry`` command: parses, calls, prints. No logic of its own.

Every failure the package can describe (a :class:`TelemetryError`) ends as
one line on stderr and an exit code: 2 for bad input or a bad setting, 1
for a broker or database that cannot be used. Never a traceback, never a
password.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Literal, NoReturn, TypeVar, cast

import click

from telemetry.config import LogFormat, Settings, flag_help, flag_name, load_settings
from telemetry.errors import ConfigError, PermanentError, TelemetryError
from telemetry.observe.logs import configure_logging, current_format
from telemetry.ops.dlq import DeadLetterQueue, render, shard_dead_letters

SAMPLE_CSV = Path(__file__).parent / "data" / "dcgm_metrics_20250718_134233.csv"

logger = logging.getLogger("telemetry.cli")


def setup_logging(instance_id: str, log_format: LogFormat, verbose: bool) -> None:
    """Log lines on stderr, JSON unless it is a terminal; statistics lines always show."""
    configure_logging(instance_id, log_format, logging.INFO if verbose else logging.WARNING)


def stop_on_signals() -> threading.Event:
    """An event set by the first SIGINT or SIGTERM; a second SIGINT interrupts at once."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        note = "finishing what is in flight (press Ctrl-C again to abort)"
        name = signal.Signals(signum).name
        if current_format() == "json":
            logger.warning("%s: %s", name, note)
        else:
            # A new line first: a progress bar may be drawn on the current one.
            click.echo(f"\n{name}: {note}", err=True)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def fail(message: str, code: int = 1) -> NoReturn:
    """Say what failed in one line (a JSON log line when logs are JSON) and exit with ``code``."""
    if current_format() == "json":
        logger.error(message, extra={"exit_code": code})
    else:
        click.echo(f"telemetry: {message}", err=True)
    sys.exit(code)


def verbose_requested() -> bool:
    """Whether ``telemetry -v`` was given."""
    context = click.get_current_context(silent=True)
    return context is not None and bool(context.find_root().params.get("verbose"))


def settings_or_exit(overrides: dict[str, Any] | None = None) -> Settings:
    """The settings (flags over environment); one line and exit code 2 if one is bad.

    Logging is set up again from them: ``LOG_FORMAT`` and the instance id.
    """
    try:
        settings = load_settings(overrides=overrides)
    except ConfigError as exc:
        fail(str(exc), 2)
    setup_logging(settings.instance_id, settings.log_format, verbose_requested())
    return settings


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """GPU telemetry: stream DCGM CSV or scrape dcgm-exporter into the collector, or run the
    whole pipeline."""
    # Until the settings are read: the host name (INSTANCE_ID's default) and LOG_FORMAT=auto.
    setup_logging(socket.gethostname(), "auto", verbose)


F = TypeVar("F", bound=Callable[..., Any])


def producer_options(command: F) -> F:
    """The flags both sources take: ``--instance-id``, ``--queue-type``, ``--queue-shards``
    and ``--compression``."""
    command = click.option(
        flag_name("queue_shards"),
        type=click.IntRange(min=1),
        default=None,
        help=flag_help("queue_shards"),
    )(command)
    command = click.option(
        "--compression",
        type=click.Choice(["gzip", "zlib", "bzip2"]),
        default=None,
        help="Compress message bodies (workers decode them on their own).",
    )(command)
    command = click.option(
        flag_name("queue_type"),
        type=click.Choice(["quorum", "classic"]),
        default=None,
        help=flag_help("queue_type"),
    )(command)
    return click.option(flag_name("instance_id"), default=None, help=flag_help("instance_id"))(
        command
    )


# The stream command's flags for settings: settings field -> click parameter name.
# A test checks they are exactly the settings declared for "stream", under their flag names.
STREAM_FLAGS = {
    "loop_mode": "loop",
    "stream_interval_s": "interval",
    "stream_max_backlog": "max_backlog",
    "instance_id": "instance_id",
    "queue_type": "queue_type",
    "queue_shards": "queue_shards",
}


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    f"{flag_name('loop_mode')}/--no-loop", "loop", default=None, help=flag_help("loop_mode")
)
@click.option(
    flag_name("stream_interval_s"),
    "interval",
    type=click.FloatRange(min=0),
    default=None,
    help=flag_help("stream_interval_s"),
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Most points per second.",
)
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Stop after N points.")
@click.option(
    "--timestamps",
    type=click.Choice(["now", "csv"]),
    default="now",
    show_default=True,
    help="Stamp points with the time they are sent, or keep the file's times.",
)
@producer_options
@click.option(
    flag_name("stream_max_backlog"),
    "max_backlog",
    type=click.IntRange(min=1),
    default=None,
    help=flag_help("stream_max_backlog"),
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar (default: only on a terminal).",
)
def stream(
    paths: tuple[Path, ...],
    loop: bool | None,
    interval: float | None,
    rate: float | None,
    limit: int | None,
    timestamps: str,
    instance_id: str | None,
    queue_type: str | None,
    queue_shards: int | None,
    compression: str | None,
    max_backlog: int | None,
    progress: bool | None,
) -> None:
    """Send each row of DCGM CSV files as one telemetry.ingest task (PATHS or $CSV_PATH)."""
    from telemetry.streamer.run import options_from, run_stream

    flags: dict[str, object] = {
        "loop": loop,
        "interval": interval,
        "max_backlog": max_backlog,
        "instance_id": instance_id,
        "queue_type": queue_type,
        "queue_shards": queue_shards,
    }
    settings = settings_or_exit({field: flags[flag] for field, flag in STREAM_FLAGS.items()})
    try:
        options = options_from(
            settings, paths, rate, limit, cast(Literal["now", "csv"], timestamps)
        )
    except ConfigError as exc:
        fail(str(exc), 2)
    try:
        report = run_stream(settings, options, compression, progress, stop_on_signals())
    except (FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        fail(str(exc), 2)
    except PermanentError as exc:
        fail(str(exc), 2)
    except (TelemetryError, OSError) as exc:
        fail(str(exc), 1)
    sys.exit(0 if report.confirmed == report.rows_sent else 1)


# The scrape command's flags for settings: settings field -> click parameter name.
# A test checks they are exactly the settings declared for "scrape", under their flag names.
SCRAPE_FLAGS = {
    "scrape_targets_file": "targets_file",
    "scrape_interval_s": "interval",
    "scrape_timeout_s": "timeout",
    "scrape_concurrency": "concurrency",
    "scrape_max_body_bytes": "max_body_bytes",
    "scrape_frozen_after": "frozen_after",
    "scrape_honor_timestamps": "honor_timestamps",
    "scrape_shard": "shard",
    "scraper_port": "metrics_port",
    "instance_id": "instance_id",
    "queue_type": "queue_type",
    "queue_shards": "queue_shards",
}


@main.command()
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="URL",
    help="An endpoint to scrape: host:port or a URL (repeatable).",
)
@click.option(
    flag_name("scrape_targets_file"),
    "targets_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=flag_help("scrape_targets_file"),
)
@click.option(
    flag_name("scrape_interval_s"),
    "interval",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help=flag_help("scrape_interval_s"),
)
@click.option(
    flag_name("scrape_timeout_s"),
    "timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help=flag_help("scrape_timeout_s"),
)
@click.option(
    flag_name("scrape_concurrency"),
    "concurrency",
    type=click.IntRange(min=1, max=1024),
    default=None,
    help=flag_help("scrape_concurrency"),
)
@click.option(
    flag_name("scrape_max_body_bytes"),
    "max_body_bytes",
    type=click.IntRange(min=1024),
    default=None,
    help=flag_help("scrape_max_body_bytes"),
)
@click.option(
    flag_name("scrape_frozen_after"),
    "frozen_after",
    type=click.IntRange(min=2),
    default=None,
    help=flag_help("scrape_frozen_after"),
)
@click.option(
    f"{flag_name('scrape_honor_timestamps')}/--no-honor-timestamps",
    "honor_timestamps",
    default=None,
    help=flag_help("scrape_honor_timestamps"),
)
@click.option(flag_name("scrape_shard"), "shard", default=None, help=flag_help("scrape_shard"))
@click.option(
    flag_name("scraper_port"),
    "metrics_port",
    type=click.IntRange(0, 65_535),
    default=None,
    help=flag_help("scraper_port"),
)
@click.option(
    "--scrapes",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after N rounds (default: until SIGINT or SIGTERM).",
)
@producer_options
def scrape(
    targets: tuple[str, ...],
    targets_file: Path | None,
    interval: float | None,
    timeout: float | None,
    concurrency: int | None,
    max_body_bytes: int | None,
    frozen_after: int | None,
    honor_timestamps: bool | None,
    shard: str | None,
    metrics_port: int | None,
    scrapes: int | None,
    instance_id: str | None,
    queue_type: str | None,
    queue_shards: int | None,
    compression: str | None,
) -> None:
    """Scrape dcgm-exporter endpoints; send each sample as one telemetry.ingest task.

    Exits 0 when the rounds ran, even if some targets were down (the summary
    says which failed and why); 1 when the broker cannot be used; 2 for bad
    flags or a bad targets file.
    """
    from telemetry.scraper.service import options_from, run_scrape

    flags: dict[str, object] = {
        "targets_file": targets_file,
        "interval": interval,
        "timeout": timeout,
        "concurrency": concurrency,
        "max_body_bytes": max_body_bytes,
        "frozen_after": frozen_after,
        "honor_timestamps": honor_timestamps,
        "shard": shard,
        "metrics_port": metrics_port,
        "instance_id": instance_id,
        "queue_type": queue_type,
        "queue_shards": queue_shards,
    }
    settings = settings_or_exit({field: flags[flag] for field, flag in SCRAPE_FLAGS.items()})
    try:
        options = options_from(settings, targets, scrapes)
        report = run_scrape(settings, options, stop_on_signals(), compression)
    except PermanentError as exc:
        fail(str(exc), 2)
    except (TelemetryError, OSError) as exc:
        fail(str(exc), 1)
    sys.exit(0 if report.confirmed == report.published else 1)


@main.command()
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=SAMPLE_CSV,
    show_default="the bundled DCGM sample",
    help="The file to stream.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("telemetry-data"),
    show_default=True,
    help="Where the embedded database keeps its files.",
)
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Stream only N points.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress bars (default: only on a terminal).",
)
@click.option(
    "--timestamps",
    type=click.Choice(["csv", "now"]),
    default="csv",
    show_default=True,
    help="Keep the file's own times, or stamp points with the time they are sent.",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Keep the read API and dashboard running after the stream, until Ctrl-C.",
)
@click.option(
    "--scrape",
    "scrape_exporters",
    is_flag=True,
    help="Feed the pipeline by scraping three local stand-in dcgm-exporters instead of the CSV.",
)
@click.option(
    "--scrapes",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="With --scrape: rounds to scrape, 2 seconds apart.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Give up, saying why, when no point is stored for this many seconds.",
)
def demo(
    csv_path: Path,
    data_dir: Path,
    limit: int | None,
    progress: bool | None,
    timestamps: str,
    serve: bool,
    scrape_exporters: bool,
    scrapes: int,
    stall_timeout: float,
) -> None:
    """Run the whole pipeline on one machine, with no servers needed.

    Starts an embedded MongoDB-compatible server and an in-process broker and
    worker (or uses CELERY_BROKER_URL / MONGODB_URI when set), streams the
    CSV (or, with --scrape, scrapes local stand-in exporters), and shows what
    was stored. Exits 0 only if every valid point was stored.
    """
    from telemetry.demo.run import run_demo
    from telemetry.demo.scrape import run_scrape_demo

    settings = settings_or_exit()
    try:
        if scrape_exporters:
            ok = run_scrape_demo(
                settings, data_dir, scrapes, progress, stop_on_signals(), stall_timeout, serve
            )
            sys.exit(0 if ok else 1)
        ok = run_demo(
            settings,
            csv_path,
            data_dir,
            limit,
            progress,
            stop_on_signals(),
            cast(Literal["now", "csv"], timestamps),
            stall_timeout,
            serve,
        )
    except (PermanentError, UnicodeDecodeError) as exc:
        fail(str(exc), 2)
    except (TelemetryError, OSError) as exc:
        fail(str(exc), 1)
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds to wait for workers to answer.",
)
def stats(as_json: bool, timeout: float) -> None:
    """Counters of every running collector and the depth of its queues.

    Exits 1 when no worker answers.
    """
    from telemetry.ops.stats_view import cluster_stats, render_table

    settings = settings_or_exit()
    try:
        result = cluster_stats(settings, timeout)
    except TelemetryError as exc:
        fail(str(exc))
    click.echo(json.dumps(result, indent=2) if as_json else render_table(result))
    if not result["workers"]:
        sys.exit(1)


@main.command()
@click.option("--host", default=None, help=flag_help("api_host"))
@click.option("--port", type=click.IntRange(1, 65_535), default=None, help=flag_help("api_port"))
def api(host: str | None, port: int | None) -> None:
    """Serve the read API and the fleet dashboard (read-only; docs/api.md)."""
    from telemetry.api import serve

    settings = settings_or_exit({"api_host": host, "api_port": port})
    # The URL it serves on is an INFO line: shown whatever -v says.
    logging.getLogger("telemetry.api").setLevel(logging.INFO)
    try:
        serve(settings)
    except PermanentError as exc:  # the port is taken, say
        fail(str(exc), 2)
    except TelemetryError as exc:
        fail(str(exc), 1)


@main.group()
def dlq() -> None:
    """Inspect, replay or purge dead-lettered messages (<queue>.dead)."""


def dead_letters(shard: int | None) -> list[DeadLetterQueue]:
    """The dead-letter queue of each shard (or of one); exits with one line on bad settings."""
    settings = settings_or_exit()
    try:
        return shard_dead_letters(settings, shard)
    except ConfigError as exc:
        fail(str(exc), 2)


def shard_option(command: F) -> F:
    """``--shard K``: one shard's dead letters instead of every shard's."""
    return click.option(
        "--shard",
        type=click.IntRange(min=0),
        default=None,
        help="Only shard K's dead letters (QUEUE_SHARDS > 1). Default: every shard's.",
    )(command)


@dlq.command("list")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Show at most N messages per shard.",
)
@shard_option
def dlq_list(limit: int, shard: int | None) -> None:
    """The count, then one line per message: task id, when it died, GPU/metric, why."""
    for queue in dead_letters(shard):
        try:
            count = queue.count()
            letters = queue.peek(limit)
        except TelemetryError as exc:
            fail(str(exc))
        click.echo(f"{count} dead-lettered message(s) in {queue.dead_name}")
        for letter in letters:
            click.echo(letter.line())
        if count > len(letters):
            click.echo(f"… and {count - len(letters)} more (--limit)")


@dlq.command("show")
@click.argument("task_id")
@shard_option
def dlq_show(task_id: str, shard: int | None) -> None:
    """One dead letter in full: headers, body, error and x-death."""
    for queue in dead_letters(shard):
        try:
            letter = queue.find(task_id)
        except TelemetryError as exc:
            fail(str(exc))
        if letter is not None:
            click.echo(render(letter))
            return
    fail(f"no dead letter with task id {task_id}")


@dlq.command("replay")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Move at most N.")
@shard_option
def dlq_replay(limit: int | None, shard: int | None) -> None:
    """Move dead letters back to their shard's work queue, once the cause is fixed."""
    left_to_move = limit
    for queue in dead_letters(shard):
        try:
            moved = queue.replay(left_to_move)
            left = queue.count()
        except TelemetryError as exc:
            fail(str(exc))
        click.echo(
            f"Replayed {moved} message(s) to {queue.queue_name}; {left} left in {queue.dead_name}"
        )
        if left_to_move is not None:
            left_to_move -= moved
            if left_to_move == 0:
                return


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@shard_option
def dlq_purge(yes: bool, shard: int | None) -> None:
    """Delete every dead letter (of every shard, or of one), after asking."""
    queues = dead_letters(shard)
    try:
        counts = {queue.dead_name: queue.count() for queue in queues}
        if not any(counts.values()):
            click.echo(f"{', '.join(counts)} {'is' if len(counts) == 1 else 'are'} empty")
            return
        total = sum(counts.values())
        if not yes and not click.confirm(f"Delete {total} dead-lettered message(s) for good?"):
            fail("nothing deleted", 1)
        for queue in queues:
            if counts[queue.dead_name]:
                click.echo(f"Purged {queue.purge()} message(s) from {queue.dead_name}")
    except TelemetryError as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
