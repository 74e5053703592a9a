"""``telemetry demo``: the whole pipeline in one process tree, with no servers installed.

An embedded SecantusDB server (a separate process) stands in for MongoDB,
kombu's in-memory transport for RabbitMQ, and a Celery worker runs in a
thread of this process with the same task code as ``celery -A telemetry
worker``. ``CELERY_BROKER_URL`` and ``MONGODB_URI``, when set, are used instead.

The points keep the CSV's own times by default, so what the demo shows is
what the file says; a second run over the same data directory stores
nothing new and says so (every point is a counted duplicate).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from telemetry.broker.connect import Broker
from telemetry.broker.shards import ShardLayout
from telemetry.broker.topology import queue_consumers
from telemetry.config import Settings, masked
from telemetry.demo.embedded import SecantusServer
from telemetry.errors import BrokerUnavailable, StorageRejected, StorageUnavailable
from telemetry.observe.stats import Stats
from telemetry.store.mongo import check_database
from telemetry.store.mongo_reads import open_reader
from telemetry.store.port import GpuDocument, TelemetryReads
from telemetry.streamer.progress import ProgressBar
from telemetry.streamer.run import StreamOptions, StreamReport, TimestampMode, run_stream
from telemetry.worker.context import WorkerContext
from telemetry.worker.in_thread import worker_in_thread

DEMO_WORKER_THREADS = 4
# A bare "memory://" makes kombu warn that no host name was given.
IN_PROCESS_BROKER = "memory://localhost/"
# How long the demo waits without any point settling before it says why and gives up.
STALL_TIMEOUT_S = 30.0


def settled_count(stats: Stats) -> int:
    """Messages the worker brought to a final outcome, dead letters included."""
    counts = stats.snapshot()
    return counts["messages_processed"] + counts["dead_lettered"]


def wait_until_settled(
    expected: int,
    stats: Stats,
    show_progress: bool,
    stop: threading.Event,
    why_stalled: Callable[[], str],
    stall_timeout_s: float = STALL_TIMEOUT_S,
) -> str | None:
    """Wait until ``stats`` count ``expected`` messages settled; None when they are, else why not.

    Gives up when nothing settles for ``stall_timeout_s``, and asks
    ``why_stalled`` for the reason to show.
    """
    progress = ProgressBar(expected, "storing  ", unit="points") if show_progress else None
    last_seen, last_change = -1, time.monotonic()
    problem: str | None = None
    while True:
        settled = settled_count(stats)
        if progress is not None:
            progress.update(min(settled, expected))
        if settled >= expected:
            break
        if settled != last_seen:
            last_seen, last_change = settled, time.monotonic()
        if stop.is_set():
            problem = "stopped before every point was stored"
            break
        if time.monotonic() - last_change > stall_timeout_s:
            problem = f"no point stored for {stall_timeout_s:.0f}s: {why_stalled()}"
            break
        time.sleep(0.05)
    if progress is not None:
        progress.finish()
    return problem


@dataclass(frozen=True)
class SourceReport:
    """What the demo's source (the CSV streamer or the scraper) sent, in the demo's words."""

    sent: int
    confirmed: int
    skipped: int
    skipped_what: str

    @classmethod
    def of_stream(cls, report: StreamReport) -> SourceReport:
        """The streamer's report."""
        return cls(report.rows_sent, report.confirmed, report.errors, "bad CSV rows skipped")


