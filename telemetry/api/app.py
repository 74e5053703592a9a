"""The read API and dashboard as a FastAPI application: :func:`create_app`.

Routes, in the order a request meets its checks:

1. the bearer token, when ``API_TOKEN`` is set (401), on ``/api`` routes only;
2. parameter names and values (400), all of them, before any database read,
   so a bad request about an unknown GPU is a 400 and not a 404;
3. the database: 404 for an unknown GPU, 503 when it cannot answer in time.

The routes are plain ``def`` functions: pymongo blocks, so FastAPI runs them
on its thread pool rather than on the event loop.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from telemetry.api.params import (
    GPU_LIMIT_DEFAULT,
    GPU_LIMIT_MAX,
    MAX_INSTANCE_CHARS,
    MAX_METRIC_NAMES,
    MAX_NAME_CHARS,
    POINT_LIMIT_DEFAULT,
    POINT_LIMIT_MAX,
    ApiError,
    check_name,
    telemetry_query,
)
from telemetry.api.queries import TelemetryReader
from telemetry.api.schemas import (
    EXAMPLE_HOST,
    EXAMPLE_INSTANCE,
    EXAMPLE_METRIC,
    EXAMPLE_MODEL,
    EXAMPLE_UUID,
    Error,
    Gpu,
    GpuList,
    Health,
    MetricList,
    TelemetryPage,
)
from telemetry.config import Settings
from telemetry.store.mongo_reads import DEFAULT_QUERY_TIME_LIMIT_MS, open_reader
from telemetry.store.port import Aggregation

logger = logging.getLogger("telemetry.api")

API_VERSION = "1.0.0"
STATIC_DIR = Path(str(files("telemetry.api") / "static"))
# The dashboard loads only its own files: no CDN, no inline script.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)
DESCRIPTION = """\
Read-only access to the GPU telemetry the collector stored.

* Times are RFC 3339 in UTC (`2025-07-18T20:42:34.000Z`); windows include both ends.
* Pages are keyset pages: pass `next_cursor` back as `cursor` until it is null.
  Points written meanwhile are neither skipped nor repeated.
* With `API_TOKEN` set on the server, every `/api` route needs
  `Authorization: Bearer <token>`; `/healthz` and `/readyz` stay open.
* Errors are `{"error": "<code>", "message": "<text>"}`.
"""

# Responses every /api route may give besides its 200, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "A parameter is malformed, out of range or unknown."},
    401: {"model": Error, "description": "API_TOKEN is set and the bearer token is missing/wrong."},
    503: {"model": Error, "description": "The database is unreachable or hit the time limit."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Error, "description": "No GPU with this uuid was ever stored."}
}


def _token_optional() -> dict[str, Any]:
    """``openapi_extra`` of an ``/api`` route: the bearer token, or none at all.

    FastAPI declares the bearer scheme as required, but the token is checked only when
    the server has ``API_TOKEN`` set; the empty requirement says a request without one
    may be answered too (with a 401 where a token is set).
    """
    return {"security": [{}]}


_bearer = HTTPBearer(
    auto_error=False,
    description="The server's API_TOKEN; only checked when the server has one set.",
)


# The rules params.py checks, declared so that the document says what a valid request is.
NAME_RULES: dict[str, Any] = {"minLength": 1, "maxLength": MAX_NAME_CHARS, "pattern": r"\S"}
INSTANCE_RULES: dict[str, Any] = {"minLength": 1, "maxLength": MAX_INSTANCE_CHARS, "pattern": r"\S"}
STEP_RULES: dict[str, Any] = {"pattern": r"^\s*[1-9][0-9]{0,5}[smhd]\s*$"}


def _example(value: Any, summary: str) -> dict[str, dict[str, Any]]:
    """An ``openapi_examples`` entry: every parameter documents one real value."""
    return {"example": {"summary": summary, "value": value}}


def get_reader(request: Request) -> TelemetryReader:
    """The app's reader, made when the app started (see the lifespan in :func:`create_app`)."""
    found: TelemetryReader = request.app.state.reader
    return found


# Parameter types shared by routes. Module-level, because the routes' annotations are
# strings (PEP 563) that FastAPI resolves in this module's namespace.
Store = Annotated[TelemetryReader, Depends(get_reader)]
Uuid = Annotated[
    str,
    PathParam(
        description="The GPU's UUID, as in `GET /api/v1/gpus`.",
        json_schema_extra=NAME_RULES,
        openapi_examples=_example(EXAMPLE_UUID, "A GPU of the bundled sample"),
    ),
]
Cursor = Annotated[
    str | None,
    Query(
        description="`next_cursor` of the previous page; leave out for the first page.",
        openapi_examples=_example("eyJxIjoiMGI1ZTQ2YjQiLCJrIjpbIkdQVS0wIl19", "A next_cursor"),
    ),
]


