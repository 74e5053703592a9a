"""Batch commits with a real worker: per-message outcomes, acks and the task events Flower reads."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo.database import Database

from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.demo.embedded import SecantusServer
from telemetry.worker.app import app
from tests.integration.conftest import make_points, publish_points, queue_depth
from tools.launchers import WorkerProcess, wait_for


class EventLog:
    """Every task event on the broker, collected by Celery's own event receiver."""

    def __init__(self, broker_url: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._connection = app.connection_for_read(broker_url)
        self._receiver = app.events.Receiver(self._connection, handlers={"*": self._keep})
        self._ready = threading.Event()
        self._receiver.on_consume_ready = lambda *_, **__: self._ready.set()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _keep(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def _run(self) -> None:
        self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self) -> None:
        self._thread.start()
        # The receiver's queue must exist before the worker sends anything.
        assert self._ready.wait(10), "the event receiver did not start"

    def count(self, kind: str, ids: set[str]) -> Counter[str]:
        with self._lock:
            return Counter(e["uuid"] for e in self.events if e["type"] == kind and e["uuid"] in ids)

    def of(self, kind: str, ids: set[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {e["uuid"]: e for e in self.events if e["type"] == kind and e["uuid"] in ids}

    def stop(self) -> None:
        self._receiver.should_stop = True
        self._thread.join(timeout=5)
        self._connection.close()


def processed(worker: WorkerProcess) -> int:
    """messages_processed as of the worker's latest statistics line, 0 before the first."""
    if '"Collector statistics"' not in worker.log():
        return 0
    return int(worker.last_stats()["messages_processed"])


@pytest.fixture
def event_log(broker_url: str) -> Iterator[EventLog]:
    log = EventLog(broker_url)
    log.start()
    yield log
    log.stop()


def test_batch_commits_store_each_point_once_ack_each_message_and_report_each_task(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
    event_log: EventLog,
) -> None:
    # given: a worker writing up to 50 points at a time
    worker = start_worker(batch_size="50", flush_interval_ms="100", instance_id=queue_name)
    points = make_points(300, gpus=6)
    invalid = [
        {"gpu_uuid": "", "metric_name": "m", "value": 1, "timestamp": points[0]["timestamp"]}
    ]
    # when: valid points, an invalid one among them, then 40 of them again
    ids = publish_points(publisher, points[:150] + invalid + points[150:])
    again = publish_points(publisher, points[:40])
    wait_for(lambda: processed(worker) == 341, 60, "341 messages settled")
    # then: every point once, the invalid one rejected through the per-task path
    assert database["telemetry"].count_documents({}) == 300
    assert database["gpus"].count_documents({}) == 6
    assert database["rejected"].count_documents({}) == 1
    assert queue_depth(broker_url, queue_name) == 0
    assert worker.stop() == 0
    stats = worker.last_stats()
    assert (stats["telemetry_stored"], stats["duplicates"], stats["messages_errors"]) == (
        300,
        40,
        1,
    )
    # and Flower's events name each task and its result
    all_ids = set(ids) | set(again)
    wait_for(
        lambda: len(event_log.of("task-succeeded", all_ids)) == 341, 10, "341 succeeded events"
    )
    received = event_log.of("task-received", all_ids)
    succeeded = event_log.of("task-succeeded", all_ids)
    assert set(received) == all_ids
    assert set(event_log.count("task-received", all_ids).values()) == {1}, "received twice"
    assert {event["name"] for event in received.values()} == {"telemetry.ingest"}
    results = [succeeded[task_id]["result"] for task_id in ids]
    assert results.count("'stored'") == 300
    assert succeeded[ids[150]]["result"].startswith("'rejected: ")
    assert {succeeded[task_id]["result"] for task_id in again} == {"'duplicate'"}


def test_batch_commits_work_with_a_process_pool(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given: two pool processes ("-P prefork" would be celeryconfig's threads)
    worker = start_worker(
        concurrency=2,
        celery_worker_pool="processes",
        batch_size="50",
        instance_id=queue_name,
    )
    # when
    publish_points(publisher, make_points(400, gpus=8))
    wait_for(
        lambda: database["telemetry"].count_documents({}) == 400,
        60,
        "400 stored points",
        lambda: database["telemetry"].count_documents({}),
    )
    # then: every message acked, the pool was one of processes
    assert worker.stop() == 0
    assert queue_depth(broker_url, queue_name) == 0
    assert '"pool": "prefork"' in worker.log() or "(prefork)" in worker.log()
    assert database["gpus"].count_documents({}) == 8


def test_task_events_failures_sends_none_for_batch_commits_but_keeps_failures(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    queue_name: str,
    event_log: EventLog,
) -> None:
    # given: a worker that sends task events for failures only, and a database it
    # reaches through a server this test stops
    server = SecantusServer(":memory:")
    server.start()
    worker = start_worker(
        batch_size="50",
        task_events="failures",
        mongodb_uri=server.uri,
        max_retries="0",
        instance_id=queue_name,
    )
    try:
        # when: points the batches store, then one while the database is down
        stored_ids = set(publish_points(publisher, make_points(120)))
        wait_for(lambda: processed(worker) == 120, 60, "120 messages settled")
        server.stop()
        failed_ids = set(publish_points(publisher, make_points(121)[120:]))
        # then: the failure shows, the 120 batch-stored points send no event at all
        wait_for(
            lambda: len(event_log.of("task-failed", failed_ids)) == 1, 60, "the task-failed event"
        )
    finally:
        server.stop()
    assert event_log.of("task-received", stored_ids) == {}
    assert event_log.of("task-succeeded", stored_ids) == {}
    assert worker.stop() == 0
    assert worker.last_stats()["telemetry_stored"] == 120
