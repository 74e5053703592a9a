"""How a message whose write failed for a transient reason is retried: how often, how late.

The policy has Celery's four task options, under Celery's names:
``max_retries``, ``retry_backoff``, ``retry_backoff_max`` and ``retry_jitter``.
:mod:`telemetry.worker.retry_options` resolves them for the ingest task, from
the task's own options over the collector settings; this module only does the
arithmetic, which the delay queues of :mod:`telemetry.broker.topology` follow.

Retry *n* (from 0) has the ceiling ``min(retry_backoff_max, retry_backoff * 2 ** n)``
seconds. With jitter it waits between half the ceiling and all of it; without,
exactly the ceiling. Celery's own jitter draws from 0 to the ceiling; half of
it is kept here so that no retry comes straight back to a database that has
only just failed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from telemetry.config import Settings

# 2 ** 64 seconds is beyond any cap; a larger exponent would only overflow a float
# for a message that retries without end.
_LARGEST_DOUBLING = 64


@dataclass(frozen=True)
class RetryPolicy:
    """Celery's retry options for one task; ``max_retries`` None retries without end."""

    max_retries: int | None
    retry_backoff_s: float
    retry_backoff_max_s: float
    retry_jitter: bool = True

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        """The policy the settings alone describe (no task option set)."""
        return cls(settings.max_retries, settings.retry_backoff_s, settings.retry_backoff_max_s)

    def gives_up(self, retries: int) -> bool:
        """Whether a message already retried ``retries`` times goes to the dead letters now."""
        return self.max_retries is not None and retries >= self.max_retries

    def ceiling_s(self, retries: int) -> float:
        """The longest wait before retry number ``retries + 1``."""
        doubled = self.retry_backoff_s * 2.0 ** min(retries, _LARGEST_DOUBLING)
        return min(self.retry_backoff_max_s, doubled)

    def delay_s(self, retries: int, rng: random.Random) -> float:
        """The wait before retry number ``retries + 1``, jittered if the policy says so."""
        ceiling = self.ceiling_s(retries)
        if not self.retry_jitter:
            return ceiling
        return ceiling / 2 + rng.uniform(0, ceiling / 2)

    def ceilings_ms(self) -> list[int]:
        """The ceiling of every retry that can happen, in ms.

        Without a limit, up to the first that reaches ``retry_backoff_max``:
        every later retry has that ceiling too.
        """
        attempts = self.max_retries
        if attempts is None:
            attempts = next(
                (
                    attempt + 1
                    for attempt in range(_LARGEST_DOUBLING + 1)
                    if self.ceiling_s(attempt) >= self.retry_backoff_max_s
                ),
                _LARGEST_DOUBLING + 1,
            )
        return [round(self.ceiling_s(attempt) * 1000) for attempt in range(attempts)]

    def describe(self) -> str:
        """The policy in Celery's option names, for a log line."""
        limit = "None (never gives up)" if self.max_retries is None else str(self.max_retries)
        return (
            f"max_retries={limit}, retry_backoff={self.retry_backoff_s:g} s, "
            f"retry_backoff_max={self.retry_backoff_max_s:g} s, retry_jitter={self.retry_jitter}"
        )
