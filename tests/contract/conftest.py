"""The storage backends the contract suite runs against, each as the storage port sees it.

* ``mongomock``: in memory, always;
* ``secantusdb``: the session's SecantusDB over a real socket (missing: a skip
  on a laptop, a failure under ``CI=true``);
* ``mongodb``: a real MongoDB, a backend of the suite only when ``MONGODB_URI``
  points at one (no machine here can run ``mongod``: production's docker compose
  has it), and then a failure, not a skip, when it does not answer.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pymongo.database import Database

from telemetry.config import Settings
from telemetry.errors import StorageUnavailable
from telemetry.store.client import open_client, ping
from telemetry.store.mongo import MongoTelemetryStore
from telemetry.store.mongo_reads import MongoTelemetryReader
from telemetry.store.port import TelemetryReads, TelemetryWrites
from tests.conftest import MongomockTelemetryStore, server_missing

# Read when this module is imported: the autouse clean_env fixture clears it for each test.
REAL_MONGODB_URI = os.environ.get("MONGODB_URI")
CONNECT_TIMEOUT_MS = 2_000


@dataclass
class Backend:
    """One backend behind the port: the writes and reads under test, and the raw
    database, for assertions on the stored format (docs/storage.md)."""

    name: str
    writes: TelemetryWrites
    reads: TelemetryReads
    database: Database[dict[str, Any]]


# The backends with a server behind them; "mongodb" only when MONGODB_URI names one.
SERVER_BACKENDS = [
    pytest.param("secantusdb", marks=pytest.mark.integration),
    *([pytest.param("mongodb", marks=pytest.mark.integration)] if REAL_MONGODB_URI else []),
]
EVERY_BACKEND = ["mongomock", *SERVER_BACKENDS]


@pytest.fixture(params=EVERY_BACKEND)
def backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Backend]:
    """A fresh database on each backend, written and read through the port."""
    if request.param == "mongomock":
        store = MongomockTelemetryStore(settings)
        reader = MongoTelemetryReader(store.database)
        yield Backend("mongomock", store, reader, store.database)
        return
    if request.param == "secantusdb":
        uri = request.getfixturevalue("mongo_server").uri
    else:
        assert REAL_MONGODB_URI is not None, "mongodb is a backend only with MONGODB_URI"
        uri = REAL_MONGODB_URI
    client = open_client(uri, timeout_ms=CONNECT_TIMEOUT_MS, app_name="telemetry-contract")
    try:
        ping(client)
    except StorageUnavailable as exc:
        client.close()
        server_missing(f"{request.param} at the contract's URI", exc)
    name = f"contract_{uuid.uuid4().hex[:12]}"
    database = client[name]
    try:
        yield Backend(
            request.param,
            MongoTelemetryStore(database, settings),
            MongoTelemetryReader(database),
            database,
        )
    finally:
        client.drop_database(name)
        client.close()
