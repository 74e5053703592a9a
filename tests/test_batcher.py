"""The batch path of one consumer, driven through a fake consumer port.

No broker and no Celery worker: the port runs the pool job when the test
says so, queues the consumer-thread calls, and records acks beside the
store's writes, so a test sees what was acked and when.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from telemetry.errors import StorageUnavailable
from telemetry.store.lazy import LazyStore
from telemetry.store.mongo import MongoTelemetryStore
from telemetry.worker.batcher import Batcher, BatchOptions
from telemetry.worker.batching import write_batch
from telemetry.worker.context import WorkerContext

TASK = "telemetry.ingest"


class FakeOfferedMessage:
    """A task message as the batcher sees it, recording how it was settled."""

    def __init__(self, task_id: str, kwargs: dict[str, Any], log: list[Any], **headers: Any):
        self.headers = {"id": task_id, "task": TASK, **headers}
        self.kwargs = kwargs
        self.delivery_count = int(headers.pop("delivery_count", 0))
        self.channel_open = True
        self.acknowledged = False
        self.log = log

    def decode(self) -> tuple[Any, Any]:
        return [], self.kwargs

    def ack(self) -> None:
        self.acknowledged = True
        self.log.append(("ack", self.headers["id"]))

    def requeue(self) -> None:
        self.acknowledged = True
        self.log.append(("requeue", self.headers["id"]))

    def hand_to(self, handler: Callable[..., Any]) -> Any:
        return handler(self)


class FakeEntry:
    def __init__(self, entries: list[FakeEntry], delay: float, call: Callable[[], None]):
        self.entries, self.delay, self.call = entries, delay, call

    def cancel(self) -> None:
        self.entries.remove(self)


class FakePort:
    """The consumer as the batcher uses it; the pool and the timer run when told to."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.jobs: list[tuple[Any, tuple[Any, ...], Any, Any]] = []
        self.soon: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.timers: list[FakeEntry] = []
        self.takers: dict[str, Callable[[Any], bool]] = {}
        self.slot: Any = None
        self.settled_events: list[Any] = []

    def offered(self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any) -> Any:
        return message

    def take_first(self, task_name: str, take: Callable[[Any], bool]) -> None:
        self.takers[task_name] = take

    def ack_together(self, offered: list[Any]) -> None:
        for one in offered:
            one.ack()

    def run_in_pool(self, job: Any, args: tuple[Any, ...], on_result: Any, on_error: Any) -> None:
        self.jobs.append((job, args, on_result, on_error))

    def call_soon(self, function: Callable[..., Any], *args: Any) -> None:
        self.soon.append((function, args))

    def later(self, seconds: float, function: Callable[[], None]) -> FakeEntry:
        entry = FakeEntry(self.timers, seconds, function)
        self.timers.append(entry)
        return entry

    def events(self) -> Any:
        port = self

        class Sender:
            def send_settled(self, task_name: str, settled: Any, runtime_s: float) -> None:
                port.settled_events.extend(settled)

        return Sender()

    def swap_slot(self, value: Any) -> Any:
        previous, self.slot = self.slot, value
        return previous

    def run_jobs(self) -> None:
        """The pool runs every job handed to it; its results come back to the consumer."""
        jobs, self.jobs = self.jobs, []
        for job, args, on_result, on_error in jobs:
            try:
                on_result(job(*args))
            except Exception as exc:
                on_error(exc)

    def run_soon(self) -> None:
        """The consumer's thread runs what was queued for it, in order."""
        while self.soon:
            function, args = self.soon.pop(0)
            function(*args)

    def fire_timer(self) -> None:
        entry = min(self.timers, key=lambda entry: entry.delay)
        self.timers.remove(entry)
        entry.call()


class RecordingStore:
    """The mongomock store, with each write noted in the shared log once it returned."""

    def __init__(self, store: MongoTelemetryStore, log: list[Any]) -> None:
        self._store = store
        self.log = log
        self.failure: Exception | None = None
        self.written_before_failure = 0

    def upsert_gpus(self, updates: Any, now: Any) -> None:
        self._store.upsert_gpus(updates, now)

    def insert_points(self, documents: Any) -> Any:
        if self.failure is not None:
            self._store.insert_points(documents[: self.written_before_failure])
            raise self.failure
        results = self._store.insert_points(documents)
        self.log.append(("written", len(documents)))
        return results

    def count(self) -> int:
        return int(self._store.database["telemetry"].count_documents({}))

    def record_rejected(self, rejections: Any) -> None:
        self._store.record_rejected(rejections)
        self.log.append(("rejected", len(rejections)))


