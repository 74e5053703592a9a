"""A stand-in for NVIDIA's dcgm-exporter: its ``/metrics`` format, with made-up GPUs.

It lets people try ``telemetry scrape`` without GPUs, and gives tests and
benchmarks local exporters. One module per job:

- :mod:`~telemetry.demo.exporter.readings`: how a value follows the time.
- :mod:`~telemetry.demo.exporter.payload`: a node's GPUs and the payload
  rendered for them (:class:`StandInExporter`).
- :mod:`~telemetry.demo.exporter.server`: many exporters served over HTTP from
  one thread (:func:`serve_exporters`, :class:`ExporterFleet`).
- :mod:`~telemetry.demo.exporter.command`: the command line (:func:`main`).

From a shell::

    python -m telemetry.demo.exporter --port 9400 [--port 9401 ...] --node NAME \
        [--gpus 4] [--no-mig] [--no-pods] [--host 0.0.0.0]
"""

from __future__ import annotations

from telemetry.demo.exporter.command import main, parser
from telemetry.demo.exporter.payload import CONTENT_TYPE, StandInExporter, gpu_uuid
from telemetry.demo.exporter.server import ExporterFleet, serve_exporters

__all__ = [
    "CONTENT_TYPE",
    "ExporterFleet",
    "StandInExporter",
    "gpu_uuid",
    "main",
    "parser",
    "serve_exporters",
]
