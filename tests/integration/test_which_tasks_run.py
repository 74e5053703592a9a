"""Only the collector's own task runs, and an oversize message is refused unread
(docs/security.md#which-tasks-run).

Against a real worker, the real RabbitMQ and SecantusDB.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from pymongo.database import Database

from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.topology import dead_queue_name
from telemetry.config import load_settings
from tests.integration.conftest import confirming, make_points, publish_points, queue_depth
from tests.integration.faults_support import stored
from tools.launchers import WorkerProcess, wait_for

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def ingest_signature() -> dict[str, Any]:
    """``telemetry.ingest`` as a Celery signature, as a workflow task would name it."""
    return {
        "task": "telemetry.ingest",
        "args": [],
        "kwargs": {},
        "options": {},
        "subtask_type": None,
        "immutable": False,
    }


def test_a_message_naming_any_other_task_is_dead_lettered_and_never_run(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given: Celery's built-in tasks, which every app registers, and a name nobody knows.
    # Run, celery.map would store its point through telemetry.ingest.
    [smuggled, *valid] = make_points(6)
    foreign = {
        "celery.map": [[ingest_signature(), [smuggled]], {}, EMBED],
        "celery.chord_unlock": [["group-id", ingest_signature()], {}, EMBED],
        "celery.backend_cleanup": [[], {}, EMBED],
        "telemetry.nope": [[], {"point": smuggled}, EMBED],
    }
    worker = start_worker()
    # when
    with confirming(broker_url) as connection:
        producer = connection.Producer()
        for index, (task, body) in enumerate(foreign.items()):
            producer.publish(
                json.dumps(body),
                exchange=queue_name,
                routing_key=queue_name,
                content_type="application/json",
                content_encoding="utf-8",
                headers={"task": task, "id": f"foreign-{index}"},
            )
    publish_points(publisher, valid)
    # then: the worker stores what came after, and holds none of the others
    wait_for(lambda: stored(database) == 5, 60, "the 5 valid points", lambda: stored(database))
    dead = dead_queue_name(queue_name)
    wait_for(lambda: queue_depth(broker_url, dead) == 4, 30, "4 dead letters")
    time.sleep(1)
    worker.stop()
    stats = worker.last_stats()
    assert database["telemetry"].count_documents({"gpu_uuid": smuggled["gpu_uuid"]}) == 0
    assert (stats["dead_lettered"], stats["retries"], stats["messages_errors"]) == (4, 0, 0)
    assert worker.log().count("is not one this collector runs (unknown_task)") == 4
    assert queue_depth(broker_url, queue_name) == 0


def test_an_oversize_message_is_recorded_acked_and_never_retried(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given: a message just over the default bound, and one just under it
    bound = load_settings(env={}).max_message_bytes
    over, under, *valid = make_points(5)
    over["labels_raw"] = "x" * bound
    under["labels_raw"] = "x" * (bound - 1000)
    worker = start_worker()
    # when
    big = build_task_message(over, None)
    publisher.send(big)
    publisher.send(build_task_message(under, None))
    publish_points(publisher, valid)
    # then
    wait_for(lambda: stored(database) == 3, 60, "the 3 valid points")
    wait_for(lambda: database["rejected"].count_documents({}) == 2, 30, "2 rejected")
    time.sleep(1)
    worker.stop()
    stats = worker.last_stats()
    oversize = database["rejected"].find_one({"kind": "oversize"})
    assert oversize is not None and oversize["message_id"] == big.task_id
    assert oversize["reason"].startswith("message body of ")
    assert oversize["truncated"] is True
    # The one under the bound was read, and refused for its field (65,536 characters at most).
    assert database["rejected"].find_one({"kind": "invalid_point"}) is not None
    assert (stats["messages_errors"], stats["retries"], stats["dead_lettered"]) == (2, 0, 0)
    assert queue_depth(broker_url, queue_name) == 0
    assert queue_depth(broker_url, dead_queue_name(queue_name)) == 0
