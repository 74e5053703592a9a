"""The collector end to end: real worker processes, the real RabbitMQ, SecantusDB over the wire."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymongo.database import Database

from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.topology import dead_queue_name
from telemetry.demo.embedded import SecantusServer
from tests.integration.conftest import confirming, make_points, publish_points, queue_depth
from tools.launchers import WorkerProcess, wait_for


def test_points_are_ingested_end_to_end_with_matching_statistics(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given
    worker = start_worker()
    points = make_points(300, gpus=12)
    # when
    publish_points(publisher, points, {"hostname": "node-1", "model_name": "H100"})
    wait_for(lambda: database["telemetry"].count_documents({}) == 300, 60, "300 stored points")
    # then
    assert database["gpus"].count_documents({}) == 12
    assert database["gpus"].count_documents({"hostname": "node-1", "model_name": "H100"}) == 12
    assert {index["name"] for index in database["telemetry"].list_indexes()} >= {
        "gpu_time_metric_instance"
    }
    first = database["telemetry"].find_one({}, sort=[("timestamp", 1)])
    assert first is not None
    assert first["_id"] == {
        "gpu_uuid": first["gpu_uuid"],
        "metric_name": first["metric_name"],
        "timestamp": first["timestamp"],
    }
    assert worker.stop() == 0
    stats = worker.last_stats()
    assert stats["instance_id"] == f"worker-1-{queue_name}"
    assert (
        stats["telemetry_stored"],
        stats["messages_processed"],
        stats["queue_delivered"],
        stats["messages_errors"],
        stats["duplicates"],
    ) == (300, 300, 300, 0, 0)
    assert queue_depth(broker_url, queue_name) == 0


def test_the_same_message_delivered_twice_is_stored_once(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
) -> None:
    # given
    worker = start_worker()
    message = build_task_message(make_points(1)[0], None)
    # when
    publisher.send(message)
    publisher.send(message)
    publisher.flush()
    # then
    wait_for(lambda: '"duplicates": 1' in worker.log(), 30, "the duplicate to be counted")
    assert database["telemetry"].count_documents({}) == 1
    worker.stop()
    stats = worker.last_stats()
    assert (stats["telemetry_stored"], stats["duplicates"]) == (1, 1)


def test_invalid_messages_are_recorded_acked_and_the_worker_goes_on(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    database: Database[Any],
    broker_url: str,
    queue_name: str,
) -> None:
    # given
    worker = start_worker()
    valid = make_points(20)
    invalid = [
        dict(valid[0], gpu_uuid=""),
        dict(valid[1], timestamp="0001-01-01T00:00:00Z"),
        dict(valid[2], value="NaN"),
    ]
    # when
    publish_points(publisher, invalid + valid)
    with confirming(broker_url) as connection:
        producer = connection.Producer()
        producer.publish(
            b"{not json",
            exchange=queue_name,
            routing_key=queue_name,
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": "telemetry.ingest", "id": "garbage-1"},
        )
    # then
    wait_for(lambda: database["telemetry"].count_documents({}) == 20, 30, "the valid points")
    wait_for(lambda: database["rejected"].count_documents({}) == 4, 30, "4 rejected records")
    assert database["rejected"].options()["capped"] is True
    reasons = sorted(doc["reason"] for doc in database["rejected"].find())
    assert reasons[0].startswith("cannot decode body")
    assert any(reason.startswith("value: must be finite") for reason in reasons)
    worker.stop()
    stats = worker.last_stats()
    assert (
        stats["messages_errors"],
        stats["telemetry_stored"],
        stats["messages_processed"],
        stats["retries"],
        stats["dead_lettered"],
    ) == (4, 20, 24, 0, 0)
    assert queue_depth(broker_url, queue_name) == 0
    assert queue_depth(broker_url, dead_queue_name(queue_name)) == 0


def test_storage_outage_is_retried_then_dead_lettered(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    broker_url: str,
    queue_name: str,
    tmp_path: Any,
) -> None:
    # given: a worker on a database server of its own, which is then stopped
    server = SecantusServer(":memory:", log_path=tmp_path / "down.log")
    server.start()
    worker = start_worker(mongodb_uri=server.uri, max_retries="2", retry_backoff_s="0.2")
    server.stop()
    # when
    publish_points(publisher, make_points(3))
    # then
    dead = dead_queue_name(queue_name)
    wait_for(lambda: queue_depth(broker_url, dead) == 3, 60, "3 dead-lettered messages")
    worker.stop()
    stats = worker.last_stats()
    assert (stats["retries"], stats["dead_lettered"], stats["telemetry_stored"]) == (6, 3, 0)
    assert queue_depth(broker_url, queue_name) == 0
    assert "Storage unavailable" in worker.log()
