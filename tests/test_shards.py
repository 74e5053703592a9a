"""Work-queue shards: the stable hash, the layout's names and arguments, routing, and the
shards a worker consumes (no broker: kombu's in-memory transport where one is needed)."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from kombu import Connection

from telemetry.broker.messages import build_task_message
from telemetry.broker.publisher import ConfirmingPublisher
from telemetry.broker.retry_policy import RetryPolicy
from telemetry.broker.shards import (
    ShardLayout,
    consumed_layout,
    retry_topology,
    shard_index,
    shard_queue_name,
)
from telemetry.broker.topology import Topology
from telemetry.config import load_settings
from telemetry.errors import ConfigError


def test_the_shard_of_a_gpu_is_a_fixed_crc32_and_not_pythons_salted_hash() -> None:
    # CRC-32's published check value is that of "123456789"; every process and host agrees.
    assert shard_index("123456789", 7) == 0xCBF43926 % 7
    assert [shard_index("GPU-0", count) for count in (2, 3, 7)] == [
        0x8B78FAFE % 2,
        0x8B78FAFE % 3,
        0x8B78FAFE % 7,
    ]
    assert [shard_index("GPU-0", 1), shard_index("anything", 1)] == [0, 0]


def test_many_gpus_spread_over_every_shard_roughly_evenly() -> None:
    keys = [f"GPU-{uuid.UUID(int=n)}" for n in range(3000)]
    counts = Counter(shard_index(key, 3) for key in keys)
    assert sorted(counts) == [0, 1, 2]
    assert min(counts.values()) > 900


def test_one_shard_is_todays_single_queue_argument_for_argument() -> None:
    settings = load_settings(env={"TELEMETRY_QUEUE": "work"})
    [only] = ShardLayout.of(settings).topologies
    today = Topology.of(settings)
    assert only == today
    assert only.work_queue().queue_arguments == today.work_queue().queue_arguments
    assert "x-queue-leader-locator" not in only.work_queue().queue_arguments
    assert only.queue_names() == ["work", "work.dead", *(q.name for q in today.retry_queues())]


def test_three_quorum_shards_are_named_by_index_and_count_and_balance_their_leaders() -> None:
    settings = load_settings(env={"TELEMETRY_QUEUE": "work", "QUEUE_SHARDS": "3"})
    layout = ShardLayout.of(settings)
    assert layout.work_queue_names() == ["work.0-of-3", "work.1-of-3", "work.2-of-3"]
    first = layout.topologies[0]
    assert first.dead_name == "work.0-of-3.dead"
    assert first.exchange_names() == ["work.0-of-3", "work.0-of-3.dlx", "work.0-of-3.retry"]
    for queue in (first.work_queue(), first.dead_queue(), *first.retry_queues()):
        assert queue.queue_arguments["x-queue-leader-locator"] == "balanced"
    work = first.work_queue().queue_arguments
    assert work["x-delivery-limit"] == settings.delivery_limit
    assert work["x-dead-letter-exchange"] == "work.0-of-3.dlx"
    # A retry copy expires back into its own shard.
    assert first.retry_queue(0).queue_arguments["x-dead-letter-exchange"] == "work.0-of-3"


def test_classic_shards_carry_no_leader_locator() -> None:
    settings = load_settings(env={"QUEUE_SHARDS": "2", "QUEUE_TYPE": "classic"})
    for topology in ShardLayout.of(settings).topologies:
        assert not (topology.work_queue().queue_arguments or {}).get("x-queue-leader-locator")


def test_two_shard_counts_never_share_a_queue_name() -> None:
    names = {
        count: set(
            ShardLayout.of(
                load_settings(env={"QUEUE_SHARDS": str(count)}), count
            ).work_queue_names()
        )
        for count in (1, 2, 3)
    }
    assert not names[1] & names[2] and not names[2] & names[3] and not names[1] & names[3]
    assert shard_queue_name("q", 0, 1) == "q"


def test_a_worker_consumes_every_shard_unless_told_which() -> None:
    every = consumed_layout(load_settings(env={"QUEUE_SHARDS": "3"}))
    some = consumed_layout(load_settings(env={"QUEUE_SHARDS": "3", "WORKER_SHARDS": "2,0"}))
    assert every.work_queue_names() == ["telemetry.0-of-3", "telemetry.1-of-3", "telemetry.2-of-3"]
    assert some.work_queue_names() == ["telemetry.0-of-3", "telemetry.2-of-3"]


def test_a_draining_worker_also_consumes_the_old_layouts_queues() -> None:
    settings = load_settings(env={"QUEUE_SHARDS": "3", "DRAIN_QUEUE_SHARDS": "1"})
    assert consumed_layout(settings).work_queue_names() == [
        "telemetry.0-of-3",
        "telemetry.1-of-3",
        "telemetry.2-of-3",
        "telemetry",
    ]


def test_a_retry_goes_back_to_the_shard_its_message_came_from() -> None:
    settings = load_settings(env={"QUEUE_SHARDS": "3", "DRAIN_QUEUE_SHARDS": "1"})
    policy = RetryPolicy.of(settings)
    assert (
        retry_topology(settings, "telemetry.2-of-3", policy)
        .retry_queue(0)
        .name.startswith("telemetry.2-of-3.retry.")
    )
    assert (
        retry_topology(settings, "telemetry", policy)
        .retry_queue(0)
        .name.startswith("telemetry.retry.")
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"QUEUE_SHARDS": "2", "WORKER_SHARDS": "2"}, "WORKER_SHARDS names shard 2"),
        ({"QUEUE_SHARDS": "3", "DRAIN_QUEUE_SHARDS": "3"}, "DRAIN_QUEUE_SHARDS is the old"),
        ({"QUEUE_SHARDS": "0"}, "QUEUE_SHARDS"),
        ({"QUEUE_SHARDS": "33"}, "QUEUE_SHARDS"),
        ({"WORKER_SHARDS": "0;1"}, "WORKER_SHARDS"),
    ],
)
def test_shard_settings_that_cannot_work_are_refused_in_one_line(
    env: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(env=env)


def test_the_publisher_sends_each_gpus_points_to_its_own_shard() -> None:
    # given: a 3-shard layout on the in-memory transport
    base = f"shards-{uuid.uuid4().hex[:8]}"
    settings = load_settings(env={"TELEMETRY_QUEUE": base, "QUEUE_SHARDS": "3"})
    layout = ShardLayout.of(settings)
    connection = Connection("memory://localhost/")
    publisher = ConfirmingPublisher(connection, layout)
    publisher.open(retries=0)
    gpus = [f"GPU-{n}" for n in range(12)]
    # when: two points of each GPU are sent
    for gpu in gpus * 2:
        publisher.send(build_task_message({"gpu_uuid": gpu}, None))
    publisher.flush()
    # then: each shard holds exactly the points of the GPUs that hash to it
    channel = connection.channel()
    for index, topology in enumerate(layout.topologies):
        held = []
        while (message := topology.work_queue()(channel).get(no_ack=True)) is not None:
            held.append(message.decode()[1]["point"]["gpu_uuid"])
        assert sorted(held) == sorted(g for g in gpus * 2 if shard_index(g, 3) == index)
    publisher.close()
