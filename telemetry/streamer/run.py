"""The streamer: DCGM CSV rows in, one confirmed ``telemetry.ingest`` task per point out.

It is handed a ``publish`` object and a message builder, not the task itself,
so it can be tested and reused without a broker or a worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from telemetry.broker.backlog import Backpressure, QueueBacklog, open_publisher
from telemetry.broker.connect import Broker
from telemetry.broker.messages import TaskMessage, build_task_message
from telemetry.broker.publisher import Publisher
from telemetry.broker.shards import ShardLayout
from telemetry.config import Settings
from telemetry.dcgm import BadRow, Row, read_dcgm_csv
from telemetry.errors import ConfigError, CsvFormatError
from telemetry.streamer.progress import ProgressBar

logger = logging.getLogger("telemetry.streamer.run")
stats_logger = logging.getLogger("telemetry.stats")

TimestampMode = Literal["now", "csv"]
STATS_MESSAGE = "Streamer statistics"


@dataclass(frozen=True)
class StreamOptions:
    """How to stream: which files, how fast, how much, and with which timestamps."""

    paths: Sequence[Path]
    loop: bool = False
    interval_s: float = 0.0
    rate: float | None = None
    limit: int | None = None
    timestamps: TimestampMode = "now"
    instance_id: str = "streamer"
    max_backlog: int = 100_000
    backlog_check_every: int = 1000
    stats_interval_s: float = 10.0


@dataclass
class StreamReport:
    """What a run did; ``confirmed`` is what the broker accepted."""

    rows_read: int = 0
    rows_sent: int = 0
    confirmed: int = 0
    errors: int = 0
    bad_rows: list[str] = field(default_factory=list)
    backpressure_pauses: int = 0
    elapsed_s: float = 0.0
    stopped: bool = False

    @property
    def rate(self) -> float:
        """Rows sent per second."""
        return self.rows_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def stats_fields(self, instance_id: str) -> dict[str, object]:
        """The fields of the periodic statistics log line: ``rows_sent``, ``errors``, ``rate``."""
        return {
            "component": "streamer",
            "instance_id": instance_id,
            "rows_sent": self.rows_sent,
            "confirmed": self.confirmed,
            "errors": self.errors,
            "rate": round(self.rate, 1),
        }

    def summary(self) -> dict[str, object]:
        """Everything but the list of bad rows, for the final report."""
        body = asdict(self)
        body.pop("bad_rows")
        body["rate"] = round(self.rate, 1)
        body["elapsed_s"] = round(self.elapsed_s, 3)
        return body


MAX_BAD_ROWS_KEPT = 1000


def count_rows(paths: Sequence[Path]) -> int:
    """How many data rows the files hold (for the progress bar)."""
    return sum(1 for path in paths for _ in read_dcgm_csv(path))


def rows_of(options: StreamOptions) -> Iterator[Row | BadRow]:
    """Every row of every file, round and round in loop mode."""
    while True:
        for path in options.paths:
            yield from read_dcgm_csv(path)
        if not options.loop:
            return


class Streamer:
    """Reads rows, paces them, and sends each valid one as a task."""

    def __init__(
        self,
        publisher: Publisher,
        build: Callable[[Row, datetime], TaskMessage],
        options: StreamOptions,
        backlog: Callable[[], int] | None = None,
        progress: ProgressBar | None = None,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publisher = publisher
        self._build = build
        self._options = options
        self._progress = progress
        self._stop = stop or threading.Event()
        self._backpressure = (
            None
            if backlog is None
            else Backpressure(backlog, options.max_backlog, self._stop, sleep)
        )
        self._sleep = sleep
        self._clock = clock
        self.report = StreamReport()

    def run(self) -> StreamReport:
        """Stream until the files end, ``limit`` is reached or ``stop`` is set; then settle."""
        report = self.report
        started = self._clock()
        next_due = started
        next_stats = started + self._options.stats_interval_s
        gap = max(self._options.interval_s, 1.0 / self._options.rate if self._options.rate else 0.0)
        for item in rows_of(self._options):
            if self._stop.is_set():
                report.stopped = True
                break
            if self._options.limit is not None and report.rows_sent >= self._options.limit:
                break
            report.rows_read += 1
            if isinstance(item, BadRow):
                self._count_bad(item)
                continue
            if gap > 0:
                next_due = self._pace(next_due, gap)
            stamp = datetime.now(UTC) if self._options.timestamps == "now" else item.point.timestamp
            self._publisher.send(self._build(item, stamp))
            report.rows_sent += 1
            if (
                self._backpressure is not None
                and report.rows_sent % self._options.backlog_check_every == 0
            ):
                self._backpressure.wait()
                report.backpressure_pauses = self._backpressure.pauses
            now = self._clock()
            report.elapsed_s = now - started
            report.confirmed = self._publisher.confirmed
            if self._progress is not None:
                self._progress.update(report.rows_sent)
            if now >= next_stats:
                stats_logger.info(
                    STATS_MESSAGE, extra=report.stats_fields(self._options.instance_id)
                )
                next_stats = now + self._options.stats_interval_s
        self._publisher.flush()
        report.confirmed = self._publisher.confirmed
        report.elapsed_s = self._clock() - started
        if self._progress is not None:
            self._progress.update(report.rows_sent)
            self._progress.finish()
        return report

    def _count_bad(self, row: BadRow) -> None:
        self.report.errors += 1
        if len(self.report.bad_rows) < MAX_BAD_ROWS_KEPT:
            self.report.bad_rows.append(str(row))
        logger.warning("Skipping bad row %s", row)

    def _pace(self, next_due: float, gap: float) -> float:
        delay = next_due - self._clock()
        if delay > 0:
            self._sleep(delay)
        # Never bank more than one gap of credit after a stall.
        return max(next_due, self._clock() - gap) + gap


def options_from(
    settings: Settings,
    paths: Sequence[Path],
    rate: float | None = None,
    limit: int | None = None,
    timestamps: TimestampMode = "now",
) -> StreamOptions:
    """Stream options from the settings (``CSV_PATH``, ``LOOP_MODE``, ``STREAM_INTERVAL``,
    ``STREAM_MAX_BACKLOG``) and the flags that are not settings; raises :class:`ConfigError`."""
    if not paths:
        if settings.csv_path is None:
            raise ConfigError("no CSV file given: pass PATHS or set CSV_PATH")
        paths = [settings.csv_path]
    return StreamOptions(
        paths=list(paths),
        loop=settings.loop_mode,
        interval_s=settings.stream_interval_s,
        rate=rate,
        limit=limit,
        timestamps=timestamps,
        instance_id=settings.instance_id,
        max_backlog=settings.max_backlog,
    )


def run_stream(
    settings: Settings,
    options: StreamOptions,
    compression: str | None = None,
    show_progress: bool | None = None,
    stop: threading.Event | None = None,
    print_report: bool = True,
) -> StreamReport:
    """Connect, stream, settle and print the summary; raises :class:`BrokerUnavailable`."""
    for path in options.paths:
        if not path.is_file():
            raise CsvFormatError(f"{path}: no such file")
    progress = None
    if show_progress or (show_progress is None and ProgressBar.wanted()):
        total = None if options.loop else count_rows(options.paths)
        if total is not None and options.limit is not None:
            total = min(total, options.limit)
        progress = ProgressBar(total, "streaming")
    publisher = open_publisher(settings, compression)
    backlog = QueueBacklog(Broker.of(settings), ShardLayout.of(settings).work_queue_names())
    try:
        streamer = Streamer(
            publisher,
            lambda row, stamp: build_task_message(row.point.wire(stamp), row.metadata.known()),
            options,
            backlog=backlog,
            progress=progress,
            stop=stop,
        )
        report = streamer.run()
    finally:
        backlog.close()
        publisher.close()
    stats_logger.info(STATS_MESSAGE, extra=report.stats_fields(options.instance_id))
    if print_report:
        print_summary(report, options)
    return report


def print_summary(report: StreamReport, options: StreamOptions) -> None:
    """The human summary on stdout, bad rows first (at most 20 of them listed)."""
    for line in report.bad_rows[:20]:
        print(f"bad row  {line}")
    if report.errors > 20:
        print(f"bad row  … and {report.errors - 20} more")
    files = ", ".join(str(path) for path in options.paths)
    print(
        f"Streamed {report.rows_sent:,} points from {files} in {report.elapsed_s:.1f}s "
        f"({report.rate:,.0f} points/s){' — stopped early' if report.stopped else ''}"
    )
    print(
        f"  confirmed by the broker: {report.confirmed:,}   bad rows skipped: "
        f"{report.errors:,}   backpressure pauses: {report.backpressure_pauses}"
    )
