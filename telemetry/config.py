"""Collector settings: one object, read from flags, then the environment, then defaults.

Nothing here runs at import time; callers build a :class:`Settings` with
:func:`load_settings` when they start.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pymongo.errors import ConfigurationError, InvalidURI
from pymongo.uri_parser import parse_uri

from telemetry.errors import ConfigError
from telemetry.logs import LogFormat

BROKER_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "memory"})

# Environment variable for each setting. The first five are the names the
# original collector used; the rest follow the same plain style.
ENV_NAMES: dict[str, str] = {
    "instance_id": "INSTANCE_ID",
    "batch_size": "BATCH_SIZE",
    "flush_interval_ms": "FLUSH_INTERVAL_MS",
    "max_concurrent_handlers": "MAX_CONCURRENT_HANDLERS",
    "queue_buffer_size": "QUEUE_BUFFER_SIZE",
    "queue_workers": "QUEUE_WORKERS",
    "broker_url": "CELERY_BROKER_URL",
    "mongodb_uri": "MONGODB_URI",
    "mongodb_db": "MONGODB_DB",
    "queue_name": "TELEMETRY_QUEUE",
    "max_retries": "MAX_RETRIES",
    "retry_backoff_s": "RETRY_BACKOFF_S",
    "retry_backoff_max_s": "RETRY_BACKOFF_MAX_S",
    "stats_interval_s": "STATS_INTERVAL_S",
    "mongo_timeout_ms": "MONGO_TIMEOUT_MS",
    "rejected_max_docs": "REJECTED_MAX_DOCS",
    "retention_days": "RETENTION_DAYS",
    "gpu_last_seen_lag_s": "GPU_LAST_SEEN_LAG_S",
    "log_format": "LOG_FORMAT",
    "metrics_port": "METRICS_PORT",
    "api_host": "API_HOST",
    "api_port": "API_PORT",
    "api_token": "API_TOKEN",
    "api_stale_after_s": "API_STALE_AFTER_S",
}

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_MONGODB_URI = "mongodb://localhost:27017"
DEFAULT_METRICS_PORT = 9842


class Settings(BaseModel):
    """Everything the collector and the streamer can be told, with units in the names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_id: str = Field(default_factory=socket.gethostname, min_length=1)
    batch_size: int = Field(default=200, ge=1)
    flush_interval_ms: int = Field(default=200, ge=1)
    max_concurrent_handlers: int = Field(default=10, ge=1)
    queue_buffer_size: int = Field(default=1000, ge=1)
    queue_workers: int = Field(default=10, ge=1)
    broker_url: str = DEFAULT_BROKER_URL
    mongodb_uri: str = DEFAULT_MONGODB_URI
    mongodb_db: str = Field(default="telemetry", min_length=1, pattern=r"^[^/\\. \"$]+$")
    queue_name: str = Field(default="telemetry", min_length=1)
    max_retries: int = Field(default=5, ge=0)
    retry_backoff_s: float = Field(default=1.0, gt=0)
    retry_backoff_max_s: float = Field(default=60.0, gt=0)
    stats_interval_s: float = Field(default=10.0, gt=0)
    mongo_timeout_ms: int = Field(default=5000, ge=100)
    rejected_max_docs: int = Field(default=10_000, ge=1)
    retention_days: int = Field(default=0, ge=0)
    gpu_last_seen_lag_s: float = Field(default=60.0, ge=0)
    log_format: LogFormat = "auto"
    # /metrics, /healthz and /readyz; 0 turns them off.
    metrics_port: int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65_535)
    # The read API (`telemetry api`): where it listens, and the bearer token its /api routes need.
    api_host: str = Field(default="127.0.0.1", min_length=1)
    api_port: int = Field(default=8000, ge=1, le=65_535)
    api_token: SecretStr | None = None
    # The dashboard marks a GPU stale when its last point is older than this.
    api_stale_after_s: float = Field(default=300.0, gt=0)

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in BROKER_SCHEMES:
            raise ValueError(f"scheme must be one of {sorted(BROKER_SCHEMES)}, got {scheme!r}")
        return value

    @field_validator("mongodb_uri")
    @classmethod
    def _check_mongodb_uri(cls, value: str) -> str:
        if value.startswith("mongodb+srv://"):
            # Parsing an SRV URI does DNS look-ups; leave that to the client.
            return value
        if not value.startswith("mongodb://"):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        try:
            parse_uri(value)
        except (InvalidURI, ConfigurationError, ValueError) as exc:
            raise ValueError(str(exc)) from exc
        return value


def load_settings(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build settings with flag > environment > default precedence.

    ``overrides`` holds values from flags; ``None`` values mean "not given".
    Raises :class:`ConfigError` with one readable line on the first bad value.
    """
    environ = os.environ if env is None else env
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for field, env_name in ENV_NAMES.items():
        raw = environ.get(env_name)
        if raw is not None and raw.strip() != "":
            values[field] = raw.strip()
            origin[field] = env_name
    for field, value in (overrides or {}).items():
        if value is not None:
            values[field] = value
            origin[field] = "--" + field.replace("_", "-")
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        where = origin.get(field, field)
        given = values.get(field)
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid {where}={given!r}: {message}") from exc
