"""Bare kombu baselines for ``make bench``: what this broker and database allow, with no Celery.

* ``consume``: one kombu consumer with a prefetch of 1,000 takes the same
  ``telemetry.ingest`` messages the worker would, decodes the JSON body,
  builds each point's document with the same ``_id``, writes them with an
  unordered ``insert_many`` of 500 and acks each batch with one multiple-ack
  after the write. It runs as a process of its own, like the worker, so its
  CPU time is measured the same way.
* ``publish``: a kombu publisher with pipelined publisher confirms (500 in
  flight) sends one message per CSV row, built from the row with the csv
  module alone. The streamer's CPU per point is compared with this.

Neither validates, retries, dead-letters or sends task events: they are the
floor the collector's costs are measured against, not alternatives to it.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue
from pymongo import MongoClient
from pymongo.errors import BulkWriteError

from telemetry.cli import SAMPLE_CSV

BATCH = 500
PREFETCH = 1000
WINDOW = 500


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def document(body: Any, now: datetime) -> dict[str, Any]:
    """The stored document of one message's point, with the collector's ``_id``."""
    point = body[1]["point"]
    metadata = body[1].get("metadata") or {}
    stamp = datetime.fromisoformat(point["timestamp"])
    return {
        "_id": {
            "gpu_uuid": point["gpu_uuid"],
            "metric_name": point["metric_name"],
            "timestamp": stamp,
        },
        "gpu_uuid": point["gpu_uuid"],
        "metric_name": point["metric_name"],
        "value": float(point["value"]),
        "timestamp": stamp,
        "hostname": metadata.get("hostname"),
        "ingested_at": now,
        "labels_raw": point.get("labels_raw"),
    }


def consume(
    broker_url: str, queue: str, mongodb_uri: str, database: str, expect: int
) -> dict[str, float]:
    """Drain ``expect`` messages of ``queue`` into MongoDB; rate and CPU from the first one."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, tz_aware=True)
    collection = client[database]["telemetry"]
    pending: list[dict[str, Any]] = []
    last_tag = [0]
    done = [0]
    first: list[tuple[float, float]] = []

    with Connection(broker_url) as connection:
        channel = connection.channel()
        channel.basic_qos(0, PREFETCH, False)

        def flush() -> None:
            if not pending:
                return
            try:
                collection.insert_many(pending, ordered=False)
            except BulkWriteError as exc:  # duplicates of a redelivery are fine
                if any(error["code"] != 11000 for error in exc.details["writeErrors"]):
                    raise
            channel.basic_ack(last_tag[0], multiple=True)
            done[0] += len(pending)
            pending.clear()

        def on_message(body: Any, message: Any) -> None:
            if not first:
                first.append((time.monotonic(), cpu_seconds()))
            pending.append(document(body, datetime.now(UTC)))
            last_tag[0] = message.delivery_tag
            if len(pending) >= BATCH:
                flush()

        source = Queue(queue, no_declare=True)
        with Consumer(channel, [source], callbacks=[on_message], accept=["json"]):
            while done[0] < expect:
                try:
                    connection.drain_events(timeout=0.2)
                except TimeoutError:
                    flush()
            flush()
    started, cpu_at_start = first[0]
    elapsed = time.monotonic() - started
    return {
        "points": done[0],
        # For a caller that started the clock in another process (the live baseline).
        "finished_at_unix_s": time.time(),
        "elapsed_s": elapsed,
        "points_per_s": done[0] / elapsed,
        "cpu_us_per_point": (cpu_seconds() - cpu_at_start) / done[0] * 1e6,
    }


def csv_messages(path: Path, limit: int) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    """Headers and body of a protocol-2 ``telemetry.ingest`` message per row, round and round."""
    sent = 0
    while True:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if sent >= limit:
                    return
                task_id = str(uuid.uuid4())
                point = {
                    "gpu_uuid": row["uuid"],
                    "metric_name": row["metric_name"],
                    "value": float(row["value"]),
                    "timestamp": datetime.now(UTC).isoformat(),
                    "labels_raw": row["labels_raw"],
                }
                metadata = {"hostname": row["Hostname"], "model_name": row["modelName"]}
                headers = {"lang": "py", "task": "telemetry.ingest", "id": task_id}
                yield headers, [[], {"point": point, "metadata": metadata}, {}]
                sent += 1


def durable_queue(name: str) -> Queue:
    """The queue the publisher sends to, with a direct exchange of the same name."""
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True)


def declare(broker_url: str, queue: str) -> None:
    """Declare the publisher's queue, so a consumer can start on it before it publishes."""
    with Connection(broker_url) as connection:
        durable_queue(queue)(connection.channel()).declare()


def publish(broker_url: str, queue: str, path: Path, points: int) -> dict[str, float]:
    """Publish ``points`` rows with pipelined confirms; rate and CPU of this process."""
    confirmed = [0]
    started, cpu_at_start = time.monotonic(), cpu_seconds()
    with Connection(broker_url) as connection:
        channel = connection.channel()
        target = durable_queue(queue)
        target(channel).declare()
        exchange = target.exchange
        channel.confirm_select()

        def on_ack(delivery_tag: int, multiple: bool) -> None:
            confirmed[0] = delivery_tag if multiple else confirmed[0] + 1

        channel.events["basic_ack"].add(on_ack)
        producer = Producer(channel, exchange=exchange, routing_key=queue)
        sent = 0
        for headers, body in csv_messages(path, points):
            producer.publish(body, serializer="json", headers=headers, delivery_mode=2)
            sent += 1
            while sent - confirmed[0] >= WINDOW:
                connection.drain_events(timeout=5)
        while confirmed[0] < sent:
            connection.drain_events(timeout=5)
    elapsed = time.monotonic() - started
    return {
        "points_per_s": points / elapsed,
        "cpu_us_per_point": (cpu_seconds() - cpu_at_start) / points * 1e6,
    }


def main() -> None:
    """``consume`` (or ``publish`` with ``--publish N``) as a process of its own, printing
    its figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--mongodb-uri")
    parser.add_argument("--database")
    parser.add_argument("--expect", type=int, help="consume: how many messages to drain")
    parser.add_argument("--publish", type=int, metavar="N", help="publish N sample rows instead")
    args = parser.parse_args()
    if args.publish is not None:
        figures = publish(args.broker_url, args.queue, SAMPLE_CSV, args.publish)
    elif args.mongodb_uri and args.database and args.expect is not None:
        figures = consume(args.broker_url, args.queue, args.mongodb_uri, args.database, args.expect)
    else:
        parser.error("consuming needs --mongodb-uri, --database and --expect")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