@dataclass(frozen=True)
class DemoResult:
    """What the demo did, for its closing summary."""

    report: SourceReport
    counts: dict[str, int]
    new_points: int
    problem: str | None

    @property
    def ok(self) -> bool:
        """Every valid point stored: confirmed = stored + duplicates, nothing failed, and the
        database holds as many new points as the worker says it stored."""
        counts = self.counts
        return (
            self.problem is None
            and self.report.confirmed == self.report.sent
            and counts["telemetry_stored"] + counts["duplicates"] == self.report.confirmed
            and counts["messages_errors"] == 0
            and counts["dead_lettered"] == 0
            and self.new_points == counts["telemetry_stored"]
        )

    def summary(self) -> list[str]:
        """The closing lines, in words."""
        report, counts = self.report, self.counts
        lines = [
            f"{'OK' if self.ok else 'INCOMPLETE'}: {report.sent:,} points sent, "
            f"{report.confirmed:,} confirmed by the broker, {counts['telemetry_stored']:,} "
            f"stored ({self.new_points:,} new documents in the database)",
        ]
        if counts["duplicates"]:
            lines.append(
                f"  {counts['duplicates']:,} were stored already (an earlier run over the same "
                "data): counted as duplicates, not stored twice"
            )
        lines.append(
            f"  invalid: {counts['messages_errors']:,}   dead-lettered: "
            f"{counts['dead_lettered']:,}   {report.skipped_what}: {report.skipped:,}   "
            f"retries: {counts['retries']:,}"
        )
        lines.append(
            f"  GPU record writes: {counts['gpus_stored']:,} (a GPU's record is written when "
            "a batch brings news of it: first sight, new metadata or a later last_seen; "
            "batches in flight together may each write it)"
        )
        if self.problem is not None:
            lines.append(f"  why: {self.problem}")
        return lines


def print_tables(reads: TelemetryReads, gpus_shown: int = 3) -> None:
    """GPUs per host, and the latest value of each series for a few GPUs."""
    gpus = all_gpus(reads)
    hosts = Counter(gpu.get("hostname") or "(unknown)" for gpu in gpus)
    print(f"\nGPUs per host ({len(hosts)} hosts, {sum(hosts.values())} GPUs)")
    for host, count in sorted(hosts.items()):
        print(f"  {host:<40} {count:>4}")
    for gpu in gpus[:gpus_shown]:
        print(
            f"\nLatest values of {gpu['_id']} ({gpu.get('model_name', '?')} "
            f"on {gpu.get('hostname', '?')})"
        )
        for latest in reads.latest_values(gpu["_id"]):
            series = latest.metric_name
            if latest.gpu_instance is not None:
                series = f"{series} [{latest.gpu_instance}]"
            print(f"  {series:<36} {latest.value:>12g}   {latest.timestamp:%Y-%m-%d %H:%M:%S}Z")


def all_gpus(reads: TelemetryReads, page_size: int = 1_000) -> list[GpuDocument]:
    """Every GPU record, by UUID, a page at a time."""
    gpus: list[GpuDocument] = []
    after: str | None = None
    while page := reads.gpu_page(None, None, after, page_size):
        gpus.extend(page)
        after = str(page[-1]["_id"])
    return gpus


def serve_dashboard(settings: Settings, stop: threading.Event) -> None:
    """Serve the read API and dashboard on the demo's database until ``stop`` (Ctrl-C)."""
    from telemetry.api import ApiServer

    with ApiServer(settings) as api:
        print(f"\nDashboard: {api.url}/   API: {api.url}/api/v1/gpus   docs: {api.url}/docs")
        print("Serving until Ctrl-C.", flush=True)
        stop.wait()


def stall_diagnosis(settings: Settings) -> Callable[[], str]:
    """Why points stop arriving: on a real broker, usually another worker on the same queue."""

    def diagnose() -> str:
        if settings.broker_url.startswith("memory://"):
            return "the embedded worker stopped taking points; run with -v to see its log"
        try:
            broker = Broker.of(settings)
            consumers = max(
                queue_consumers(broker, topology)
                for topology in ShardLayout.of(settings).topologies
            )
        except BrokerUnavailable as exc:
            return f"the broker stopped answering ({exc})"
        if consumers > 1:
            return (
                f"another worker on queue {settings.queue_name!r} is taking points "
                f"({consumers} consumers); stop it, or set TELEMETRY_QUEUE to a queue of "
                "the demo's own"
            )
        return "the worker stopped taking points; run with -v to see its log"

    return diagnose


@dataclass(frozen=True)
class DemoBackends:
    """The demo's settings once its database and broker are chosen, and the database it
    started itself (None when ``MONGODB_URI`` points at one)."""

    settings: Settings
    server: SecantusServer | None


