"""The one place a ``MongoClient`` is made, and the URIs the project composes itself.

Every client is timezone-aware and connects lazily. Its server-selection and
connect time-outs are the caller's unless the URI sets its own (the URI wins
over our defaults), except for a probe, whose short time-outs must win so a
readiness check answers in time. TLS and the login come from the URI in
``MONGODB_URI`` (``tls=true``, ``tlsCAFile``, the user and password), which the
client reads as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo import MongoClient
from pymongo.errors import ConfigurationError, InvalidURI
from pymongo.uri_parser import parse_uri

from telemetry.store.translation import translated_errors

Client = MongoClient[dict[str, Any]]

# SecantusDB, the embedded server, is slow with retryable writes; the collector's
# writes are idempotent (a point's key is its _id) and retried by the worker anyway.
LOCAL_SERVER_OPTIONS = {"retryWrites": "false"}


def open_client(
    uri: str,
    *,
    timeout_ms: int,
    app_name: str,
    pool_size: int | None = None,
    probe: bool = False,
) -> Client:
    """A client for ``uri``; ``probe`` makes the time-outs (socket too) win over the URI's."""
    options: dict[str, Any] = {"appname": app_name}
    if pool_size is not None:
        options["maxPoolSize"] = pool_size
    given = set() if probe else {key.lower() for key in uri_options(uri)}
    # Keyword arguments would win over the URI; only the options it leaves out are set.
    if "serverselectiontimeoutms" not in given:
        options["serverSelectionTimeoutMS"] = timeout_ms
    if "connecttimeoutms" not in given:
        options["connectTimeoutMS"] = timeout_ms
    if probe:
        options["socketTimeoutMS"] = timeout_ms
    return MongoClient(uri, tz_aware=True, **options)


def ping(client: Client) -> None:
    """Return when the server answers now; raise StorageUnavailable saying why not."""
    with translated_errors("pinging the database"):
        client.admin.command("ping")


class MongoProbe:
    """A ping on a client of its own with short time-outs: the readiness side of the port.

    Its own client, so a probe neither waits behind other work on a shared
    pool nor takes ``MONGO_TIMEOUT_MS`` to give up.
    """

    def __init__(self, uri: str, timeout_ms: int, app_name: str) -> None:
        self._client = open_client(
            uri, timeout_ms=timeout_ms, app_name=app_name, pool_size=1, probe=True
        )

    def ping(self) -> None:
        """Return when the server answers now; raise StorageUnavailable saying why not."""
        ping(self._client)

    def close(self) -> None:
        """Close the client."""
        self._client.close()


def uri_options(uri: str) -> dict[str, Any]:
    """The options written in a MongoDB URI; empty for SRV URIs (parsing one resolves DNS)
    and for a URI pymongo cannot parse (the client then says why)."""
    if uri.startswith("mongodb+srv://"):
        return {}
    try:
        options: dict[str, Any] = parse_uri(uri)["options"]
    except (InvalidURI, ConfigurationError, ValueError):
        return {}
    return options


def local_server_uri(host: str, port: int, options: Mapping[str, str] | None = None) -> str:
    """The URI of a server the project starts itself, retryable writes off; ``options``
    (``tls``, ``tlsCAFile`` …) join the query."""
    query = "&".join(
        f"{name}={value}" for name, value in {**LOCAL_SERVER_OPTIONS, **(options or {})}.items()
    )
    return f"mongodb://{host}:{port}/?{query}"