@pytest.fixture
def log() -> list[Any]:
    """What happened, in order: writes that returned, acks, requeues, per-task hand-offs."""
    return []


@pytest.fixture
def store(mock_store: MongoTelemetryStore, log: list[Any]) -> RecordingStore:
    """The mongomock store, recording its writes."""
    return RecordingStore(mock_store, log)


@pytest.fixture
def context(worker_context: WorkerContext, store: RecordingStore) -> WorkerContext:
    """The worker context, on the recording store."""
    worker_context.stores = LazyStore(lambda: store)  # type: ignore[arg-type, return-value]
    return worker_context


@pytest.fixture
def port(log: list[Any]) -> FakePort:
    return FakePort(log)


def make_batcher(
    port: FakePort,
    log: list[Any],
    context: WorkerContext,
    size: int = 3,
    now: list[float] | None = None,
) -> Batcher:
    clock = now or [0.0]

    def per_task(offered: Any) -> None:
        log.append(("per_task", offered.headers["id"]))

    batcher = Batcher(
        TASK,
        per_task,
        port,  # type: ignore[arg-type]
        functools.partial(write_batch, context),
        BatchOptions(size=size, flush_interval_s=0.2, send_events=True),
        context.recorder,
        clock=lambda: clock[0],
    )
    batcher.start()
    return batcher


def point(sample_point: dict[str, Any], second: int) -> dict[str, Any]:
    return {"point": {**sample_point, "timestamp": f"2025-07-18T20:42:{second:02d}Z"}}


def messages(
    sample_point: dict[str, Any], log: list[Any], count: int, **headers: Any
) -> list[FakeOfferedMessage]:
    return [
        FakeOfferedMessage(f"m{second}", point(sample_point, second), log, **headers)
        for second in range(count)
    ]


def test_a_full_buffer_goes_to_the_pool_and_is_acked_after_its_write_returned(
    port: FakePort,
    store: RecordingStore,
    context: WorkerContext,
    log: list[Any],
    sample_point: dict[str, Any],
) -> None:
    batcher = make_batcher(port, log, context, size=3)
    # when
    for message in messages(sample_point, log, 4):
        assert port.takers[TASK](message)
    # then: one job of three; the fourth waits
    assert [len(args[0]) for _, args, _, _ in port.jobs] == [3]
    assert log == [] and batcher.buffer is not None and batcher.buffer.due_in() is not None
    # when
    port.run_jobs()
    # then: the write returned before any of its messages was acked
    assert log == [("written", 3), ("ack", "m0"), ("ack", "m1"), ("ack", "m2")]
    assert [task.task_id for task in port.settled_events] == ["m0", "m1", "m2"]
    assert context.recorder.stats.snapshot()["telemetry_stored"] == 3


def test_a_partial_buffer_is_flushed_when_its_oldest_has_waited_the_interval(
    port: FakePort,
    store: RecordingStore,
    context: WorkerContext,
    log: list[Any],
    sample_point: dict[str, Any],
) -> None:
    now = [10.0]
    make_batcher(port, log, context, size=100, now=now)
    for message in messages(sample_point, log, 2):
        port.takers[TASK](message)
    # then: one wake-up set, for when the oldest is due
    assert [entry.delay for entry in port.timers] == [pytest.approx(0.2)]
    # when the timer fires early, nothing goes
    now[0] = 10.1
    port.fire_timer()
    assert port.jobs == []
    # when the oldest has waited the interval
    now[0] = 10.25
    port.fire_timer()
    port.run_jobs()
    # then
    assert log == [("written", 2), ("ack", "m0"), ("ack", "m1")]
    assert port.timers == [], "nothing held: no wake-up set"


def test_at_shutdown_or_a_lost_connection_held_messages_stay_unacked_for_redelivery(
    port: FakePort,
    store: RecordingStore,
    context: WorkerContext,
    log: list[Any],
    sample_point: dict[str, Any],
) -> None:
    now = [10.0]
    held = messages(sample_point, log, 2)
    first = make_batcher(port, log, context, size=100, now=now)
    for message in held:
        port.takers[TASK](message)
    # when the consumer reconnects (a new strategy on the same consumer)
    second = make_batcher(port, log, context, size=100, now=now)
    # then the old one's messages are forgotten and its timer stopped, nothing acked
    assert first.buffer is not None and first.buffer.due_in() is None
    assert port.timers == []
    assert second is port.slot
    # when a batch whose channel closed meanwhile comes due
    late = FakeOfferedMessage("late", point(sample_point, 9), log)
    port.takers[TASK](late)
    late.channel_open = False
    now[0] = 11.0
    port.fire_timer()
    # then it is dropped, neither written nor acked: RabbitMQ redelivers it
    assert port.jobs == [] and log == []
    assert not any(message.acknowledged for message in [*held, late])