def choose_backends(settings: Settings, data_dir: Path) -> DemoBackends:
    """An embedded database unless ``MONGODB_URI`` is set; the in-process broker unless
    ``CELERY_BROKER_URL`` is set. Says which on stdout."""
    server: SecantusServer | None = None
    if not settings.given("mongodb_uri"):
        data_dir.mkdir(parents=True, exist_ok=True)
        server = SecantusServer(data_dir.resolve(), log_path=data_dir.resolve() / "secantus.log")
        print(f"Database: embedded SecantusDB on {server.uri}, data in {data_dir.resolve()}")
        server.start()
        settings = settings.model_copy(update={"mongodb_uri": server.uri})
    else:
        print(f"Database: {masked(settings.mongodb_uri)}")
        # Now, in one line, rather than a worker log line and then the demo's own.
        check_database(settings)
    broker = settings.broker_url if settings.given("broker_url") else IN_PROCESS_BROKER
    settings = settings.model_copy(update={"broker_url": broker})
    in_process = " (in-process)" if broker == IN_PROCESS_BROKER else ""
    print(f"Broker:   {masked(broker)}{in_process}")
    return DemoBackends(settings, server)


Source = Callable[[Settings, bool], SourceReport]
"""Sends the demo's points: given the settings and whether to show progress."""


def run_pipeline(
    settings: Settings,
    data_dir: Path,
    source: Source,
    show_progress: bool | None,
    stop: threading.Event,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    show: Callable[[Settings, TelemetryReads], None] | None = None,
    serve: bool = False,
) -> bool:
    """Start the database, broker and worker, run ``source``, wait until its points are
    stored, show them and say how it went; True if every valid point was stored."""
    started = time.monotonic()
    progress = show_progress if show_progress is not None else ProgressBar.wanted()
    backends = choose_backends(settings, data_dir)
    settings = backends.settings
    context: WorkerContext | None = None
    try:
        since = datetime.now(UTC)
        # Nobody watches events in the demo, and the in-memory broker would only keep them.
        with worker_in_thread(settings, DEMO_WORKER_THREADS, task_events=False) as context:
            context.store().ensure_indexes()
            report = source(settings, progress)
            problem = wait_until_settled(
                report.confirmed,
                context.recorder.stats,
                progress,
                stop,
                stall_diagnosis(settings),
                stall_timeout_s,
            )
        reads = open_reader(settings)
        try:
            new_points = reads.count_points_since(since)
            result = DemoResult(report, context.recorder.stats.snapshot(), new_points, problem)
            (show or (lambda _, shown: print_tables(shown)))(settings, reads)
        except (StorageUnavailable, StorageRejected) as exc:
            raise StorageUnavailable(f"cannot read the results back: {exc.problem}") from exc
        finally:
            reads.close()
        print()
        for line in result.summary():
            print(line)
        print(f"Demo finished in {time.monotonic() - started:.1f}s")
        if serve:
            serve_dashboard(settings, stop)
        return result.ok
    finally:
        if context is not None:
            context.close()
        if backends.server is not None:
            backends.server.stop()


def run_demo(
    settings: Settings,
    csv_path: Path,
    data_dir: Path,
    limit: int | None,
    show_progress: bool | None,
    stop: threading.Event,
    timestamps: TimestampMode = "csv",
    stall_timeout_s: float = STALL_TIMEOUT_S,
    serve: bool = False,
) -> bool:
    """Run the pipeline over ``csv_path``; True if every valid row was stored."""

    def stream(settings: Settings, progress: bool) -> SourceReport:
        options = StreamOptions(
            paths=[csv_path], limit=limit, instance_id=settings.instance_id, timestamps=timestamps
        )
        report = run_stream(settings, options, show_progress=progress, stop=stop)
        return SourceReport.of_stream(report)

    return run_pipeline(
        settings, data_dir, stream, show_progress, stop, stall_timeout_s, serve=serve
    )