def only(*names: str) -> Callable[[Request], None]:
    """A dependency refusing query parameters other than ``names``.

    A misspelt parameter (``start=`` for ``start_time=``) would otherwise be
    ignored and answer a different question than the one asked.
    """
    allowed = frozenset(names)

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params.keys()) - allowed)
        if unknown:
            expected = ", ".join(sorted(allowed)) or "none"
            raise ApiError(
                400,
                "unknown_parameter",
                f"unknown query parameter(s) {', '.join(unknown)}; this route takes {expected}",
            )

    return check


def create_app(settings: Settings, *, time_limit_ms: int = DEFAULT_QUERY_TIME_LIMIT_MS) -> FastAPI:
    """The API and dashboard for the database ``settings`` names.

    The storage port's reader is opened when the app starts (its lifespan) and closed
    when it stops, so building the app, e.g. to write its OpenAPI document,
    connects to nothing.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reads = open_reader(settings, time_limit_ms)
        app.state.reader = TelemetryReader(reads)
        try:
            yield
        finally:
            reads.close()

    app = FastAPI(
        title="GPU telemetry API",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    token = settings.api_token.get_secret_value() if settings.api_token else None

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        # Constant-time comparison: the time taken must not reveal how much of a guess matched.
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(
                401, "unauthorized", "send the API token as Authorization: Bearer <token>"
            )

    _install_error_handlers(app)
    _declare_validation_errors_as_400(app)
    _add_probes(app)
    app.include_router(_api_router(require_token))
    _add_dashboard(app, settings)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error, ours, FastAPI's or Starlette's, as ``{"error": ..., "message": ...}``."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            {"error": exc.code, "message": exc.message}, status_code=exc.status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        name = str(first["loc"][-1]) if first.get("loc") else "request"
        code = {"limit": "invalid_limit", "agg": "invalid_agg"}.get(name, "invalid_parameter")
        return JSONResponse({"error": code, "message": f"{name}: {first['msg']}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(
            {"error": code, "message": message},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )


def _declare_validation_errors_as_400(app: FastAPI) -> None:
    """Drop the 422 FastAPI declares on every route: this API answers a bad parameter with
    a 400 (see :func:`_install_error_handlers`), and each route declares that one."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            for operations in spec.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = spec.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            return spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_probes(app: FastAPI) -> None:
    @app.get(
        "/healthz",
        tags=["probes"],
        summary="Liveness",
        description="200 while the process serves requests. Never asks the database; no token.",
        response_model=Health,
    )
    def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        tags=["probes"],
        summary="Readiness",
        description="200 when the database answers a ping, else 503. No token.",
        response_model=Health,
        responses={503: {"model": Error, "description": "The database is unreachable."}},
    )
    def readyz(store: Store) -> Health:
        store.ping()
        return Health(status="ready")


