"""The test launchers' own waiting rule: as long as a count moves, and no longer."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tools.launchers import LaunchError, wait_for_count


def counter(values: list[int]) -> Callable[[], int]:
    """Returns the values in turn, then the last one for ever."""
    items: Iterator[int] = iter(values)
    last = [values[0]]

    def count() -> int:
        last[0] = next(items, last[0])
        return last[0]

    return count


def test_a_count_that_keeps_moving_is_waited_for_until_it_reaches_the_target() -> None:
    wait_for_count(counter([0, 1, 1, 2, 3, 5]), 5, "points", stall_s=0.05, poll_s=0.01)


def test_a_count_that_stops_short_or_overshoots_fails_once_it_stalls() -> None:
    with pytest.raises(LaunchError, match="stuck at 3 of 5"):
        wait_for_count(counter([0, 2, 3]), 5, "points", stall_s=0.05, poll_s=0.01)
    with pytest.raises(LaunchError, match="stuck at 6 of 5"):
        wait_for_count(counter([4, 6]), 5, "points", stall_s=0.05, poll_s=0.01)
