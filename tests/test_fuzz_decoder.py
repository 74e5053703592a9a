"""Property of the worker's message decoding: any body, content type, encoding and headers
end in exactly one outcome (stored, one RejectionKind, or dead-lettered as an unknown task),
and nothing escapes to the consumer loop, where it would stop the worker.

Each message goes the way a worker's consumer takes it: kombu builds the message
(decompressing a ``compression`` header) and hands a failure to ``on_decode_error``, as
kombu's ``Consumer._receive_callback`` does; otherwise the real
:meth:`GuardedConsumer.create_task_handler` handles it, in front of either a taker (the
batch path: decode and hold) or Celery's own request parsing and the real task function
(the per-task path). Either path ends in :func:`ingest` on a mongomock store.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import mongomock
import pytest
from celery import Celery
from celery.worker.request import Request
from hypothesis import event, given
from hypothesis import strategies as st
from kombu.message import Message

from telemetry.broker.retry_policy import RetryPolicy
from telemetry.broker.topology import TASK_NAME
from telemetry.config import Settings
from telemetry.errors import RejectionKind
from telemetry.store.lazy import LazyStore
from telemetry.store.mongo import MongoTelemetryStore
from telemetry.worker import tasks
from telemetry.worker.celery.intake import GuardedConsumer
from telemetry.worker.celery.message import OfferedMessage
from telemetry.worker.context import WorkerContext
from telemetry.worker.ingest import DecodedMessage, ingest
from telemetry.worker.recorder import Recorder
from tests.conftest import context_attached
from tests.fakes import UncachedGpus
from tests.fuzz_strategies import json_values, metadata_objects, point_objects, valid_points

COMPRESSORS = {"gzip": gzip.compress, "zlib": zlib.compress, "bzip2": bz2.compress}
# What a worker accepts (celery_settings.accept_content = ["json"]), as kombu is given it.
ACCEPT = {"application/json"}


class FakeChannel:
    """Just enough of a channel for Celery's own handlers to settle a message."""

    def basic_ack(self, *args: Any, **kwargs: Any) -> None:
        pass

    def basic_reject(self, *args: Any, **kwargs: Any) -> None:
        pass


class RecordingConsumer(GuardedConsumer):
    """The guarded consumer with its verdicts written down instead of acted on."""

    outcomes: list[str]

    def on_bad_message(self, message: Any, reason: str, kind: RejectionKind) -> None:
        self.outcomes.append(kind.value)

    def on_unknown_task_name(self, message: Any) -> None:
        self.outcomes.append("dead_lettered")


class Worker:
    """One consumer, its two paths into :func:`ingest`, and the store they write to."""

    def __init__(self, store: MongoTelemetryStore) -> None:
        self.store = store
        self.app = Celery("fuzz", set_as_current=False)
        self.taken: list[DecodedMessage] = []
        self.requests: list[Request] = []
        self.batching = True
        consumer = RecordingConsumer.__new__(RecordingConsumer)
        consumer.app = self.app
        consumer.strategies = {TASK_NAME: self.per_task}
        consumer.on_task_message = set()
        consumer.call_soon_ack = lambda *args, **kwargs: None
        consumer._restore_prefetch_count_after_connection_restart = lambda *args: None
        consumer._maximum_prefetch_restored = True
        consumer.restart_count = 0
        consumer.connection_errors = ()
        consumer.event_dispatcher = None
        consumer.takers[TASK_NAME] = self.take
        self.consumer = consumer
        self.handle = consumer.create_task_handler()

    def take(self, offered: OfferedMessage) -> bool:
        """What the batch strategy's taker reads of a message before holding it."""
        headers = offered.headers
        if not self.batching or headers.get("eta") or headers.get("retries"):
            return False
        _ = offered.delivery_count
        args, kwargs = offered.decode()
        self.taken.append(DecodedMessage(str(headers["id"]), args, kwargs))
        return True

    def per_task(self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any) -> None:
        """Celery's request parsing; the task runs later, on the pool (see :meth:`deliver`)."""
        self.requests.append(
            Request(message, app=self.app, hostname="fuzz@host", task=tasks.ingest_task, body=body)
        )

    def run(self, request: Request) -> str:
        """The task function as the pool calls it, and what it made of the message."""
        before = self.store.database["rejected"].count_documents({})
        result: str = tasks.ingest_task.run(*request.args, **request.kwargs)
        if result.startswith("rejected"):
            [record] = self.store.database["rejected"].find().skip(before)
            return str(record["kind"])
        return result

    def deliver(self, message: Message) -> list[str]:
        """Every outcome of one message, from arrival to its write."""
        self.consumer.outcomes = outcomes = []
        self.taken.clear()
        self.requests.clear()
        if message.errors:  # kombu's consumer reports these before any handler runs
            message._reraise_error(self.consumer.on_decode_error)
        else:
            self.handle(message)
        outcomes.extend(self.run(request) for request in self.requests)
        for outcome in ingest(self.store, self.taken, UncachedGpus()).outcomes:
            outcomes.append(outcome.rejection.value if outcome.rejection else outcome.kind)
        return outcomes


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    """A worker on a mongomock store, the task's app running with a context on it."""
    client: mongomock.MongoClient = mongomock.MongoClient(tz_aware=True)
    database = client["telemetry"]
    database.create_collection("rejected")
    settings = Settings()
    store = MongoTelemetryStore(database, settings)
    store.upsert_gpus = lambda updates, now: None  # type: ignore[method-assign]
    built = Worker(store)
    context = WorkerContext(
        settings,
        LazyStore(lambda: store),
        Recorder.fresh(),
        UncachedGpus(),
        RetryPolicy.of(settings),
    )
    with context_attached(tasks.ingest_task.app, context):
        yield built


