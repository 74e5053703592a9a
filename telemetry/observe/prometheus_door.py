"""The observe layer's one door to prometheus_client's internals.

Two things the library offers no public way to do:

* observe a whole batch of amounts at once: ``Histogram.observe`` takes a
  lock and walks the buckets in Python for every amount, which each point
  of a batch would pay (docs/performance.md); :func:`observe_all` counts
  the batch per bucket first and adds one increment a bucket, through the
  histogram's ``_upper_bounds``, ``_buckets`` and ``_sum``;
* choose multiprocess mode after import: the library picks its value class
  once, when first imported, from ``PROMETHEUS_MULTIPROC_DIR``; a worker
  knows only later whether its pool forks, so :func:`use_multiprocess_values`
  sets ``values.ValueClass`` with the library's own factory, and
  :func:`use_process_values` puts the in-process class back.

``tests/test_metrics.py`` checks both against the library's own behaviour.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Sequence

from prometheus_client import Histogram, values


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """Record ``amounts`` in ``histogram``, as observing each in turn would."""
    per_bucket = collections.Counter(
        bisect.bisect_left(histogram._upper_bounds, amount) for amount in amounts
    )
    histogram._sum.inc(sum(amounts))
    for bucket, count in per_bucket.items():
        histogram._buckets[bucket].inc(count)


def use_multiprocess_values() -> None:
    """Metrics made from now on keep their values in the multiprocess directory's files."""
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def use_process_values() -> None:
    """Metrics made from now on keep their values in this process; the files are closed."""
    values.ValueClass.close_all_files()
    values.ValueClass = values.MutexValue
