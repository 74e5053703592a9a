"""``telemetry demo --scrape``: the whole pipeline fed by scraping local stand-in exporters.

Three stand-in dcgm-exporters (``telemetry.demo.exporter``) serve changing
values with a MIG-split GPU, pods and a time-sliced GPU. The scraper reads
them for a few rounds, the embedded worker stores the points, and what was
stored is shown through the read API, as a dashboard or a script would see it.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

from telemetry.config import Settings
from telemetry.demo.exporter import StandInExporter, serve_exporters
from telemetry.demo.run import STALL_TIMEOUT_S, SourceReport, run_pipeline
from telemetry.scraper.run import ScrapeOptions
from telemetry.scraper.service import run_scrape
from telemetry.scraper.targets import command_line_targets
from telemetry.store.port import TelemetryReads

DEMO_NODES = ("demo-node-1", "demo-node-2", "demo-node-3")
DEMO_INTERVAL_S = 2.0
DEMO_TIMEOUT_S = 1.5


def run_scrape_demo(
    settings: Settings,
    data_dir: Path,
    scrapes: int,
    show_progress: bool | None,
    stop: threading.Event,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    serve: bool = False,
) -> bool:
    """Scrape the stand-ins ``scrapes`` times each; True if every point sent was stored."""
    exporters = [StandInExporter(node) for node in DEMO_NODES]
    with serve_exporters(exporters) as fleet:
        print("Exporters: " + "  ".join(fleet.urls) + " (stand-in dcgm-exporters)")

        def scrape(settings: Settings, progress: bool) -> SourceReport:
            options = ScrapeOptions(
                targets=command_line_targets(fleet.urls),
                interval_s=DEMO_INTERVAL_S,
                timeout_s=DEMO_TIMEOUT_S,
                scrapes=scrapes,
                instance_id=settings.instance_id,
            )
            quiet = settings.model_copy(update={"scraper_port": 0})
            report = run_scrape(quiet, options, stop, answer_stats=False)
            skipped = sum(report.skipped.values())
            return SourceReport(report.published, report.confirmed, skipped, "samples skipped")

        return run_pipeline(
            settings,
            data_dir,
            scrape,
            show_progress,
            stop,
            stall_timeout_s,
            show=show_through_api,
            serve=serve,
        )


def show_through_api(settings: Settings, reads: TelemetryReads) -> None:
    """The fleet and one MIG GPU's latest values, read from the read API over HTTP."""
    from telemetry.api import ApiServer

    token = settings.api_token.get_secret_value() if settings.api_token else None
    with ApiServer(settings) as api:
        gpus = _get(f"{api.url}/api/v1/gpus?limit=100", token)["gpus"]
        print(f"\nGPUs from {api.url}/api/v1/gpus ({len(gpus)} GPUs)")
        for gpu in gpus:
            instances = gpu.get("mig_instances") or []
            mig = f"  MIG: {len(instances)} instances" if instances else ""
            print(f"  {gpu['uuid']}  {gpu.get('hostname', '?'):<12} {gpu.get('model_name')}{mig}")
        split = next((gpu for gpu in gpus if gpu.get("mig_instances")), None)
        if split is None:
            return
        url = f"{api.url}/api/v1/gpus/{split['uuid']}/metrics"
        print(f"\nLatest values of {split['uuid']} from {url}")
        for metric in _get(url, token)["metrics"]:
            where = f"instance {metric['gpu_instance']}" if metric.get("gpu_instance") else "GPU"
            print(f"  {metric['metric_name']:<36} {where:<12} {metric['value']:>12g}")


def _get(url: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    # The demo's own local API: the URL is the http:// one its server reported.
    with urllib.request.urlopen(request, timeout=10) as response:  # nosec B310
        return json.load(response)
