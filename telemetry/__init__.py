"""GPU telemetry collector.

``celery -A telemetry worker`` finds the Celery app as ``telemetry.app``. It is
made on first access, not at import: importing the domain modules
(``telemetry.models``, ``telemetry.config``, ``telemetry.dcgm``) must not
import Celery or connect its signals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from telemetry.worker.app import TelemetryCelery

    app: TelemetryCelery

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from telemetry.worker.app import app

        return app
    raise AttributeError(f"module 'telemetry' has no attribute {name!r}")
