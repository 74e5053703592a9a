"""Fault injection on the worker: killed, or stopped mid-stream.

Against real workers, the real RabbitMQ and SecantusDB processes.

Each scenario checks the accounting identity with exact numbers:
published = stored + rejected + dead-lettered, with no point stored twice
(the point's ``_id`` makes a second copy impossible, so "stored" is compared
with the number of distinct points published).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
from kombu import Connection
from pymongo.database import Database

from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.topology import Topology, dead_queue_name
from tests.integration.conftest import make_points, publish_points, queue_depth, settings_for
from tests.integration.faults_support import assert_accounted, queue_total, stored
from tests.integration.poison_app import CRASH_EXIT_CODE, POISON_GPU
from tools.launchers import WorkerProcess, wait_for, wait_for_count

pytestmark = pytest.mark.faults


MID_STREAM_POINTS = 10_000


def worker_mid_stream(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
) -> WorkerProcess:
    """A worker that has stored at least 300 of a 10,000-point backlog."""
    publish_points(publisher, make_points(MID_STREAM_POINTS))
    worker = start_worker()
    wait_for(lambda: stored(database) >= 300, 60, "some progress", lambda: stored(database))
    return worker


def drain_with_a_new_worker(
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    """A second worker stores the rest: every point once, nothing left or dead."""
    second = start_worker()
    # Waited for while the counts move: at BATCH_SIZE=1 a slow machine takes minutes.
    wait_for_count(lambda: stored(database), MID_STREAM_POINTS, "all points")
    # Redelivered copies of points the first worker stored but never acked are
    # written one at a time (they are suspects); the queue is empty once they are.
    wait_for_count(lambda: queue_total(queue_name), 0, "no message left")
    second.stop()
    assert_accounted(database, broker_url, queue_name, published=MID_STREAM_POINTS)
    assert queue_depth(broker_url, queue_name) == 0


def test_worker_killed_mid_stream_and_restarted_stores_every_point_once(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given: a backlog large enough that batch commits are still at it when killed
    first = worker_mid_stream(start_worker, publisher, database)
    # when
    first.stop(signal.SIGKILL)
    at_kill = stored(database)
    # then
    assert at_kill < MID_STREAM_POINTS
    drain_with_a_new_worker(start_worker, database, broker_url, queue_name)


def test_worker_stopped_with_sigterm_mid_stream_finishes_what_it_holds_and_loses_nothing(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given
    first = worker_mid_stream(start_worker, publisher, database)
    # when: a warm shutdown mid-stream
    exit_code = first.stop(signal.SIGTERM)
    at_stop = stored(database)
    final = first.last_stats()
    # then: a clean exit; every message is either stored or back in the queue,
    # and the worker's own count of stored points matches the database
    print(
        f"\nSIGTERM: exit {exit_code}, {at_stop} stored, {queue_depth(broker_url, queue_name)} back"
    )
    assert exit_code == 0
    assert at_stop < MID_STREAM_POINTS
    assert final["telemetry_stored"] == at_stop
    assert at_stop + queue_depth(broker_url, queue_name) >= MID_STREAM_POINTS
    drain_with_a_new_worker(start_worker, database, broker_url, queue_name)


POISON_LIMIT = 2
POISON_NEIGHBOURS = 600


def test_a_poison_message_that_kills_the_worker_is_dead_lettered_and_the_rest_flows(
    start_worker: Callable[..., WorkerProcess],
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    """On a quorum queue: each crash delivers the poison once more; at the delivery limit
    RabbitMQ dead-letters it, and every point held with it along the way is stored."""
    settings = {"queue_type": "quorum", "delivery_limit": str(POISON_LIMIT)}
    topology = Topology.of(
        settings_for(queue_name, QUEUE_TYPE="quorum", DELIVERY_LIMIT=str(POISON_LIMIT))
    )
    sender = ConfirmingPublisher(Connection(broker_url), topology)
    sender.open()
    points = make_points(POISON_NEIGHBOURS)
    poison = dict(points[0], gpu_uuid=POISON_GPU)
    try:
        publish_points(sender, [*points[:250], poison, *points[250:]])
    finally:
        sender.close()
    # when: a worker is started again each time the poison kills it
    dead = dead_queue_name(queue_name)
    crashes = 0
    for _ in range(POISON_LIMIT + 4):
        worker = start_worker(app="tests.integration.poison_app", wait=False, **settings)
        wait_for(
            lambda worker=worker: (  # type: ignore[misc]
                worker.process.poll() is not None
                or (stored(database) == POISON_NEIGHBOURS and queue_depth(broker_url, dead) == 1)
            ),
            120,
            "the worker to die, or every other point stored and the poison dead-lettered",
            lambda: stored(database),
        )
        if worker.process.poll() is None:
            break
        assert worker.process.returncode == CRASH_EXIT_CODE, worker.log()
        crashes += 1
    # then: N + 1 deliveries of the poison, each a crash; it alone is dead-lettered
    assert crashes == POISON_LIMIT + 1
    wait_for(lambda: queue_depth(broker_url, dead) == 1, 30, "the poison in the dead-letter queue")
    with Connection(broker_url) as connection:
        letter = topology.dead_queue()(connection.channel()).get(no_ack=False)
        assert letter is not None
        assert letter.headers["x-death"][0]["reason"] == "delivery_limit"
        assert letter.decode()[1]["point"]["gpu_uuid"] == POISON_GPU
        letter.requeue()
    assert_accounted(database, broker_url, queue_name, published=POISON_NEIGHBOURS + 1, dead=1)