def test_redelivered_messages_are_written_one_at_a_time(
    port: FakePort,
    store: RecordingStore,
    context: WorkerContext,
    log: list[Any],
    sample_point: dict[str, Any],
) -> None:
    now = [10.0]
    make_batcher(port, log, context, size=100, now=now)
    for message in messages(sample_point, log, 3, delivery_count=1):
        port.takers[TASK](message)
    now[0] = 10.5
    # when
    for _ in range(3):
        port.fire_timer()
        # then: one suspect at a time; the next waits until this one is acked
        assert [len(args[0]) for _, args, _, _ in port.jobs] == [1]
        if port.timers:
            port.fire_timer()
        assert len(port.jobs) == 1
        port.run_jobs()
        port.run_soon()
    assert log == [
        ("written", 1),
        ("ack", "m0"),
        ("written", 1),
        ("ack", "m1"),
        ("written", 1),
        ("ack", "m2"),
    ]


@pytest.mark.parametrize(
    ("failure", "written_first"),
    [
        (StorageUnavailable("storing points: connection refused"), 0),
        (RuntimeError("a bug after the first point was written"), 1),
    ],
    ids=["storage-unavailable", "raises-mid-batch"],
)
def test_a_failed_or_raising_write_loses_nothing_and_acks_nothing(
    port: FakePort,
    store: RecordingStore,
    context: WorkerContext,
    log: list[Any],
    sample_point: dict[str, Any],
    failure: Exception,
    written_first: int,
) -> None:
    make_batcher(port, log, context, size=3)
    store.failure, store.written_before_failure = failure, written_first
    batch = messages(sample_point, log, 3)
    for message in batch:
        port.takers[TASK](message)
    # when
    port.run_jobs()
    # then: nothing acked; each message goes on alone, through Celery's per-task path
    assert log == []
    port.run_soon()
    assert log == [("per_task", "m0"), ("per_task", "m1"), ("per_task", "m2")]
    assert not any(message.acknowledged for message in batch)
    assert store.count() == written_first


def test_a_pool_job_that_dies_sends_its_messages_on_alone(
    port: FakePort,
    store: RecordingStore,
    context: WorkerContext,
    log: list[Any],
    sample_point: dict[str, Any],
) -> None:
    make_batcher(port, log, context, size=2)
    for message in messages(sample_point, log, 2):
        port.takers[TASK](message)
    [(_, _, _, on_error)] = port.jobs
    # when the pool reports the job lost (a pool process died)
    on_error(RuntimeError("worker lost"))
    port.run_soon()
    # then
    assert log == [("per_task", "m0"), ("per_task", "m1")]


def test_stored_duplicate_and_rejected_are_acked_and_a_failed_one_goes_on_alone(
    port: FakePort,
    store: RecordingStore,
    context: WorkerContext,
    log: list[Any],
    sample_point: dict[str, Any],
) -> None:
    make_batcher(port, log, context, size=3)
    fresh = FakeOfferedMessage("a", point(sample_point, 1), log)
    again = FakeOfferedMessage("b", point(sample_point, 1), log)
    invalid = FakeOfferedMessage("c", {"point": {**sample_point, "gpu_uuid": ""}}, log)
    for message in (fresh, again, invalid):
        port.takers[TASK](message)
    # when
    port.run_jobs()
    # then
    assert log == [("rejected", 1), ("written", 2), ("ack", "a"), ("ack", "b"), ("ack", "c")]
    results = [task.result_text for task in port.settled_events]
    assert results[:2] == ["'stored'", "'duplicate'"]
    assert results[2].startswith("'rejected: gpu_uuid")


def test_retry_copies_and_messages_with_an_eta_take_the_per_task_path(
    port: FakePort,
    store: RecordingStore,
    context: WorkerContext,
    log: list[Any],
    sample_point: dict[str, Any],
) -> None:
    batcher = make_batcher(port, log, context, size=2)
    retry = FakeOfferedMessage("r", point(sample_point, 1), log, retries=1)
    # when
    assert not port.takers[TASK](retry)
    batcher.handle(retry, None, None, None, None)
    # then
    assert log == [("per_task", "r")]
    assert port.jobs == []
