"""The settings module: every environment variable the package reads is declared here, once.

Each field of :class:`Settings` names its environment variable, its help text
and the commands that take it as a flag. Everything else is derived from
that one declaration: :data:`ENV_NAMES`, the worker's and the commands'
flags (:func:`flag_fields`), the test suite's list of variables to clear,
and ``docs/configuration.md`` (``make config-docs``; a test fails when it is
stale). Precedence is flag > environment > default, in :func:`load_settings`.

No other module under ``telemetry/`` reads ``os.environ``; the one place the
package writes to it (prometheus_client's multiprocess directory) goes
through :func:`set_process_environment` here, too.

Nothing here runs at import time, and this module imports neither Celery
nor kombu: the domain modules stay importable without them.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pymongo.errors import ConfigurationError, InvalidURI
from pymongo.uri_parser import parse_uri

from telemetry.errors import ConfigError

LogFormat = Literal["auto", "json", "text"]
Command = Literal["worker", "stream", "scrape", "demo", "api"]
QueueType = Literal["classic", "quorum"]
TaskEvents = Literal["all", "failures", "off"]

BROKER_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "memory"})
DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_MONGODB_URI = "mongodb://localhost:27017"
DEFAULT_QUEUE_NAME = "telemetry"
FILE_SUFFIX = "_FILE"
# The most work-queue shards; a layout check asks after each count up to it.
MAX_QUEUE_SHARDS = 32


def setting(
    default: Any = ...,
    *,
    env: str,
    help: str,
    flags: tuple[Command, ...] = (),
    flag: str | None = None,
    from_file: bool = False,
    **constraints: Any,
) -> Any:
    """A settings field with its environment variable, help text and the commands taking it.

    ``flag`` names the flag where it is not the field's name (``--loop`` for ``loop_mode``).
    ``from_file`` gives the variable a ``<NAME>_FILE`` twin naming a file to read the
    value from, as Docker and Kubernetes mount secrets.
    """
    extra: dict[str, JsonValue] = {"env": env, "flags": list(flags)}
    if flag is not None:
        extra["flag"] = flag
    if from_file:
        extra["from_file"] = True
    if default is ... and "default_factory" in constraints:
        return Field(description=help, json_schema_extra=extra, **constraints)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


class Settings(BaseModel):
    """Everything the collector, the streamer, the demo and the API can be told.

    Units are in the names. The first five environment variables are the
    names the original collector used; the rest follow the same plain style.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- the original collector's variables ----------------------------------------
    instance_id: str = setting(
        env="INSTANCE_ID",
        help="Collector instance name, in logs and statistics; the worker's node name is "
        "telemetry@<id>. Default: the host name.",
        flags=("worker", "stream", "scrape"),
        default_factory=socket.gethostname,
        min_length=1,
    )
    batch_size: int = setting(
        200,
        env="BATCH_SIZE",
        help="Points per database commit; 1 writes each point on its own.",
        flags=("worker",),
        ge=1,
    )
    max_concurrent_handlers: int = setting(
        10,
        env="MAX_CONCURRENT_HANDLERS",
        help="Most MongoDB operations in flight per worker (the client's pool size).",
        flags=("worker",),
        ge=1,
    )
    queue_buffer_size: int = setting(
        1000,
        env="QUEUE_BUFFER_SIZE",
        help="Most messages a worker holds unacked (prefetch); at least 2 x BATCH_SIZE.",
        flags=("worker",),
        ge=1,
    )
    queue_workers: int = setting(
        10,
        env="QUEUE_WORKERS",
        help="Worker threads, unless -c is given.",
        flags=("worker",),
        ge=1,
    )
    # -- servers -------------------------------------------------------------------
    broker_url: str = setting(
        DEFAULT_BROKER_URL,
        env="CELERY_BROKER_URL",
        help="RabbitMQ URL; several separated by ';' are tried in turn (failover).",
        from_file=True,
    )
    broker_tls_ca_file: Path | None = setting(
        None,
        env="BROKER_TLS_CA_FILE",
        help="PEM file of the CA(s) that sign the broker's certificate, for amqps:// URLs. "
        "Default: the system's trusted CAs.",
    )
    broker_tls_cert_file: Path | None = setting(
        None,
        env="BROKER_TLS_CERT_FILE",
        help="PEM client certificate shown to the broker (with BROKER_TLS_KEY_FILE); with no "
        "password in the URL the broker logs the client in by it (EXTERNAL).",
    )
    broker_tls_key_file: Path | None = setting(
        None,
        env="BROKER_TLS_KEY_FILE",
        help="PEM private key of BROKER_TLS_CERT_FILE; it must not be encrypted (protect it "
        "by its file permissions).",
    )
    broker_tls_verify_hostname: bool = setting(
        True,
        env="BROKER_TLS_VERIFY_HOSTNAME",
        help="Check that the broker's certificate names the host each URL connects to (true "
        "or false). The certificate chain is checked either way.",
    )
    mongodb_uri: str = setting(
        DEFAULT_MONGODB_URI,
        env="MONGODB_URI",
        help="MongoDB connection URI.",
        flags=("worker",),
        from_file=True,
    )
    mongodb_db: str = setting(
        "telemetry",
        env="MONGODB_DB",
        help="MongoDB database name.",
        flags=("worker",),
        min_length=1,
        pattern=r"^[^/\\. \"$]+$",
    )
    queue_name: str = setting(
        DEFAULT_QUEUE_NAME,
        env="TELEMETRY_QUEUE",
        help="Queue to publish to and consume; dead letters go to <name>.dead.",
        flags=("worker",),
        min_length=1,
    )
    queue_type: QueueType = setting(
        "quorum",
        env="QUEUE_TYPE",
        help="quorum (replicated on a cluster, with a delivery limit) or classic. Every worker "
        "and producer of a queue must agree; docs/scaling.md says how to change it.",
        flags=("worker", "stream", "scrape"),
    )
    queue_shards: int = setting(
        1,
        env="QUEUE_SHARDS",
        help="Work queues, each GPU's points in one of them (by a hash of gpu_uuid): 1 is "
        "the single queue <name>; N > 1 makes <name>.0-of-N ... <name>.(N-1)-of-N, their "
        "leaders spread over a cluster's nodes; at most 32. Every worker and producer must "
        "agree; docs/operations.md says how to change it.",
        flags=("worker", "stream", "scrape"),
        ge=1,
        le=MAX_QUEUE_SHARDS,
    )
    worker_shards: str | None = setting(
        None,
        env="WORKER_SHARDS",
        help="The shards this worker consumes, as numbers separated by ',' (0,2). "
        "Default: all of them.",
        flags=("worker",),
        flag="--shards",
        pattern=r"^\d+(,\d+)*$",
    )
    drain_queue_shards: int | None = setting(
        None,
        env="DRAIN_QUEUE_SHARDS",
        help="While QUEUE_SHARDS changes: the old count, whose queues the worker consumes "
        "too until they are empty (docs/operations.md).",
        flags=("worker",),
        flag="--drain-shards",
        ge=1,
        le=MAX_QUEUE_SHARDS,
    )
    delivery_limit: int = setting(
        5,
        env="DELIVERY_LIMIT",
        help="Quorum queues: a message delivered this many times more without an ack (its "
        "worker died or lost the broker each time) is dead-lettered.",
        flags=("worker",),
        ge=1,
    )
    # -- the worker ----------------------------------------------------------------
    flush_interval_ms: int = setting(
        200,
        env="FLUSH_INTERVAL_MS",
        help="Most milliseconds a point waits for its batch to fill.",
        flags=("worker",),
        ge=1,
    )
    max_message_bytes: int = setting(
        262_144,
        env="MAX_MESSAGE_BYTES",
        help="A message whose body is longer than this is refused before it is decoded: "
        "recorded in 'rejected' as oversize, acked, never retried. A point's message is "
        "about 1 KB, the largest valid one about 70 KB.",
        flags=("worker",),
        ge=1024,
    )
    max_retries: int = setting(
        5,
        env="MAX_RETRIES",
        help="Storage retries before a message is dead-lettered. The ingest task's "
        "max_retries (task_annotations in celeryconfig.py) wins over it.",
        flags=("worker",),
        ge=0,
    )
    retry_backoff_s: float = setting(
        1.0,
        env="RETRY_BACKOFF_S",
        help="First retry's backoff ceiling, doubled each time. The ingest task's "
        "retry_backoff wins over it.",
        gt=0,
    )
    retry_backoff_max_s: float = setting(
        60.0,
        env="RETRY_BACKOFF_MAX_S",
        help="Largest backoff between two retries. The ingest task's retry_backoff_max wins "
        "over it.",
        gt=0,
    )
    stats_interval_s: float = setting(
        10.0,
        env="STATS_INTERVAL_S",
        help="Seconds between statistics log lines.",
        flags=("worker",),
        gt=0,
    )
    mongo_timeout_ms: int = setting(
        5000,
        env="MONGO_TIMEOUT_MS",
        help="MongoDB server-selection and connect time-out, unless the URI sets them.",
        ge=100,
    )
    rejected_max_docs: int = setting(
        10_000,
        env="REJECTED_MAX_DOCS",
        help="Size of the capped 'rejected' collection, in documents.",
        ge=1,
    )
    retention_days: int = setting(
        0, env="RETENTION_DAYS", help="Delete points older than this; 0 keeps them.", ge=0
    )
    gpu_last_seen_lag_s: float = setting(
        60.0,
        env="GPU_LAST_SEEN_LAG_S",
        help="How far gpus.last_seen may trail the newest point, to skip needless upserts.",
        ge=0,
    )
    task_events: TaskEvents = setting(
        "all",
        env="TASK_EVENTS",
        help="Task events for Flower: all; failures (no events for points a batch stored or "
        "rejected, so Flower keeps up at any rate and still shows retries and failures); off.",
        flags=("worker",),
        # Celery's worker has a -E/--task-events switch of its own.
        flag="--task-events-mode",
    )
    metrics_port: int = setting(
        9842,
        env="METRICS_PORT",
        help="Port of the worker's /metrics, /healthz and /readyz; 0 turns them off.",
        flags=("worker",),
        ge=0,
        le=65_535,
    )
    log_format: LogFormat = setting(
        "auto", env="LOG_FORMAT", help="auto (text on a terminal, else JSON), json or text."
    )
    # -- the streamer --------------------------------------------------------------
    csv_path: Path | None = setting(
        None, env="CSV_PATH", help="The file `telemetry stream` reads when no PATHS are given."
    )
    loop_mode: bool = setting(
        False,
        env="LOOP_MODE",
        help="Stream the files round and round until stopped (true or false).",
        flags=("stream",),
        flag="--loop",
    )
    stream_interval_s: float = setting(
        0.0,
        env="STREAM_INTERVAL",
        help="Seconds the streamer pauses between rows.",
        flags=("stream",),
        flag="--interval",
        ge=0,
    )
    stream_max_backlog: int | None = setting(
        None,
        env="STREAM_MAX_BACKLOG",
        help="The streamer pauses while the queue holds more than this. "
        "Default: 100 x QUEUE_BUFFER_SIZE.",
        flags=("stream",),
        flag="--max-backlog",
        ge=1,
    )
    # -- the scraper ---------------------------------------------------------------
    scrape_targets_file: Path | None = setting(
        None,
        env="SCRAPE_TARGETS_FILE",
        help="Targets of `telemetry scrape` in Prometheus file_sd format (JSON or YAML); "
        "re-read when it changes.",
        flags=("scrape",),
        flag="--targets-file",
    )
    scrape_interval_s: float = setting(
        15.0,
        env="SCRAPE_INTERVAL_S",
        help="Seconds between two scrapes of one target.",
        flags=("scrape",),
        flag="--interval",
        gt=0,
    )
    scrape_timeout_s: float = setting(
        10.0,
        env="SCRAPE_TIMEOUT_S",
        help="Most seconds one scrape may take, body included; less than the interval.",
        flags=("scrape",),
        flag="--timeout",
        gt=0,
    )
    scrape_concurrency: int = setting(
        16,
        env="SCRAPE_CONCURRENCY",
        help="Most scrapes in flight at once.",
        flags=("scrape",),
        flag="--concurrency",
        ge=1,
        le=1024,
    )
    scrape_max_body_bytes: int = setting(
        10 * 1024 * 1024,
        env="SCRAPE_MAX_BODY_BYTES",
        help="A target whose body is larger than this fails its scrape.",
        flags=("scrape",),
        flag="--max-body-bytes",
        ge=1024,
    )
    scrape_frozen_after: int = setting(
        4,
        env="SCRAPE_FROZEN_AFTER",
        help="A target whose payload has not changed for this many scrapes is flagged frozen.",
        flags=("scrape",),
        flag="--frozen-after",
        ge=2,
    )
    scrape_honor_timestamps: bool = setting(
        True,
        env="SCRAPE_HONOR_TIMESTAMPS",
        help="A sample that carries its own timestamp keeps it; otherwise every point of a "
        "scrape gets the scrape's start time (true or false).",
        flags=("scrape",),
        flag="--honor-timestamps",
    )
    scrape_shard: str | None = setting(
        None,
        env="SCRAPE_SHARD",
        help="i/N: scrape only the targets whose stable hash falls in shard i of N, so N "
        "scrapers split one targets file without overlap.",
        flags=("scrape",),
        flag="--shard",
        pattern=r"^\d+/\d+$",
    )
    scraper_port: int = setting(
        9843,
        env="SCRAPER_PORT",
        help="Port of the scraper's /metrics and /healthz; 0 turns them off.",
        flags=("scrape",),
        flag="--metrics-port",
        ge=0,
        le=65_535,
    )
    # -- the read API --------------------------------------------------------------
    api_host: str = setting(
        "127.0.0.1",
        env="API_HOST",
        help="Address `telemetry api` listens on.",
        flags=("api",),
        flag="--host",
        min_length=1,
    )
    api_port: int = setting(
        8000,
        env="API_PORT",
        help="Port `telemetry api` listens on.",
        flags=("api",),
        flag="--port",
        ge=1,
        le=65_535,
    )
    api_token: SecretStr | None = setting(
        None,
        env="API_TOKEN",
        help="When set, every /api route needs 'Authorization: Bearer <it>'.",
        from_file=True,
    )
    api_stale_after_s: float = setting(
        300.0,
        env="API_STALE_AFTER_S",
        help="The dashboard marks a GPU stale when its last point is older than this.",
        gt=0,
    )
    # -- Flower --------------------------------------------------------------------
    flower_basic_auth: SecretStr | None = setting(
        None,
        env="FLOWER_BASIC_AUTH",
        help="Flower's logins, user:password, several separated by ','; its pages and API "
        "need one. Read by `celery -A telemetry flower` through flowerconfig.py.",
        from_file=True,
    )

    # Which fields were given by a flag or the environment (not defaults).
    _given: frozenset[str] = PrivateAttr(default=frozenset())

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        for url in broker_urls(value):
            scheme = scheme_of(url)
            if scheme not in BROKER_SCHEMES:
                raise ValueError(f"scheme must be one of {sorted(BROKER_SCHEMES)}, got {scheme!r}")
        return value

    @model_validator(mode="after")
    def _check_broker_tls(self) -> Settings:
        schemes = {scheme_of(url) for url in broker_urls(self.broker_url)}
        tls_files = {
            "BROKER_TLS_CA_FILE": self.broker_tls_ca_file,
            "BROKER_TLS_CERT_FILE": self.broker_tls_cert_file,
            "BROKER_TLS_KEY_FILE": self.broker_tls_key_file,
        }
        given = [name for name, path in tls_files.items() if path is not None]
        if "amqps" in schemes and len(schemes) > 1:
            # A failover to a plain amqp:// host would send the password in the clear.
            raise ValueError("CELERY_BROKER_URL mixes amqps:// with plain URLs; use amqps:// only")
        if given and schemes != {"amqps"}:
            raise ValueError(f"{given[0]} is set but CELERY_BROKER_URL is not amqps://")
        if (self.broker_tls_cert_file is None) != (self.broker_tls_key_file is None):
            raise ValueError("BROKER_TLS_CERT_FILE and BROKER_TLS_KEY_FILE go together")
        for name, path in tls_files.items():
            if path is not None:
                check_pem_file(name, path)
        return self

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

    @field_validator("flower_basic_auth")
    @classmethod
    def _check_logins(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            logins(value.get_secret_value())
        return value

    @field_validator("scrape_shard")
    @classmethod
    def _check_shard(cls, value: str | None) -> str | None:
        if value is not None:
            index, count = (int(part) for part in value.split("/"))
            if count < 1 or index >= count:
                raise ValueError("must be i/N with N >= 1 and 0 <= i < N, e.g. 0/3")
        return value

    @model_validator(mode="after")
    def _check_shards(self) -> Settings:
        too_high = [index for index in self.consumed_shards if index >= self.queue_shards]
        if too_high:
            raise ValueError(
                f"WORKER_SHARDS names shard {too_high[0]}, but QUEUE_SHARDS={self.queue_shards} "
                f"numbers them 0 to {self.queue_shards - 1}"
            )
        if self.drain_queue_shards == self.queue_shards:
            raise ValueError("DRAIN_QUEUE_SHARDS is the old shard count; it equals QUEUE_SHARDS")
        return self

    @property
    def consumed_shards(self) -> list[int]:
        """The shards a worker consumes: WORKER_SHARDS, or every one."""
        if self.worker_shards is None:
            return list(range(self.queue_shards))
        return sorted({int(index) for index in self.worker_shards.split(",")})

    def given(self, field: str) -> bool:
        """Whether ``field`` came from a flag or the environment rather than its default."""
        return field in self._given

    @property
    def max_backlog(self) -> int:
        """The streamer's backlog limit, derived from the buffer size unless set."""
        if self.stream_max_backlog is not None:
            return self.stream_max_backlog
        return 100 * self.queue_buffer_size


def broker_urls(value: str) -> list[str]:
    """The URLs of a broker setting: one, or several separated by ``;`` for failover."""
    return [part.strip() for part in value.split(";") if part.strip()]


def logins(value: str) -> list[str]:
    """The ``user:password`` logins of a ``FLOWER_BASIC_AUTH`` value, as Flower splits it."""
    found = [login.strip() for login in value.split(",")]
    if not all(login.partition(":")[0] and login.partition(":")[2] for login in found):
        # The value is a secret: the message must not quote it.
        raise ValueError("must be user:password, several separated by ','")
    return found


def scheme_of(url: str) -> str:
    """The scheme of a broker URL (``amqps`` for ``amqps://host``), empty if it has none."""
    return url.split("://", 1)[0] if "://" in url else ""


def check_pem_file(name: str, path: Path) -> None:
    """Raise ValueError unless ``path`` is a readable PEM file usable without a password.

    py-amqp loads a client key with no password callback, so OpenSSL would
    prompt on the terminal (or fail) for an encrypted one: refuse it here, in words.
    """
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}={path} cannot be read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in text:
        raise ValueError(f"{name}={path} is not a PEM file")
    if b"ENCRYPTED" in text:
        raise ValueError(
            f"{name}={path} is encrypted; the broker client cannot use a key with a "
            "password: store it decrypted (openssl pkey -in KEY -out KEY.plain) and readable "
            "only by the collector's user"
        )


