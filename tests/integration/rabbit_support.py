"""Fixtures for destructive broker tests: private RabbitMQ nodes, never the shared one at 5672.

Import the fixtures into a test module (or a conftest) to use them::

    from tests.integration.rabbit_support import private_broker, rabbit_cluster  # noqa: F401

``private_broker`` is one fresh node per test; the test may stop, kill or restart it.
``rabbit_cluster`` is one 3-node cluster per test module; a test that stops or kills a node
starts it again before it ends (``cluster.ensure_running()``), so the next test finds 3 nodes.
Under ``CI=true`` a node that cannot start fails the test; elsewhere it is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import server_missing
from tools.rabbitmq_nodes import LocalCluster, LocalNode, NodeError, NodeTls

CLUSTER_SIZE = 3


def started_node(tls: NodeTls | None = None) -> Iterator[LocalNode]:
    """A private node started fresh (with a TLS listener when ``tls`` is given); stopped
    and its data deleted afterwards. For fixtures to ``yield from``."""
    node: LocalNode | None = None
    try:
        node = LocalNode.create(tls=tls)
        node.start()
    except NodeError as exc:
        if node is not None:
            node.close()
        server_missing("a private RabbitMQ node" + (" with TLS" if tls else ""), exc)
    assert node is not None
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def private_broker() -> Iterator[LocalNode]:
    """One private RabbitMQ node, started fresh; stopped and its data deleted afterwards."""
    yield from started_node()


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[LocalCluster]:
    """A 3-node cluster for the test module; stopped and its data deleted after the module.

    A test that stops or kills a node should start it again (``cluster.ensure_running()``).
    """
    cluster: LocalCluster | None = None
    try:
        cluster = LocalCluster(size=CLUSTER_SIZE)
        cluster.start()
    except NodeError as exc:
        if cluster is not None:
            cluster.close()
        server_missing(f"a local {CLUSTER_SIZE}-node RabbitMQ cluster", exc)
    assert cluster is not None
    try:
        yield cluster
    finally:
        cluster.close()
