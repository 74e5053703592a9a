"""The storage backends the contract suite runs against, each as the storage port sees it.

* ``mongomock``: in memory, always;
* ``secantusdb``: the session's SecantusDB over a real socket (missing: a skip
  on a laptop, a failure under ``CI=true``);
* ``mongodb``: a real MongoDB when ``MONGODB_URI`` points at one, skipped otherwise.
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
# What a backend cannot do, so a test that needs it is skipped there with the reason.
DATE_ARITHMETIC = "date arithmetic ($toLong of a date), which the bucket pages use"


@dataclass
class Backend:
    """One backend behind the port: the writes and reads under test, and the raw
    database, for assertions on the stored format (docs/storage.md)."""

    name: str
    writes: TelemetryWrites
    reads: TelemetryReads
    database: Database[dict[str, Any]]
    lacks: frozenset[str] = frozenset()

    def require(self, feature: str) -> None:
        """Skip the test on a backend that lacks ``feature``."""
        if feature in self.lacks:
            pytest.skip(f"{self.name} lacks {feature}")


@pytest.fixture(
    params=[
        "mongomock",
        pytest.param("secantusdb", marks=pytest.mark.integration),
        pytest.param("mongodb", marks=pytest.mark.integration),
    ]
)
def backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Backend]:
    """A fresh database on each backend, written and read through the port."""
    if request.param == "mongomock":
        store = MongomockTelemetryStore(settings)
        reader = MongoTelemetryReader(store.database)
        yield Backend("mongomock", store, reader, store.database, frozenset({DATE_ARITHMETIC}))
        return
    if request.param == "secantusdb":
        uri = request.getfixturevalue("mongo_server").uri
    elif REAL_MONGODB_URI is None:
        pytest.skip("MONGODB_URI is not set: no real MongoDB to run the contract against")
    else:
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