def env_name(field: str) -> str:
    """The environment variable of a settings field."""
    extra = Settings.model_fields[field].json_schema_extra
    # An invariant for mypy: every field is declared with its env (a test checks each).
    assert isinstance(extra, dict)  # nosec B101
    return str(extra["env"])


def flag_fields(command: Command) -> list[str]:
    """The settings fields ``command`` takes as flags (``--batch-size`` for ``batch_size``)."""
    found = []
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        flags = extra.get("flags") if isinstance(extra, dict) else None
        if isinstance(flags, list) and command in flags:
            found.append(name)
    return found


def flag_name(field: str) -> str:
    """The flag of a setting: ``--batch-size`` for ``batch_size`` unless declared otherwise."""
    extra = Settings.model_fields[field].json_schema_extra
    declared = extra.get("flag") if isinstance(extra, dict) else None
    return str(declared) if declared else "--" + field.replace("_", "-")


def flag_help(field: str) -> str:
    """A flag's help text: the field's, with its environment variable in brackets."""
    return f"{Settings.model_fields[field].description} [{env_name(field)}]"


def file_env_name(field: str) -> str | None:
    """The ``<NAME>_FILE`` twin of a setting's variable, or None if it takes no file."""
    extra = Settings.model_fields[field].json_schema_extra
    if isinstance(extra, dict) and extra.get("from_file"):
        return env_name(field) + FILE_SUFFIX
    return None


