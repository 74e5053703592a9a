"""Retries follow Celery's task options: ``task_annotations`` in the user's ``celeryconfig.py``.

Against a real worker started in a working directory of its own, the real
RabbitMQ, and a database that is not there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from amqp.exceptions import NotFound
from kombu import Connection

from telemetry.broker.connect import Broker
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.retry_policy import RetryPolicy
from telemetry.broker.topology import Topology
from telemetry.ops.dlq import DeadLetterQueue
from tests.integration.conftest import make_points, publish_points, settings_for
from tests.integration.faults_support import wait_for_dead_letters
from tools.launchers import WorkerProcess, free_port

pytestmark = pytest.mark.faults

# Two quick retries, as Celery's annotations of the ingest task say them.
CELERYCONFIG = """\
task_annotations = {
    "telemetry.ingest": {"max_retries": 2, "retry_backoff": 0.1, "retry_backoff_max": 0.2},
}
"""
ANNOTATED = RetryPolicy(max_retries=2, retry_backoff_s=0.1, retry_backoff_max_s=0.2)


@pytest.fixture
def annotated_delay_queues(broker_url: str, queue_name: str) -> Iterator[list[str]]:
    """The delay queues the annotated policy makes, deleted afterwards (the test queue's
    clean-up knows only those the settings make)."""
    topology = Topology.of(settings_for(queue_name), ANNOTATED)
    names = [queue.name for queue in topology.retry_queues()]
    yield names
    with Connection(broker_url) as connection:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)


def queue_exists(broker_url: str, name: str) -> bool:
    with Connection(broker_url) as connection:
        try:
            connection.channel().queue_declare(name, passive=True)
        except NotFound:
            return False
    return True


def test_a_message_is_dead_lettered_after_exactly_the_retries_the_annotations_allow(
    start_worker: Callable[..., WorkerProcess],
    publisher: ConfirmingPublisher,
    annotated_delay_queues: list[str],
    broker_url: str,
    queue_name: str,
    tmp_path: Path,
) -> None:
    # given: a celeryconfig.py in the worker's working directory allowing two quick
    # retries, while the variables ask for five slow ones (30 s and more each); and
    # no database at all, so every write fails for a transient reason
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    (workdir / "celeryconfig.py").write_text(CELERYCONFIG)
    worker = start_worker(
        cwd=workdir,
        mongodb_uri=f"mongodb://127.0.0.1:{free_port()}/",
        mongo_timeout_ms="200",
        max_retries="5",
        retry_backoff_s="30",
    )
    # when
    publish_points(publisher, make_points(20))
    wait_for_dead_letters(broker_url, queue_name, 20, 90)
    worker.stop()
    # then: each message was tried once and retried twice, through the annotated delay queues
    stats = worker.last_stats()
    print(f"\nworker statistics: {stats}")
    assert (stats["retries"], stats["dead_lettered"]) == (40, 20)
    settings = settings_for(queue_name, CELERY_BROKER_URL=broker_url)
    letters = DeadLetterQueue(Broker.of(settings), Topology.of(settings)).peek()
    assert [letter.retries for letter in letters] == [2] * 20
    assert all("StorageUnavailable" in letter.error for letter in letters)
    assert all(queue_exists(broker_url, name) for name in annotated_delay_queues)
    assert not queue_exists(broker_url, f"{queue_name}.retry.30000ms")
    log = worker.log()
    assert "max_retries=2, retry_backoff=0.1 s, retry_backoff_max=0.2 s" in log
    assert "Task option max_retries=2 over MAX_RETRIES=5" in log
