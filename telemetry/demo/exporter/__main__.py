"""``python -m telemetry.demo.exporter``: see :mod:`telemetry.demo.exporter.command`."""

from __future__ import annotations

import sys

from telemetry.demo.exporter.command import main

if __name__ == "__main__":
    sys.exit(main())
