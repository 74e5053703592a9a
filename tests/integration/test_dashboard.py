"""The dashboard in a real browser: headless Chromium against a live API with the sample stored.

Chromium is Debian's ``chromium`` (Playwright's own browser download is not
reachable here), driven by Playwright through ``executable_path``. The test
saves the screenshots that docs/api.md and the README show.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.database import Database

from telemetry.api import ApiServer
from tests.conftest import server_missing
from tests.integration.api_support import (
    REPO,
    api_settings,
    create_indexes,
    point_doc,
    sample_documents,
    store,
)

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = REPO / "docs"
STALE_HOSTS = ("mtv5-dgx1-hgpu-030", "mtv5-dgx1-hgpu-031", "mtv5-dgx1-hgpu-032")
LIVE_MINUTES = 45
# The GPU with history also has one MIG instance, reporting one metric: one chart more.
MIG_INSTANCE = "1"
CHARTS = 11


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium; a missing browser fails under CI=true, and skips elsewhere."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        server_missing("Playwright (pip install playwright)", exc)
    if shutil.which(CHROMIUM) is None:
        server_missing(f"Chromium at {CHROMIUM} (apt-get install chromium)", FileNotFoundError())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def fleet_with_history(database: Database[Any], now: datetime) -> tuple[str, int, int]:
    """The bundled sample as streamed a moment ago, three hosts gone quiet, one GPU's history.

    Returns the GPU with history, the number of GPUs and of stale GPUs.
    """
    create_indexes(database)
    quiet = now - timedelta(hours=2)
    points, gpus = sample_documents(now - timedelta(seconds=20), dict.fromkeys(STALE_HOSTS, quiet))
    database["telemetry"].insert_many(points)
    database["gpus"].insert_many(gpus)
    stale = sum(1 for gpu in gpus if gpu.get("hostname") in STALE_HOSTS)
    # The sample has one point per metric per GPU; give one GPU 45 minutes of history at
    # 15 s (the streamer in loop mode), with shapes a chart can be checked against.
    gpu = next(gpu for gpu in gpus if gpu.get("hostname") == "mtv5-dgx1-hgpu-001")
    latest = {p["metric_name"]: p["value"] for p in points if p["gpu_uuid"] == gpu["_id"]}
    history = []
    for k in range(LIVE_MINUTES * 4):
        moment = now - timedelta(seconds=30 + 15 * k)
        for index, (metric, value) in enumerate(sorted(latest.items())):
            wave = math.sin(k / (6 + index)) * 0.5 + 0.5 + (k % 7) / 50
            # Around the sample's own value, so the chart looks like that metric.
            level = value * (0.7 + 0.3 * wave) if value else 100 * wave
            history.append(point_doc(gpu["_id"], metric, moment, round(level, 2), gpu["hostname"]))
            if index == 0:
                history.append(
                    point_doc(
                        gpu["_id"],
                        metric,
                        moment,
                        round(level / 2, 2),
                        gpu["hostname"],
                        gpu_instance=MIG_INSTANCE,
                    )
                )
    store(database, history)
    database["gpus"].update_one(
        {"_id": gpu["_id"]},
        {
            "$set": {
                f"mig_instances.{MIG_INSTANCE}": {
                    "profile": "1g.10gb",
                    "first_seen": now - timedelta(minutes=LIVE_MINUTES),
                    "last_seen": now - timedelta(seconds=30),
                }
            }
        },
    )
    return str(gpu["_id"]), len(gpus), stale


def test_fleet_and_gpu_views_show_the_data(
    browser: Any, mongo_server: Any, database: Database[Any]
) -> None:
    now = datetime.now(UTC)
    uuid, gpu_count, stale_count = fleet_with_history(database, now)
    settings = api_settings(mongo_server.uri, database.name)
    with ApiServer(settings) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        outside: list[str] = []
        page.on(
            "request",
            lambda request: (
                None if request.url.startswith(server.url) else outside.append(request.url)
            ),
        )

        # Fleet view: every host and GPU of the sample, the quiet hosts marked stale.
        page.goto(f"{server.url}/")
        page.wait_for_selector('body[data-loaded="fleet"]', timeout=30_000)
        assert page.inner_text('[data-count="gpus"]') == str(gpu_count)
        assert page.inner_text('[data-count="hosts"]') == "31"
        assert page.inner_text('[data-count="stale"]') == str(stale_count)
        for host in STALE_HOSTS:
            rows = page.locator(f'section[data-host="{host}"] tr.stale')
            assert rows.count() > 0
            assert rows.count() == page.locator(f'section[data-host="{host}"] tbody tr').count()
        assert page.locator('section[data-host="mtv5-dgx1-hgpu-001"] tr.stale').count() == 0
        live_badges = page.locator('section[data-host="mtv5-dgx1-hgpu-001"] .badge.live')
        assert live_badges.count() > 0
        assert page.inner_text(f'tr[data-uuid="{uuid}"] .mig') == "1 MIG"
        page.screenshot(path=str(DOCS / "dashboard-fleet.png"))

        # GPU view, reached by its link: one chart per metric (and MIG instance), each with
        # a drawn series.
        page.click(f'a[href="#/gpu/{uuid}"]')
        page.wait_for_selector(f'body[data-loaded="{uuid}"]', timeout=30_000)
        assert page.get_attribute('button[data-preset="1h"]', "aria-pressed") == "true"
        charts = page.locator("svg.chart")
        assert charts.count() == CHARTS
        instance_card = page.locator(f'section.chart-card[data-instance="{MIG_INSTANCE}"]')
        assert instance_card.locator(".mig").inner_text() == f"MIG {MIG_INSTANCE}"
        assert "1 (1g.10gb)" in page.inner_text(".meta")
        for index in range(charts.count()):
            chart = charts.nth(index)
            points = int(chart.get_attribute("data-points") or 0)
            # 45 minutes at 15 s, in the 15 s buckets a 1 h window gets: about 180 points.
            assert points >= LIVE_MINUTES * 4 - 5, chart.get_attribute("data-metric")
            path = chart.locator("path.series").get_attribute("d") or ""
            assert path.startswith("M") and path.count("L") >= points - 5
        page.screenshot(path=str(DOCS / "dashboard-gpu.png"), full_page=True)

        # "All data" asks the API for the GPU's whole span; a coarser step, same metrics.
        page.click('button[data-preset="All data"]')
        # (wait_for_function would evaluate a string: the page's CSP rightly forbids that.)
        page.wait_for_selector('button[data-preset="All data"][aria-pressed="true"]')
        assert page.locator("svg.chart path.series").count() == CHARTS

        assert errors == [], errors
        assert outside == [], f"the dashboard fetched from elsewhere: {outside}"
        page.close()


def test_screenshots_are_in_the_docs() -> None:
    """The README and docs/api.md show these PNGs; the browser test above rewrites them."""
    for name in ("dashboard-fleet.png", "dashboard-gpu.png"):
        image = (DOCS / name).read_bytes()
        assert image[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(image) > 10_000, name