def _api_router(require_token: Callable[..., None]) -> APIRouter:
    # The token is checked first: a caller without one learns nothing, not even a 400.
    router = APIRouter(
        prefix="/api/v1",
        tags=["gpus"],
        dependencies=[Depends(require_token)],
        responses=ERROR_RESPONSES,
    )

    @router.get(
        "/gpus",
        summary="List GPUs",
        description=(
            "GPUs the collector has stored, ordered by uuid, a page at a time, with the "
            "number of all that match the filters."
        ),
        response_model=GpuList,
        openapi_extra=_token_optional(),
        dependencies=[Depends(only("hostname", "model_name", "limit", "cursor"))],
    )
    def list_gpus(
        store: Store,
        cursor: Cursor = None,
        hostname: Annotated[
            str | None,
            Query(
                description="Only GPUs of this host (exact match).",
                json_schema_extra=NAME_RULES,
                openapi_examples=_example(EXAMPLE_HOST, "One host"),
            ),
        ] = None,
        model_name: Annotated[
            str | None,
            Query(
                description="Only GPUs of this model (exact match).",
                json_schema_extra=NAME_RULES,
                openapi_examples=_example(EXAMPLE_MODEL, "H100"),
            ),
        ] = None,
        limit: Annotated[
            int,
            Query(
                ge=1,
                le=GPU_LIMIT_MAX,
                description=f"GPUs per page, 1 to {GPU_LIMIT_MAX:,}.",
                openapi_examples=_example(GPU_LIMIT_DEFAULT, "The default"),
            ),
        ] = GPU_LIMIT_DEFAULT,
    ) -> GpuList:
        for name, value in (("hostname", hostname), ("model_name", model_name)):
            if value is not None:
                check_name(name, value)
        return store.list_gpus(hostname, model_name, limit, cursor)

    @router.get(
        "/gpus/{uuid}",
        summary="One GPU",
        description="The GPU's metadata and the span of its stored points.",
        response_model=Gpu,
        openapi_extra=_token_optional(),
        responses=NOT_FOUND,
        dependencies=[Depends(only())],
    )
    def get_gpu(store: Store, uuid: Uuid) -> Gpu:
        check_name("uuid", uuid)
        return store.get_gpu(uuid)

    @router.get(
        "/gpus/{uuid}/metrics",
        summary="Metrics of a GPU",
        description="The metric names stored for the GPU, each with its newest value and time.",
        response_model=MetricList,
        openapi_extra=_token_optional(),
        responses=NOT_FOUND,
        dependencies=[Depends(only())],
    )
    def gpu_metrics(store: Store, uuid: Uuid) -> MetricList:
        check_name("uuid", uuid)
        return store.latest_metrics(uuid)

    @router.get(
        "/gpus/{uuid}/telemetry",
        summary="Telemetry of a GPU",
        description=(
            "The GPU's points in a window that includes both ends, ordered by timestamp, "
            "metric_name, then gpu_instance (the whole GPU's point first), a page at a time. "
            "With `step`, one point per metric and MIG instance per bucket of that width, "
            "summarised by `agg` in the database; a downsampled window needs both ends and may "
            "span at most 31 days."
        ),
        response_model=TelemetryPage,
        openapi_extra=_token_optional(),
        responses=NOT_FOUND,
        dependencies=[
            Depends(
                only(
                    "metric_name",
                    "instance",
                    "start_time",
                    "end_time",
                    "step",
                    "agg",
                    "limit",
                    "cursor",
                )
            )
        ],
    )
    def gpu_telemetry(
        store: Store,
        uuid: Uuid,
        cursor: Cursor = None,
        metric_name: Annotated[
            list[str] | None,
            Query(
                description="Only these metrics; repeat the parameter for several. Default: all.",
                json_schema_extra={"maxItems": MAX_METRIC_NAMES, "items": NAME_RULES},
                openapi_examples=_example([EXAMPLE_METRIC], "GPU utilisation"),
            ),
        ] = None,
        instance: Annotated[
            str | None,
            Query(
                description=(
                    "Only the points of this MIG instance (its GPU_I_ID, as in the GPU's "
                    "`mig_instances`). Default: every point, the whole GPU's and each instance's."
                ),
                json_schema_extra=INSTANCE_RULES,
                openapi_examples=_example(EXAMPLE_INSTANCE, "One MIG instance"),
            ),
        ] = None,
        start_time: Annotated[
            str | None,
            Query(
                description="Oldest time included (RFC 3339). Default: no lower bound.",
                json_schema_extra={"format": "date-time"},
                openapi_examples=_example("2025-07-18T20:00:00Z", "A UTC time"),
            ),
        ] = None,
        end_time: Annotated[
            str | None,
            Query(
                description="Newest time included (RFC 3339). Default: no upper bound.",
                json_schema_extra={"format": "date-time"},
                openapi_examples=_example("2025-07-18T21:00:00Z", "A UTC time"),
            ),
        ] = None,
        step: Annotated[
            str | None,
            Query(
                description=(
                    "Downsample into buckets this wide: a whole number and s, m, h or d, "
                    "from 1s to 1d. Needs start_time and end_time."
                ),
                json_schema_extra=STEP_RULES,
                openapi_examples=_example("60s", "One point a minute"),
            ),
        ] = None,
        agg: Annotated[
            Aggregation | None,
            Query(
                description="How a bucket is summarised (with `step` only). Default: avg.",
                openapi_examples=_example("max", "The bucket's maximum"),
            ),
        ] = None,
        limit: Annotated[
            int,
            Query(
                ge=1,
                le=POINT_LIMIT_MAX,
                description=f"Points per page, 1 to {POINT_LIMIT_MAX:,}.",
                openapi_examples=_example(POINT_LIMIT_DEFAULT, "The default"),
            ),
        ] = POINT_LIMIT_DEFAULT,
    ) -> TelemetryPage:
        query = telemetry_query(uuid, metric_name, start_time, end_time, step, agg, limit, instance)
        return store.telemetry(query, cursor)

    return router


def _add_dashboard(app: FastAPI, settings: Settings) -> None:
    """``GET /``: the fleet dashboard, plain files under ``static/``; no build step."""

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": DASHBOARD_CSP, "Cache-Control": "no-cache"},
        )

    @app.get("/dashboard/config.json", include_in_schema=False)
    def dashboard_config() -> dict[str, Any]:
        # What the page cannot know by itself; nothing secret (the token is never sent out).
        return {
            "api": "/api/v1",
            "stale_after_s": settings.api_stale_after_s,
            "token_required": settings.api_token is not None,
        }

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
