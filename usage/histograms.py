"""Fixed log-scale histograms of durations (milliseconds): the latency and TTFT of usage roll-ups.

Every histogram has the same bounds, so two histograms merge by adding their counts bucket by bucket (an hour's
into a day's, one user's into a tier's) and a percentile comes out of any merge. A histogram is a list of
`BUCKETS` integer counts:

- bucket 0 holds [0, BOUNDS[0]) (under a quarter of a millisecond),
- bucket i holds [BOUNDS[i-1], BOUNDS[i]) for 1 <= i < BUCKETS - 1,
- the last bucket holds [BOUNDS[-1], ∞) (over about 17.5 minutes).

The bounds grow by GROWTH = 2^(1/4): a percentile read at a bucket's geometric middle is within
RELATIVE_ERROR = 2^(1/8) - 1 (about 9.1%) of the true value for every bucket but the first and the last.

Pure functions, no I/O: usage/rollups.py buckets rows in SQL with `BOUNDS` and builds these lists.
"""

import bisect
import math
from collections.abc import Iterable, Sequence

GROWTH = 2 ** 0.25
# 2^(i/4) ms for i = -8 … 80: 0.25 ms … 1,048,576 ms (about 17.5 minutes; a request's deadline is 2 minutes).
BOUNDS: tuple[float, ...] = tuple(2.0 ** (exponent / 4) for exponent in range(-8, 81))
BUCKETS = len(BOUNDS) + 1
RELATIVE_ERROR = 2 ** 0.125 - 1


def bucket_index(value_ms: float) -> int:
    """The bucket `value_ms` falls into: bucket i holds [BOUNDS[i-1], BOUNDS[i])."""
    return bisect.bisect_right(BOUNDS, value_ms)


def histogram_empty() -> list[int]:
    return [0] * BUCKETS


def histogram_of(values_ms: Iterable[float]) -> list[int]:
    counts = histogram_empty()
    for value in values_ms:
        counts[bucket_index(value)] += 1
    return counts


def histogram_merge(*histograms: Sequence[int]) -> list[int]:
    """The histogram of the union of the samples: counts added bucket by bucket."""
    for counts in histograms:
        if len(counts) != BUCKETS:
            raise ValueError(f"a histogram has {BUCKETS} buckets, not {len(counts)}")
    if not histograms:
        return histogram_empty()
    # Column by column: a day merges thousands of hourly histograms, and zip does the walking in C.
    return [sum(column) for column in zip(*histograms, strict=True)]


def histogram_percentile(counts: Sequence[int], quantile: float) -> float | None:
    """The `quantile` (0 < q <= 1) of the samples by nearest rank (the smallest sample with at least q·n samples
    at or below it), estimated by the geometric middle of the bucket holding it; None for an empty histogram.

    The first bucket answers half its upper bound; the last (open) bucket answers its lower bound.
    """
    if not 0 < quantile <= 1:
        raise ValueError("quantile must be in (0, 1]")
    total = sum(counts)
    if total == 0:
        return None
    # Rounded first: 0.07 * 100 is 7.000000000000001 in floating point, whose ceiling would skip a rank.
    rank = max(1, math.ceil(round(quantile * total, 9)))
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return bucket_middle(index)
    raise AssertionError("unreachable: the ranks add up to the total")


def bucket_middle(index: int) -> float:
    if index == 0:
        return BOUNDS[0] / 2
    if index == BUCKETS - 1:
        return BOUNDS[-1]
    return math.sqrt(BOUNDS[index - 1] * BOUNDS[index])
