"""Flower's own ceiling: the task-event rate at which its counts fall behind.

``benchmarks/flower.py`` drives Flower through the whole pipeline, which on
this machine tops out before Flower does. Here the events come straight from
a publisher that sends what a worker's batch commits send (one ``task.multi``
message per batch, a ``task-received`` and a ``task-succeeded`` event per
task), at paced rates, with no worker or database competing for the cores.
At each rate: how many tasks Flower counted (its ``flower_events_total``)
once it has been quiet for longer than Celery's 5 s event-queue TTL, and how
much CPU it spent per 1,000 tasks.

Run it alone: ``python -m benchmarks.flower_ceiling``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from celery.events import Event
from kombu import Connection, Exchange, Producer

from tools.launchers import FlowerProcess, clean_env

BROKER = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
BATCH = 200
SECONDS_PER_RATE = 10


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def succeeded_counted(flower: FlowerProcess, node: str) -> int:
    """task-succeeded events Flower counted for ``node``."""
    prefix = "flower_events_total{"
    total = 0.0
    for line in flower.get("/metrics").splitlines():
        if line.startswith(prefix) and f'worker="{node}"' in line and "task-succeeded" in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def send_at(producer: Producer, exchange: Exchange, node: str, rate: int, seconds: int) -> int:
    """Send ``rate`` tasks/s of events for ``seconds``, in batches; return the tasks sent."""
    sent = 0
    started = time.monotonic()
    clock = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            events: list[dict[str, Any]] = []
            now = time.time()
            for _ in range(min(BATCH, due - sent)):
                task_id = str(uuid.uuid4())
                clock += 2
                events.append(
                    Event(
                        "task-received",
                        uuid=task_id,
                        name="telemetry.ingest",
                        hostname=node,
                        timestamp=now,
                        clock=clock - 1,
                        args="()",
                        kwargs="{}",
                    )
                )
                events.append(
                    Event(
                        "task-succeeded",
                        uuid=task_id,
                        result="'stored'",
                        runtime=0.01,
                        hostname=node,
                        timestamp=now,
                        clock=clock,
                    )
                )
                sent += 1
            producer.publish(events, exchange=exchange, routing_key="task.multi", serializer="json")
        time.sleep(0.005)
    return sent


def main() -> None:
    """Each rate in turn against one Flower; print a table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,2000,4000,6000,8000")
    options = parser.parse_args()
    workdir = Path("/tmp") / f"flower-ceiling-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    flower = FlowerProcess(clean_env(CELERY_BROKER_URL=BROKER), workdir / "flower.log", user=None)
    rows = []
    try:
        flower.wait_ready()
        time.sleep(3)  # Flower's event consumer is up after its HTTP server
        with Connection(BROKER) as connection:
            exchange = Exchange("celeryev", type="topic")
            producer = Producer(connection.channel(), exchange=exchange)
            for rate in (int(text) for text in options.rates.split(",")):
                node = f"bench-{rate}@ceiling"
                cpu_before = cpu_seconds(flower.process.pid)
                sent = send_at(producer, exchange, node, rate, SECONDS_PER_RATE)
                sent_by = time.monotonic()
                counted = succeeded_counted(flower, node)
                lag_at_end = sent - counted
                # Longer than the 5 s event TTL: what Flower has not counted now, it never will.
                time.sleep(7)
                counted = succeeded_counted(flower, node)
                caught_up_s = time.monotonic() - sent_by
                cpu = cpu_seconds(flower.process.pid) - cpu_before
                rows.append(
                    {
                        "rate": rate,
                        "sent": sent,
                        "counted": counted,
                        "lost": sent - counted,
                        "behind_when_sending_stopped": lag_at_end,
                        "flower_cpu_s_per_1000": round(cpu / sent * 1000, 3),
                        "checked_after_s": round(caught_up_s, 1),
                    }
                )
                print(rows[-1], flush=True)
    finally:
        flower.stop()
    print(
        "\n| tasks/s sent | sent | Flower counted | lost | behind when sending stopped "
        "| Flower CPU s per 1,000 tasks |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['rate']:,} | {row['sent']:,} | {row['counted']:,} | {row['lost']:,} "
            f"| {row['behind_when_sending_stopped']:,} | {row['flower_cpu_s_per_1000']} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
