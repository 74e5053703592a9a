"""The read API and fleet dashboard (``telemetry api``).

:func:`create_app` builds the FastAPI application for some settings,
:func:`serve` runs it in the foreground with uvicorn, and :class:`ApiServer`
runs it on a thread. Nothing here writes to the database.
"""

from __future__ import annotations

from telemetry.api.app import create_app
from telemetry.api.server import ApiServer, serve
from telemetry.store.mongo import POINT_PAGE_INDEX, POINT_PAGE_INDEX_NAME

__all__ = ["POINT_PAGE_INDEX", "POINT_PAGE_INDEX_NAME", "ApiServer", "create_app", "serve"]
