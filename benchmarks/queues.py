"""Queue types measured on private RabbitMQ nodes: ``python -m benchmarks.queues``.

For each of classic and quorum, on one private node and on a local 3-node cluster:

- publish rate with publisher confirms (a window of unconfirmed messages, as the streamer
  publishes), of ``--messages`` persistent messages of ``--size`` bytes into an empty queue;
- consume + ack rate of that backlog (one consumer, prefetch ``--prefetch``, one ack per
  message, as a Celery worker acks);
- broker CPU per message: user + system CPU seconds of the beam process(es) over each phase
  (on the cluster, summed over all three nodes: the cost of replication included).

Then the single-queue ceiling: publishers and consumers running at the same time on one
queue, the rate at which messages flow through it end to end.

Ratios are to classic on a single node, measured in the same run. The shared broker at
127.0.0.1:5672 is not used: every number comes from private nodes this script starts and
stops (tools/rabbitmq_nodes.py). Run one benchmark at a time; the machine is small.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import amqp
from kombu import Connection

from tools.rabbitmq_nodes import LocalCluster, LocalNode

log = logging.getLogger("benchmarks.queues")


@dataclass
class PhaseResult:
    messages: int
    seconds: float
    broker_cpu_s: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_msg(self) -> float:
        return 1e6 * self.broker_cpu_s / self.messages if self.messages else 0.0


@dataclass
class Measurement:
    label: str
    queue_type: str
    nodes: int
    publish: list[PhaseResult] = field(default_factory=list)
    consume: list[PhaseResult] = field(default_factory=list)

    def median(self, phase: str, attr: str) -> float:
        results: list[PhaseResult] = getattr(self, phase)
        return statistics.median(float(getattr(result, attr)) for result in results)


@dataclass
class Ceiling:
    label: str
    publishers: int
    consumers: int
    messages: int
    seconds: float
    broker_cpu_s: float
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def client_cores(self) -> float:
        return self.client_cpu_s / self.seconds if self.seconds else 0.0

    @property
    def broker_cores(self) -> float:
        return self.broker_cpu_s / self.seconds if self.seconds else 0.0


# --------------------------------------------------------------------------------------------
# One queue, raw AMQP through kombu's channel


def queue_arguments(queue_type: str) -> dict[str, Any]:
    return {"x-queue-type": queue_type}


def declare(url: str, name: str, queue_type: str) -> None:
    with Connection(url) as connection:
        channel = connection.channel()
        channel.queue_declare(
            name, durable=True, auto_delete=False, arguments=queue_arguments(queue_type)
        )


def delete(url: str, name: str) -> None:
    with Connection(url) as connection:
        connection.channel().queue_delete(name)


def publish_confirmed(
    url: str, name: str, count: int, body: bytes, window: int, ready: Callable[[], Any] = int
) -> float:
    """Publish ``count`` persistent messages, at most ``window`` unconfirmed; seconds taken.

    ``ready`` is called once connected, just before the clock starts.
    """
    with Connection(url) as connection:
        channel = connection.channel()
        channel.confirm_select()
        state = {"confirmed": 0, "nacked": 0, "sent": 0}
        highest = {"tag": 0}

        def on_ack(delivery_tag: int, multiple: bool) -> None:
            done = delivery_tag - highest["tag"] if multiple else 1
            highest["tag"] = max(highest["tag"], delivery_tag)
            state["confirmed"] += done

        def on_nack(delivery_tag: int, multiple: bool) -> None:
            done = delivery_tag - highest["tag"] if multiple else 1
            highest["tag"] = max(highest["tag"], delivery_tag)
            state["nacked"] += done

        channel.events["basic_ack"].add(on_ack)
        channel.events["basic_nack"].add(on_nack)
        ready()
        began = time.perf_counter()
        while state["sent"] < count:
            message = amqp.Message(body, delivery_mode=2, content_type="application/octet-stream")
            channel.basic_publish(message, exchange="", routing_key=name)
            state["sent"] += 1
            while state["sent"] - state["confirmed"] - state["nacked"] >= window:
                connection.drain_events(timeout=30)
        while state["confirmed"] + state["nacked"] < count:
            connection.drain_events(timeout=30)
        elapsed = time.perf_counter() - began
        if state["nacked"]:
            raise RuntimeError(f"{state['nacked']} of {count} publishes were nacked")
        return elapsed


def consume_acked(
    url: str, name: str, count: int, prefetch: int, ready: Callable[[], Any] = int
) -> float:
    """Consume and ack (one by one) ``count`` messages; seconds from basic.consume to last."""
    with Connection(url) as connection:
        channel = connection.channel()
        channel.basic_qos(0, prefetch, False)
        state = {"received": 0}

        def on_message(message: Any) -> None:
            if state["received"] >= count:
                return  # past this consumer's share: left unacked, requeued when it closes
            state["received"] += 1
            channel.basic_ack(message.delivery_tag)

        ready()
        tag = channel.basic_consume(name, callback=on_message)
        requested = time.perf_counter()
        while state["received"] < count:
            connection.drain_events(timeout=30)
        elapsed = time.perf_counter() - requested
        channel.basic_cancel(tag)
        return elapsed


# --------------------------------------------------------------------------------------------
# Measurements


def broker_cpu(nodes: Sequence[LocalNode]) -> float:
    return sum(node.cpu_seconds() for node in nodes)


def measure(
    label: str,
    url: str,
    nodes: Sequence[LocalNode],
    queue_type: str,
    args: argparse.Namespace,
) -> Measurement:
    result = Measurement(label, queue_type, len(nodes))
    body = os.urandom(args.size // 2).hex().encode()[: args.size]
    for repeat in range(1, args.repeats + 1):
        name = f"bench.{queue_type}.{uuid.uuid4().hex[:8]}"
        declare(url, name, queue_type)
        try:
            cpu0 = broker_cpu(nodes)
            seconds = publish_confirmed(url, name, args.messages, body, args.window)
            cpu1 = broker_cpu(nodes)
            time.sleep(0.3)  # let replication and fsync settle between phases
            cpu2 = broker_cpu(nodes)
            consumed = consume_acked(url, name, args.messages, args.prefetch)
            cpu3 = broker_cpu(nodes)
        finally:
            delete(url, name)
        result.publish.append(PhaseResult(args.messages, seconds, cpu1 - cpu0))
        result.consume.append(PhaseResult(args.messages, consumed, cpu3 - cpu2))
        log.info(
            "%s #%d: publish %.0f msg/s, consume+ack %.0f msg/s",
            label,
            repeat,
            result.publish[-1].rate,
            result.consume[-1].rate,
        )
    return result


def _ceiling_publisher(
    url: str, name: str, count: int, size: int, window: int, barrier: Any
) -> None:
    publish_confirmed(url, name, count, b"x" * size, window, ready=barrier.wait)


def _ceiling_consumer(url: str, name: str, count: int, prefetch: int, barrier: Any) -> None:
    consume_acked(url, name, count, prefetch, ready=barrier.wait)


def warm_up(url: str) -> None:
    """A few hundred messages through a throwaway queue of each type, not measured."""
    for queue_type in ("classic", "quorum"):
        name = f"bench.warmup.{uuid.uuid4().hex[:8]}"
        declare(url, name, queue_type)
        try:
            publish_confirmed(url, name, 500, b"w" * 600, 100)
            consume_acked(url, name, 500, 100)
        finally:
            delete(url, name)


def ceiling(
    label: str,
    url: str,
    nodes: Sequence[LocalNode],
    queue_type: str,
    publishers: int,
    consumers: int,
    args: argparse.Namespace,
) -> Ceiling:
    """Publishers and consumers at once on one queue: messages through it per second."""
    total = args.ceiling_messages
    name = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    declare(url, name, queue_type)
    context = multiprocessing.get_context("fork")
    per_publisher = total // publishers
    total = per_publisher * publishers
    per_consumer = [
        total // consumers + (1 if i < total % consumers else 0) for i in range(consumers)
    ]
    barrier = context.Barrier(publishers + consumers + 1)
    procs = [
        context.Process(target=_ceiling_consumer, args=(url, name, n, args.prefetch, barrier))
        for n in per_consumer
    ]
    procs += [
        context.Process(
            target=_ceiling_publisher,
            args=(url, name, per_publisher, args.size, args.window, barrier),
        )
        for _ in range(publishers)
    ]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(timeout=60)  # every client connected: go
        clients0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0 = broker_cpu(nodes)
        began = time.perf_counter()
        for proc in procs:
            proc.join(timeout=600)
            if proc.exitcode != 0:
                raise RuntimeError(f"a ceiling client exited with {proc.exitcode}")
        seconds = time.perf_counter() - began
        cpu1 = broker_cpu(nodes)
        clients1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        delete(url, name)
    client_cpu = (clients1.ru_utime + clients1.ru_stime) - (clients0.ru_utime + clients0.ru_stime)
    result = Ceiling(label, publishers, consumers, total, seconds, cpu1 - cpu0, client_cpu)
    log.info(
        "ceiling %s %dP/%dC: %.0f msg/s through one queue",
        label,
        publishers,
        consumers,
        result.rate,
    )
    return result


# --------------------------------------------------------------------------------------------
# Report


def table(measurements: list[Measurement]) -> str:
    base = measurements[0]
    pub0 = base.median("publish", "rate")
    con0 = base.median("consume", "rate")
    cpu0 = base.median("publish", "cpu_us_per_msg") + base.median("consume", "cpu_us_per_msg")
    lines = [
        "| queue | publish msg/s | x | consume+ack msg/s | x "
        "| broker CPU µs/msg (publish + consume) | x |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measurements:
        pub = m.median("publish", "rate")
        con = m.median("consume", "rate")
        cpu_p = m.median("publish", "cpu_us_per_msg")
        cpu_c = m.median("consume", "cpu_us_per_msg")
        lines.append(
            f"| {m.label} | {pub:,.0f} | {pub / pub0:.2f} | {con:,.0f} | {con / con0:.2f} "
            f"| {cpu_p + cpu_c:.0f} ({cpu_p:.0f} + {cpu_c:.0f}) | {(cpu_p + cpu_c) / cpu0:.2f} |"
        )
    return "\n".join(lines)


def ceiling_table(ceilings: list[Ceiling]) -> str:
    lines = [
        "| queue | publishers / consumers | msg/s through one queue | broker cores busy "
        "| client cores busy |",
        "|---|---|---:|---:|---:|",
    ]
    for c in ceilings:
        lines.append(
            f"| {c.label} | {c.publishers} / {c.consumers} | {c.rate:,.0f} "
            f"| {c.broker_cores:.2f} | {c.client_cores:.2f} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    measurements: list[Measurement] = []
    ceilings: list[Ceiling] = []
    single_ceilings = [(1, 1), (2, 2)]
    began = time.monotonic()
    with LocalNode.create() as node:
        nodes = [node]
        warm_up(node.amqp_url)
        measurements.append(measure("classic, single node", node.amqp_url, nodes, "classic", args))
        measurements.append(measure("quorum, single node", node.amqp_url, nodes, "quorum", args))
        if not args.no_ceiling:
            for queue_type in ("classic", "quorum"):
                for pubs, cons in single_ceilings:
                    ceilings.append(
                        ceiling(
                            f"{queue_type}, single node",
                            node.amqp_url,
                            nodes,
                            queue_type,
                            pubs,
                            cons,
                            args,
                        )
                    )
    if not args.no_cluster:
        with LocalCluster(size=3) as cluster:
            nodes = cluster.nodes
            # Clients on node 1, where the queue (and the quorum queue's leader) is declared.
            url = cluster.nodes[0].amqp_url
            warm_up(url)
            measurements.append(measure("classic, 3-node cluster", url, nodes, "classic", args))
            measurements.append(measure("quorum, 3-node cluster", url, nodes, "quorum", args))
            if not args.no_ceiling:
                ceilings.append(ceiling("quorum, 3-node cluster", url, nodes, "quorum", 1, 1, args))
    return {
        "settings": {
            "messages": args.messages,
            "size": args.size,
            "window": args.window,
            "prefetch": args.prefetch,
            "repeats": args.repeats,
            "ceiling_messages": args.ceiling_messages,
            "cpus": os.cpu_count(),
        },
        "seconds": round(time.monotonic() - began, 1),
        "measurements": [
            {
                "label": m.label,
                "queue_type": m.queue_type,
                "nodes": m.nodes,
                "publish": [asdict(r) for r in m.publish],
                "consume": [asdict(r) for r in m.consume],
                "publish_rate": m.median("publish", "rate"),
                "consume_rate": m.median("consume", "rate"),
                "publish_cpu_us_per_msg": m.median("publish", "cpu_us_per_msg"),
                "consume_cpu_us_per_msg": m.median("consume", "cpu_us_per_msg"),
            }
            for m in measurements
        ],
        "ceilings": [
            {**asdict(c), "rate": c.rate, "broker_cores": c.broker_cores} for c in ceilings
        ],
        "table": table(measurements),
        "ceiling_table": ceiling_table(ceilings) if ceilings else "",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.queues", description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=600, help="message body bytes")
    parser.add_argument("--window", type=int, default=500, help="unconfirmed publishes at most")
    parser.add_argument("--prefetch", type=int, default=500, help="consumer prefetch")
    parser.add_argument("--repeats", type=int, default=3, help="medians of this many runs")
    parser.add_argument("--ceiling-messages", type=int, default=30000)
    parser.add_argument("--no-cluster", action="store_true")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    results = run(args)
    print(
        f"\n{args.messages:,} persistent messages of {args.size} bytes, confirms window "
        f"{args.window}, prefetch {args.prefetch}, median of {args.repeats}; "
        "x = ratio to classic on a single node (same run)\n"
    )
    print(results["table"])
    if results["ceiling_table"]:
        print(f"\nSingle-queue ceiling ({args.ceiling_messages:,} messages, clients concurrent):\n")
        print(results["ceiling_table"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
