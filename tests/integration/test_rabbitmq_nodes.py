"""Private RabbitMQ nodes and the local 3-node cluster (tools/rabbitmq_nodes.py).

These tests stop and SIGKILL brokers, so they only ever touch private nodes on their own
ports; the shared broker at 127.0.0.1:5672 is never used here.
"""

from __future__ import annotations

import socket
import uuid

import pytest
from kombu import Connection, Exchange, Message, Queue

from tests.integration.conftest import confirming
from tests.integration.rabbit_support import private_broker, rabbit_cluster
from tools.rabbitmq_nodes import LocalCluster, LocalNode, NodeError, beam_pids, pick_ports

__all__ = ["private_broker", "rabbit_cluster"]  # the fixtures, re-exported for pytest

SHARED_PORT = 5672
BODY = b"x" * 600


def declare(connection: Connection, name: str, queue_type: str = "classic") -> Queue:
    """A durable queue on the default exchange, declared on ``connection``."""
    queue = Queue(
        name,
        Exchange(""),
        routing_key=name,
        durable=True,
        auto_delete=False,
        queue_arguments={"x-queue-type": queue_type},
    )
    queue(connection.default_channel).declare()
    return queue


def publish(connection: Connection, queue: Queue, bodies: list[bytes]) -> None:
    producer = connection.Producer()
    for body in bodies:
        producer.publish(body, routing_key=queue.name, delivery_mode=2, retry=False)


def drain(
    connection: Connection, queue: Queue, expected: int, timeout_s: float = 20
) -> list[bytes]:
    """Consume and ack until ``expected`` messages arrived (or the queue stays empty)."""
    received: list[bytes] = []

    def on_message(message: Message) -> None:
        received.append(bytes(message.body))
        message.ack()

    with connection.Consumer(queue, on_message=on_message, prefetch_count=200):
        while len(received) < expected:
            try:
                connection.drain_events(timeout=timeout_s)
            except TimeoutError:
                break
    return received


def test_private_node_accepts_publish_and_consume(private_broker: LocalNode) -> None:
    assert private_broker.port not in (None, SHARED_PORT)
    assert private_broker.amqp_url.startswith("amqp://guest:guest@127.0.0.1:")
    name = f"t.{uuid.uuid4().hex[:8]}"
    # guest/guest logs in: the node listens on 127.0.0.1 only (loopback_users).
    with confirming(private_broker.amqp_url) as connection:
        queue = declare(connection, name)
        publish(connection, queue, [b"one", b"two"])
        assert drain(connection, queue, 2) == [b"one", b"two"]


def test_private_node_keeps_persistent_messages_over_stop_and_kill(
    private_broker: LocalNode,
) -> None:
    name = f"t.{uuid.uuid4().hex[:8]}"
    with confirming(private_broker.amqp_url) as connection:
        publish(connection, declare(connection, name), [b"before-stop"])

    private_broker.stop()
    assert not private_broker.is_running()
    assert beam_pids(private_broker.name) == []
    private_broker.start()

    with confirming(private_broker.amqp_url) as connection:
        queue = declare(connection, name)
        publish(connection, queue, [b"before-kill"])
    # A crash: SIGKILL, no clean shutdown. A confirmed persistent message is on disk.
    private_broker.kill()
    assert not private_broker.is_running()
    private_broker.start()

    with confirming(private_broker.amqp_url) as connection:
        assert drain(connection, queue, 2) == [b"before-stop", b"before-kill"]


def test_a_node_that_cannot_start_leaves_no_process() -> None:
    # Its listener port is taken, and the port was given explicitly, so it is not retried.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = LocalNode.create()
        node.port, node.dist_port = port, pick_ports(1)[0]
        try:
            with pytest.raises(NodeError, match="eaddrinuse"):
                node.start(timeout_s=60)
            assert beam_pids(node.name) == []
            assert not node.is_running()
        finally:
            node.close()


def test_cluster_urls_and_members(rabbit_cluster: LocalCluster) -> None:
    ports = [node.port for node in rabbit_cluster.nodes]
    assert len(set(ports)) == 3 and SHARED_PORT not in ports
    assert rabbit_cluster.failover_url() == ";".join(
        f"amqp://guest:guest@127.0.0.1:{port}//" for port in ports
    )
    members = LocalCluster.running_members(rabbit_cluster.nodes[1])
    assert sorted(members) == sorted(rabbit_cluster.names())


def test_quorum_queue_keeps_messages_when_its_leader_is_killed(
    rabbit_cluster: LocalCluster,
) -> None:
    name = f"t.qq.{uuid.uuid4().hex[:8]}"
    bodies = [b"%05d:" % index + BODY for index in range(1000)]
    with confirming(rabbit_cluster.failover_url()) as connection:
        queue = declare(connection, name, "quorum")
        publish(connection, queue, bodies)  # each one confirmed by a quorum of replicas

    info = rabbit_cluster.queue_info(name)
    assert info["type"] == "quorum"
    assert sorted(info["members"].split(",")) == sorted(rabbit_cluster.names())
    leader = rabbit_cluster.queue_leader(name)
    leader.kill()
    try:
        survivors = [node for node in rabbit_cluster.nodes if node is not leader]
        assert rabbit_cluster.running() == survivors
        # The dead leader first in the list: kombu fails over to a surviving node.
        failover = rabbit_cluster.failover_url(first=leader)
        with Connection(failover, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=5, interval_start=0.2, interval_step=0.2)
            assert connection.as_uri().split("@")[1] != f"127.0.0.1:{leader.port}//"
            received = drain(connection, queue, len(bodies))
        assert len(received) == len(bodies)
        assert sorted(received) == sorted(bodies)
        assert rabbit_cluster.queue_leader(name) in survivors
    finally:
        rabbit_cluster.ensure_running()
    assert leader.is_running()
    with Connection(leader.amqp_url) as connection:
        channel = connection.channel()
        ok = channel.queue_declare(name, passive=True)
        assert ok.message_count == 0
        channel.queue_delete(name)