ENV_NAMES: dict[str, str] = {field: env_name(field) for field in Settings.model_fields}
"""Settings field → environment variable, for every setting."""
FILE_ENV_NAMES: dict[str, str] = {
    field: name for field in Settings.model_fields if (name := file_env_name(field)) is not None
}
"""Settings field → its ``_FILE`` variable, for the settings that take one."""
ALL_ENV_NAMES: tuple[str, ...] = (*ENV_NAMES.values(), *FILE_ENV_NAMES.values())
"""Every variable the package reads: the settings' and their ``_FILE`` twins."""


class RawValue(NamedTuple):
    """A setting's text as the environment gave it, and where it came from."""

    text: str
    variable: str
    path: str | None = None

    def source(self) -> str:
        """The variable, and for a file its ``_FILE`` variable and path: never the value."""
        if self.path is None:
            return self.variable
        return f"{self.variable} from {self.variable}{FILE_SUFFIX}={self.path}"


def read_secret_file(variable: str, path: str) -> str:
    """The text of the file a ``_FILE`` variable names, without its trailing newline.

    Raises :class:`ConfigError` naming the variable and the path, never the
    content, when the file is missing, unreadable or empty.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = "no such file"
    except IsADirectoryError:
        problem = "is a directory, not a file"
    except PermissionError:
        problem = "cannot be read: permission denied"
    except UnicodeDecodeError:
        # Its message quotes a byte of the content.
        problem = "is not UTF-8 text"
    except OSError as exc:
        problem = f"cannot be read: {exc.strerror or type(exc).__name__}"
    else:
        # Editors and `echo` end the file with a newline; it is not part of the secret.
        text = text.removesuffix("\n").removesuffix("\r")
        if text.strip():
            return text
        problem = "the file is empty"
    raise ConfigError(f"{variable}={path}: {problem}")


def raw_value(field: str, env: Mapping[str, str] | None = None) -> RawValue | None:
    """A setting's text from its variable or its ``_FILE`` twin; None when neither is set.

    A variable set to an empty string counts as not set. Setting both is an
    error, as is a ``_FILE`` naming a file that is missing, unreadable or empty.
    """
    environ = os.environ if env is None else env
    name = ENV_NAMES[field]
    raw = environ.get(name, "")
    file_name = FILE_ENV_NAMES.get(field)
    path = environ.get(file_name, "").strip() if file_name else ""
    if raw.strip() and path:
        raise ConfigError(f"{name} and {file_name} are both set: set only one of them")
    if path:
        assert file_name is not None
        return RawValue(read_secret_file(file_name, path), name, path)
    if raw.strip():
        return RawValue(raw.strip(), name)
    return None


def environment_value(field: str, env: Mapping[str, str] | None = None) -> str | None:
    """A setting's text from the environment (its variable or its ``_FILE`` twin), or None.

    For processes that need one setting and not the rest: Celery's own
    commands (the broker URL) and Flower (its logins). Raises
    :class:`ConfigError` as :func:`load_settings` does.
    """
    found = raw_value(field, env)
    return None if found is None else found.text


def flower_logins(env: Mapping[str, str] | None = None) -> list[str]:
    """Flower's ``basic_auth`` from ``FLOWER_BASIC_AUTH`` or ``FLOWER_BASIC_AUTH_FILE``.

    Empty when neither is set. Raises :class:`ConfigError` on a bad value,
    without quoting it.
    """
    found = raw_value("flower_basic_auth", env)
    if found is None:
        return []
    try:
        return logins(found.text)
    except ValueError as exc:
        where = found.source() if found.path else f"{found.variable}=<hidden>"
        raise ConfigError(f"invalid {where}: {exc}") from None


def load_settings(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build settings with flag > environment > default precedence.

    ``overrides`` holds values from flags; ``None`` values mean "not given".
    A variable set to an empty string counts as not set. A setting declared
    ``from_file`` may instead come from the file its ``<NAME>_FILE`` variable
    names (:func:`raw_value`); a flag still wins over it. Raises
    :class:`ConfigError` with one readable line on the first bad value; a
    secret's value is never part of it, nor is anything read from a file.
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    from_files: dict[str, str] = {}
    for field in ENV_NAMES:
        found = raw_value(field, env)
        if found is not None:
            values[field] = found.text
            origin[field] = found.variable
            if found.path is not None:
                from_files[field] = found.source()
    for field, value in (overrides or {}).items():
        if value is not None:
            values[field] = value
            origin[field] = flag_name(field)
            from_files.pop(field, None)
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A parser's message may quote part of the value (pymongo's do, for a URI).
        message = masked(first["msg"].removeprefix("Value error, "))
        if not first["loc"]:
            # A rule across several settings: the message names them.
            raise ConfigError(f"invalid settings: {message}") from exc
        field = str(first["loc"][0])
        if field in from_files:
            # What a file holds is never shown: the variable and the path say where it is.
            raise ConfigError(f"invalid {from_files[field]}: {message}") from exc
        where = origin.get(field, field)
        given = "<hidden>" if field in SECRET_FIELDS else masked(repr(values.get(field)))
        raise ConfigError(f"invalid {where}={given}: {message}") from exc
    settings._given = frozenset(values)
    return settings


SECRET_FIELDS = frozenset({"api_token", "flower_basic_auth"})
# user:password@ after a scheme. The user stops at ';' (a failover list's separator), the
# password does not: MongoDB allows an unescaped ';' in one. Neither crosses '/', so a URL
# without credentials cannot reach into the next one of a list.
_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/;\s]*):[^@/\s]*@", re.IGNORECASE
)


def masked(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``.

    Covers each URL of a ``;``-separated failover list, ``amqp``/``amqps``,
    and MongoDB URIs with several hosts and options (``mongodb+srv`` too).
    """
    return _PASSWORD.sub(lambda match: f"{match['scheme']}{match['user']}:***@", text)


def set_process_environment(name: str, value: str | None) -> None:
    """Set (or, with None, remove) a variable a library reads from this process's environment."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
