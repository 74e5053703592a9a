"""The retry policy's arithmetic: when a message gives up, how long each retry waits."""

from __future__ import annotations

import random

from telemetry.broker.retry_policy import RetryPolicy
from telemetry.broker.topology import Topology
from telemetry.config import Settings, load_settings


def test_backoff_doubles_with_jitter_and_is_capped(settings: Settings) -> None:
    policy = RetryPolicy.of(settings)
    rng = random.Random(7)
    for retries, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0), (6, 60.0), (12, 60.0)]:
        delays = [policy.delay_s(retries, rng) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert max(delays) - min(delays) > ceiling / 4, "jitter spreads retries out"


def test_without_jitter_each_retry_waits_its_whole_ceiling() -> None:
    policy = RetryPolicy(
        max_retries=5, retry_backoff_s=0.5, retry_backoff_max_s=3, retry_jitter=False
    )
    rng = random.Random(7)
    assert [policy.delay_s(retries, rng) for retries in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_message_gives_up_after_max_retries_and_never_without_a_limit() -> None:
    limited = RetryPolicy(max_retries=2, retry_backoff_s=1, retry_backoff_max_s=60)
    endless = RetryPolicy(max_retries=None, retry_backoff_s=1, retry_backoff_max_s=60)
    assert [limited.gives_up(retries) for retries in range(4)] == [False, False, True, True]
    assert not any(endless.gives_up(retries) for retries in (0, 5, 10_000))
    assert endless.ceiling_s(10_000) == 60


def test_every_retry_that_can_happen_has_a_ceiling() -> None:
    limited = RetryPolicy(max_retries=4, retry_backoff_s=0.1, retry_backoff_max_s=0.25)
    endless = RetryPolicy(max_retries=None, retry_backoff_s=1, retry_backoff_max_s=10)
    assert limited.ceilings_ms() == [100, 200, 250, 250]
    assert RetryPolicy(0, 1, 60).ceilings_ms() == []
    # without a limit: up to the first ceiling at the cap, which every later retry reuses
    assert endless.ceilings_ms() == [1000, 2000, 4000, 8000, 10_000]


def test_without_a_limit_a_cap_out_of_reach_still_gives_a_finite_list() -> None:
    policy = RetryPolicy(max_retries=None, retry_backoff_s=1e-30, retry_backoff_max_s=1e30)
    assert len(policy.ceilings_ms()) == 65


def test_the_delay_queues_follow_the_policy_given_else_the_settings() -> None:
    # given
    settings = load_settings(env={"TELEMETRY_QUEUE": "q", "MAX_RETRIES": "2"})
    policy = RetryPolicy(max_retries=3, retry_backoff_s=0.1, retry_backoff_max_s=0.2)
    # when
    from_settings = Topology.of(settings)
    from_policy = Topology.of(settings, policy)
    # then
    assert [q.name for q in from_settings.retry_queues()] == ["q.retry.1000ms", "q.retry.2000ms"]
    assert [q.name for q in from_policy.retry_queues()] == ["q.retry.100ms", "q.retry.200ms"]
    assert from_policy.retry_queue(2).queue_arguments["x-message-ttl"] == 200
