"""Parsing a dcgm-exporter scrape: our parser against prometheus_client's, per sample.

``python -m benchmarks.parse`` prints, for each shared capture and the 8-GPU
fixture, the CPU time per sample of :func:`telemetry.exposition.parse_exposition`
with its label cache warm (every scrape after the first) and cold, of
``prometheus_client.parser.text_string_to_metric_families`` measured in the
same run, their ratio, and of :func:`telemetry.dcgm_exporter.points_from_samples`.
Each figure is the best of several repeats of a loop long enough to time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from telemetry.dcgm_exporter import clear_series_cache, points_from_samples
from telemetry.exposition import clear_label_cache, parse_exposition

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "dcgm-exporter"
EIGHT_GPUS = ROOT / "tests" / "fixtures" / "exporter" / "eight-gpus.prom"
REPEATS = 5
# Each repeat runs its loop for at least this much CPU time, so a clock tick is noise.
MIN_REPEAT_S = 0.02
SCRAPED_AT = datetime(2026, 12, 1, tzinfo=UTC)


def best_seconds_per_call(call: Callable[[], Any], repeats: int = REPEATS) -> float:
    """The best of ``repeats`` CPU-time measurements of ``call``, per call."""
    loops = 1
    while True:
        start = time.process_time()
        for _ in range(loops):
            call()
        if time.process_time() - start >= MIN_REPEAT_S:
            break
        loops *= 2
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(loops):
            call()
        best = min(best, (time.process_time() - start) / loops)
    return best


def _prometheus_client(text: str) -> None:
    for family in text_string_to_metric_families(text):
        family.samples  # noqa: B018 - the families are built lazily; take each one


def _cold_parse(text: str) -> None:
    clear_label_cache()
    parse_exposition(text)


def _cold_points(text: str) -> Callable[[], Any]:
    parsed = parse_exposition(text)

    def run() -> None:
        clear_series_cache()
        points_from_samples(parsed, SCRAPED_AT)

    return run


def measure(text: str) -> dict[str, float]:
    """µs per sample of each step for one scrape body, and the speed-up over prometheus_client."""
    parsed = parse_exposition(text)
    samples = max(1, len(parsed.samples))
    per_sample = 1e6 / samples
    ours = best_seconds_per_call(lambda: parse_exposition(text)) * per_sample
    ours_cold = best_seconds_per_call(lambda: _cold_parse(text)) * per_sample
    theirs = best_seconds_per_call(lambda: _prometheus_client(text)) * per_sample
    points = best_seconds_per_call(lambda: points_from_samples(parsed, SCRAPED_AT)) * per_sample
    points_cold = best_seconds_per_call(_cold_points(text)) * per_sample
    return {
        "samples": len(parsed.samples),
        "ours_us_per_sample": ours,
        "ours_cold_us_per_sample": ours_cold,
        "prometheus_client_us_per_sample": theirs,
        "speedup": theirs / ours,
        "speedup_cold": theirs / ours_cold,
        "points_us_per_sample": points,
        "points_cold_us_per_sample": points_cold,
    }


def inputs() -> dict[str, Path]:
    """The bodies measured: each shared capture that is present, and the 8-GPU fixture."""
    found = {path.name: path for path in sorted(SHARED.glob("*.prom"))}
    found[EIGHT_GPUS.name] = EIGHT_GPUS
    return found


def run() -> dict[str, dict[str, float]]:
    """The figures of :func:`measure` for every input, by file name (for ``make bench``)."""
    return {name: measure(path.read_text()) for name, path in inputs().items()}


def main() -> None:
    """Print one line per input."""
    print(
        f"{'input':32} {'samples':>7} {'ours µs':>8} {'cold µs':>8} {'prom µs':>8} "
        f"{'ratio':>6} {'cold x':>6} {'points µs':>9} {'cold µs':>8}"
    )
    for name, figures in run().items():
        print(
            f"{name:32} {figures['samples']:7.0f} {figures['ours_us_per_sample']:8.2f} "
            f"{figures['ours_cold_us_per_sample']:8.2f} "
            f"{figures['prometheus_client_us_per_sample']:8.2f} {figures['speedup']:6.1f} "
            f"{figures['speedup_cold']:6.1f} {figures['points_us_per_sample']:9.2f} "
            f"{figures['points_cold_us_per_sample']:8.2f}"
        )


if __name__ == "__main__":
    main()
