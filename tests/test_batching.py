"""Batch commits: the buffer's triggers, and what the pool job hands back per message.

The write path itself (one outcome per message, GPU merging, the cache) is
tested in tests/test_ingest.py: a batch and a single message share it.
"""

from __future__ import annotations

from typing import Any

import pytest

from telemetry.errors import StorageUnavailable
from telemetry.store.mongo import MongoTelemetryStore
from telemetry.worker.batch_timer import BatchTimer
from telemetry.worker.batching import write_batch
from telemetry.worker.buffer import BatchBuffer, HeldMessage
from telemetry.worker.context import WorkerContext
from telemetry.worker.ingest import DecodedMessage
from telemetry.worker.quarantine import Quarantine


def at(point: dict[str, Any], second: int, **changes: Any) -> dict[str, Any]:
    return {**point, "timestamp": f"2025-07-18T20:42:{second:02d}Z", **changes}


def test_the_job_settles_stored_duplicate_and_rejected_and_leaves_failures_to_tasks(
    worker_context: WorkerContext,
    mock_store: MongoTelemetryStore,
    sample_point: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_batch(worker_context, [DecodedMessage("a", [], {"point": at(sample_point, 1)})])
    batch = [
        DecodedMessage("b", [], {"point": at(sample_point, 1)}),
        DecodedMessage("c", [], {"point": at(sample_point, 2)}),
        DecodedMessage("d", [], {"point": at(sample_point, 3, gpu_uuid="")}),
    ]
    # when
    results = write_batch(worker_context, batch)
    # then: settled messages carry their task result text; nothing is left to tasks
    assert results[:2] == ["duplicate", "stored"]
    assert results[2] is not None and results[2].startswith("rejected: gpu_uuid")

    # when the database is down, every message goes to the per-task path (None)
    def down(*_: Any) -> None:
        raise StorageUnavailable("storing points: connection refused")

    monkeypatch.setattr(mock_store, "insert_points", down)
    assert write_batch(
        worker_context, [DecodedMessage("e", [], {"point": at(sample_point, 4)})]
    ) == [None]
    # and the job counted what it settled, in the context's counters
    counts = worker_context.recorder.stats.snapshot()
    assert (counts["telemetry_stored"], counts["duplicates"], counts["messages_errors"]) == (
        2,
        1,
        1,
    )


def test_an_unexpected_error_in_the_job_leaves_every_message_to_tasks(
    worker_context: WorkerContext, mock_store: MongoTelemetryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(mock_store, "record_rejected", broken)
    messages = [DecodedMessage("a", [], {}), DecodedMessage("b", [], {})]
    assert write_batch(worker_context, messages) == [None, None]


def held(received: float) -> HeldMessage:
    offered: Any = None  # the buffer never touches the message itself
    return HeldMessage(offered, DecodedMessage(f"t{received}", [], {}), received, 0.0)


def test_buffer_hands_over_a_full_batch_at_once() -> None:
    submitted: list[list[HeldMessage]] = []
    batcher = BatchBuffer(3, 0.2, submitted.append, clock=lambda: 0.0)
    # when
    for _ in range(7):
        batcher.add(held(0.0))
    # then
    assert [len(batch) for batch in submitted] == [3, 3]
    assert batcher.discard() == 1, "the seventh still held"


def test_buffer_flushes_a_partial_batch_only_once_its_oldest_waited_the_interval() -> None:
    now = [10.0]
    submitted: list[list[HeldMessage]] = []
    batcher = BatchBuffer(100, 0.2, submitted.append, clock=lambda: now[0])
    batcher.add(held(10.0))
    batcher.add(held(10.1))
    # when
    now[0] = 10.15
    batcher.flush_due()
    # then
    assert submitted == []
    # when
    now[0] = 10.25
    batcher.flush_due()
    # then
    assert [len(batch) for batch in submitted] == [2]
    assert batcher.due_in() is None, "nothing held"


def test_buffer_says_when_its_oldest_message_is_due() -> None:
    now = [10.0]
    batcher = BatchBuffer(100, 0.2, lambda batch: None, clock=lambda: now[0])
    assert batcher.due_in() is None
    batcher.add(held(10.0))
    batcher.add(held(10.1))
    now[0] = 10.15
    assert batcher.due_in() == pytest.approx(0.05)
    now[0] = 10.3
    assert batcher.due_in() == 0.0


class FakeTimer:
    """The consumer's timer: one-off calls, fired by hand, earliest first."""

    def __init__(self) -> None:
        self.entries: list[FakeTimer.Entry] = []

    class Entry:
        def __init__(self, timer: FakeTimer, delay: float, call: Any) -> None:
            self.timer, self.delay, self.call = timer, delay, call

        def cancel(self) -> None:
            self.timer.entries.remove(self)

    def later(self, delay: float, call: Any) -> FakeTimer.Entry:
        entry = FakeTimer.Entry(self, delay, call)
        self.entries.append(entry)
        return entry

    def fire(self) -> None:
        entry = min(self.entries, key=lambda entry: entry.delay)
        self.entries.remove(entry)
        entry.call()


def test_wakeups_are_set_only_while_messages_are_held() -> None:
    timer = FakeTimer()
    held = [0]
    wakes: list[int] = []

    def wake() -> None:
        wakes.append(held[0])
        held[0] = max(held[0] - 1, 0)

    batch_timer = BatchTimer(timer.later, lambda: 0.2 if held[0] else None, wake, retry_s=0.02)
    # Nothing held: an idle worker's timer has nothing to do.
    batch_timer.arm()
    assert timer.entries == []
    # The first held message sets one wake-up; more messages do not add others.
    held[0] = 2
    batch_timer.arm()
    batch_timer.arm()
    assert [entry.delay for entry in timer.entries] == [0.2]
    # Each wake-up sets the next while anything is held, and none once nothing is.
    timer.fire()
    assert len(timer.entries) == 1
    timer.fire()
    assert timer.entries == [] and wakes == [2, 1]
    held[0] = 1
    batch_timer.arm()
    batch_timer.cancel()
    assert timer.entries == []


def test_a_failing_wakeup_comes_back_but_does_not_spin() -> None:
    timer = FakeTimer()

    def broken() -> None:
        raise RuntimeError("flush failed")

    batch_timer = BatchTimer(timer.later, lambda: 0.0, broken, retry_s=0.02)
    batch_timer.arm()
    with pytest.raises(RuntimeError):
        timer.fire()
    # Set again, for no sooner than retry_s, though the held message is overdue.
    assert [entry.delay for entry in timer.entries] == [0.02]


class FakeSettleable:
    """What the quarantine reads of a held message: whether it was settled."""

    def __init__(self) -> None:
        self.acknowledged = False


def suspect(name: str, received: float = 0.0) -> HeldMessage:
    offered: Any = FakeSettleable()
    return HeldMessage(offered, DecodedMessage(name, [], {}), received, 0.0)


def picks(quarantine: Quarantine) -> list[str]:
    """Hand on every held message in turn, settling each before the next."""
    order = []
    while (due := quarantine.next_due()) is not None:
        order.append(str(due.decoded.message_id))
        due.offered.acknowledged = True
    return order


def test_quarantine_hands_on_one_at_a_time_only_after_the_last_is_settled() -> None:
    quarantine = Quarantine(hold_s=0.0, clock=lambda: 1.0)
    for name in "abc":
        quarantine.add(suspect(name), 1)
    first = quarantine.next_due()
    assert first is not None
    assert quarantine.next_due() is None, "the next waits until the first is settled"
    first.offered.acknowledged = True
    assert quarantine.next_due() is not None


def test_quarantine_waits_for_the_whole_redelivery_before_picking() -> None:
    now = [10.0]
    quarantine = Quarantine(hold_s=0.2, clock=lambda: now[0])
    quarantine.add(suspect("a", received=10.0), 1)
    assert quarantine.next_due() is None
    now[0] = 10.25
    assert quarantine.next_due() is not None


def test_quarantine_takes_the_least_delivered_first_and_alternates_order_on_ties() -> None:
    quarantine = Quarantine(hold_s=0.0, clock=lambda: 1.0)
    for name, count in [("p", 2), ("a", 1), ("b", 1), ("x", 2), ("c", 3)]:
        quarantine.add(suspect(name), count)
    # count 1 (odd): oldest first; count 2 (even): newest first; then count 3
    assert picks(quarantine) == ["a", "b", "x", "p", "c"]


def test_an_innocent_on_either_side_of_a_poison_is_settled_within_two_rounds() -> None:
    """Simulated crashes: the poison kills the worker when its turn comes; whatever is
    still held is delivered again with one more count. No innocent reaches count 3."""
    held = [("a1", 1), ("a2", 1), ("P", 1), ("b1", 1), ("b2", 1)]
    counts_at_settle: dict[str, int] = {}
    for _ in range(5):
        quarantine = Quarantine(hold_s=0.0, clock=lambda: 1.0)
        for name, count in held:
            quarantine.add(suspect(name), count)
        survivors = dict(held)
        while (due := quarantine.next_due()) is not None:
            name = str(due.decoded.message_id)
            if name == "P":
                break  # the worker dies; everything unsettled comes back
            counts_at_settle[name] = survivors.pop(name)
            due.offered.acknowledged = True
        held = [(name, count + 1) for name, count in survivors.items()]
    assert held == [("P", 6)]
    assert set(counts_at_settle) == {"a1", "a2", "b1", "b2"}
    assert max(counts_at_settle.values()) <= 2