task_bodies = st.builds(
    lambda args, kwargs, embed: [args, kwargs, embed],
    st.lists(valid_points | point_objects | metadata_objects | json_values, max_size=3),
    st.dictionaries(
        st.sampled_from(["point", "metadata", "self", "other"]),
        valid_points | point_objects | metadata_objects,
        max_size=2,
    ),
    st.none() | st.just({"callbacks": None, "errbacks": None, "chain": None, "chord": None}),
)
# What a producer sends: a valid point, metadata that may or may not be.
valid_task_bodies = st.builds(
    lambda point, metadata: [[], {"point": point, "metadata": metadata}, None],
    valid_points,
    metadata_objects,
)
json_texts = (task_bodies | json_values).map(json.dumps)
bodies = (
    json_texts.map(str.encode)
    | st.binary(max_size=64)
    | json_texts.map(lambda text: text.encode("utf-16"))
    | st.sampled_from([b"", b"[[], {", b"\xff\xfe", b'[[], {"__type__": "bytes"}, {}]'])
)
header_values = (
    st.none() | st.integers() | st.text(max_size=12) | st.lists(st.integers(), max_size=2)
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "task": st.sampled_from([TASK_NAME, "other.task", ""]) | header_values,
        "id": st.uuids().map(str) | header_values,
        "compression": st.sampled_from(["gzip", "zlib", "bzip2", "lzma", "bogus"]),
        "retries": st.sampled_from([0, 1]) | header_values,
        "eta": st.sampled_from(["2025-07-18T20:42:34+00:00", "tomorrow"]) | header_values,
        "x-delivery-count": st.sampled_from([0, 2, "3", "x"]) | header_values,
    },
)


content_types = (
    st.sampled_from(
        ["application/json", "application/x-python-serialize", "application/x-yaml", "text/plain"]
    )
    | st.none()
    | st.text(max_size=10)
)
content_encodings = (
    st.sampled_from(["utf-8", "UTF-8", "binary", "latin-1", "utf-16", "bogus"]) | st.none()
)
# A message as producers send it, the body being what varies most.
well_formed = st.fixed_dictionaries(
    {
        "body": (valid_task_bodies | task_bodies).map(json.dumps).map(str.encode),
        "content_type": st.just("application/json"),
        "content_encoding": st.just("utf-8"),
        "headers": st.builds(
            lambda task_id, extra: {"task": TASK_NAME, "id": task_id, **extra},
            st.uuids().map(str),
            headers,
        ),
    }
)
anything = st.fixed_dictionaries(
    {
        "body": bodies,
        "content_type": content_types,
        "content_encoding": content_encodings,
        "headers": headers,
    }
)


@given(
    sent=well_formed | anything,
    compressed=st.booleans(),
    as_text=st.booleans(),
    batching=st.booleans(),
)
def test_any_message_ends_in_exactly_one_outcome_and_never_raises(
    worker: Worker, sent: dict[str, Any], compressed: bool, as_text: bool, batching: bool
) -> None:
    # given: a body compressed as its header says (or not), handed over as py-amqp does
    body, headers = sent["body"], sent["headers"]
    compressor = COMPRESSORS.get(headers.get("compression", ""))
    if compressed and compressor is not None:
        body = compressor(body)
    payload: bytes | str = body
    if as_text and sent["content_encoding"] in ("utf-8", None) and "compression" not in headers:
        with contextlib.suppress(UnicodeDecodeError):
            payload = body.decode("utf-8")
    message = Message(
        body=payload,
        content_type=sent["content_type"],
        content_encoding=sent["content_encoding"],
        headers=headers,
        accept=ACCEPT,
        channel=FakeChannel(),
        delivery_tag=1,
    )
    worker.batching = batching
    # when
    outcomes = worker.deliver(message)
    # then
    assert len(outcomes) == 1, outcomes
    assert outcomes[0] in {"stored", "duplicate", "dead_lettered", *RejectionKind}, outcomes
    event(outcomes[0])
