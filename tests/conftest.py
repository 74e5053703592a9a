"""Shared fixtures. Servers are pinged; under CI=true a missing server fails the run."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

import mongomock
import pytest
from celery import Celery
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from telemetry.broker.retry_policy import RetryPolicy
from telemetry.config import ALL_ENV_NAMES, Settings, load_settings
from telemetry.demo.embedded import SecantusServer
from telemetry.errors import TelemetryError
from telemetry.observe.metrics import CollectorMetrics
from telemetry.observe.stats import Stats
from telemetry.store.lazy import LazyStore
from telemetry.store.mongo import GpuUpdate, MongoTelemetryStore
from telemetry.worker.context import CONTEXT_ATTRIBUTE, WorkerContext, attach_context
from telemetry.worker.recorder import Recorder
from tests.fakes import UncachedGpus

# Property tests (tests/test_fuzz_*.py) are bounded so the whole fuzz run stays under a
# minute on a 2-core CI machine. Under CI=true they are derandomized: a red CI run
# repeats exactly, and a green one cannot turn red by luck on the next push. Locally
# each run explores new inputs and keeps failures in .hypothesis/ for the next run;
# HYPOTHESIS_PROFILE=deep explores longer.
hypothesis_settings.register_profile(
    "ci",
    max_examples=400,
    deadline=1000,
    derandomize=True,
    database=None,
    print_blob=True,
    # The machine is shared: a slow example is the neighbour's load, not ours.
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.register_profile("dev", max_examples=400, deadline=1000)
hypothesis_settings.register_profile("deep", max_examples=5000, deadline=None)
hypothesis_settings.load_profile(
    os.environ.get(
        "HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI", "").lower() == "true" else "dev"
    )
)

# Every variable the package reads (the _FILE twins too), from the one declaration in
# telemetry.config; cleared so a developer's shell cannot change a test.
COLLECTOR_ENV = ALL_ENV_NAMES


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without the collector's environment variables."""
    for name in COLLECTOR_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def settings() -> Settings:
    """Default settings with a fixed instance id."""
    return load_settings(env={}, overrides={"instance_id": "test-1"})


class MongomockTelemetryStore(MongoTelemetryStore):
    """The MongoDB store on a mongomock database, GPU upserts one by one.

    mongomock's bulk_write rejects pymongo 4.20's UpdateOne, so each GPU's
    upsert document (the same :meth:`GpuUpdate.spec`) goes in its own
    update_one; the real bulk write runs against SecantusDB.
    """

    def __init__(self, settings: Settings) -> None:
        database = mongomock.MongoClient(tz_aware=True)["telemetry"]
        # mongomock cannot make capped collections; the capped one is covered against SecantusDB.
        database.create_collection("rejected")
        super().__init__(database, settings)

    def upsert_gpus(self, updates: Sequence[GpuUpdate], now: datetime) -> None:
        for update in updates:
            self.database["gpus"].update_one(
                {"_id": update.gpu_uuid}, update.spec(now), upsert=True
            )


@pytest.fixture
def mock_store(settings: Settings) -> MongoTelemetryStore:
    """A store on an in-memory mongomock database."""
    return MongomockTelemetryStore(settings)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecantusServer]:
    """One SecantusDB server for the session, in memory, pinged."""
    log = tmp_path_factory.mktemp("secantus") / "server.log"
    server = SecantusServer(":memory:", log_path=log)
    try:
        server.start()
    except TelemetryError as exc:
        server_missing("SecantusDB", exc)
    yield server
    server.stop()


@pytest.fixture
def stats() -> Stats:
    """Fresh counters."""
    return Stats()


@pytest.fixture
def collector_metrics() -> CollectorMetrics:
    """Fresh metrics, in a registry of their own."""
    return CollectorMetrics.fresh()


@pytest.fixture
def recorder(stats: Stats, collector_metrics: CollectorMetrics) -> Recorder:
    """A recorder counting into ``stats`` and ``collector_metrics``."""
    return Recorder(stats, collector_metrics)


@pytest.fixture
def worker_context(
    settings: Settings, mock_store: MongoTelemetryStore, recorder: Recorder
) -> WorkerContext:
    """A worker context on the mongomock store, writing every GPU update, counting into
    ``recorder``, retrying as the settings say."""
    return WorkerContext(
        settings, LazyStore(lambda: mock_store), recorder, UncachedGpus(), RetryPolicy.of(settings)
    )


@pytest.fixture
def sample_point() -> dict[str, object]:
    """One valid point as a producer sends it."""
    return {
        "gpu_uuid": "GPU-5fd4f087-86f3-7a43-b711-4771313afc50",
        "metric_name": "DCGM_FI_DEV_GPU_UTIL",
        "value": 87.5,
        "timestamp": "2025-07-18T20:42:34Z",
        "labels_raw": 'DCGM_FI_DRIVER_VERSION="535.129.03",Hostname="mtv5-dgx1-hgpu-031",gpu="0"',
    }


@pytest.fixture
def sample_metadata() -> dict[str, object]:
    """The metadata that goes with :func:`sample_point`."""
    return {
        "hostname": "mtv5-dgx1-hgpu-031",
        "device": "nvidia0",
        "gpu_index": 0,
        "model_name": "NVIDIA H100 80GB HBM3",
    }


def server_missing(what: str, error: BaseException) -> None:
    """Skip on a laptop, but fail under CI: a missing server must never look green."""
    message = f"{what} is not reachable: {error}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/integration are marked ``integration``."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def tmp_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """monkeypatch, named for tests that only set environment variables."""
    yield monkeypatch


@contextmanager
def context_attached(app: Celery, context: WorkerContext) -> Iterator[Celery]:
    """``app`` running with ``context`` as a started worker would, until the block ends;
    then with the context it had before, if any."""
    previous = vars(app).get(CONTEXT_ATTRIBUTE)
    attach_context(app, context)
    try:
        yield app
    finally:
        if previous is None:
            delattr(app, CONTEXT_ATTRIBUTE)
        else:
            attach_context(app, previous)


@pytest.fixture
def collector_app(worker_context: WorkerContext) -> Iterator[Celery]:
    """The collector's Celery app, running with ``worker_context`` as a started worker would."""
    from telemetry.worker.tasks import app  # registers telemetry.ingest

    with context_attached(app, worker_context):
        yield app
