"""usage/histograms.py: fixed log-scale bounds, merging by addition, percentiles within one bucket's error."""

import itertools
import math
import random

import pytest

from usage.histograms import (
    BOUNDS,
    BUCKETS,
    GROWTH,
    RELATIVE_ERROR,
    bucket_index,
    histogram_empty,
    histogram_merge,
    histogram_of,
    histogram_percentile,
)


def nearest_rank(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, -(-percent * len(ordered) // 100)) - 1]


def test_it_has_fixed_log_scale_bounds():
    assert BUCKETS == len(BOUNDS) + 1 == 90
    assert BOUNDS[0] == 0.25
    assert BOUNDS[-1] == 2.0 ** 20
    assert 1.0 in BOUNDS and 1000 < BOUNDS[48] < 1100
    for lower, upper in itertools.pairwise(BOUNDS):
        assert upper / lower == pytest.approx(GROWTH)
    assert pytest.approx(math.sqrt(GROWTH) - 1) == RELATIVE_ERROR


@pytest.mark.parametrize(("value", "index"), [
    (0.0, 0), (0.2499, 0), (0.25, 1), (1.0, 9), (1.0000001, 9), (2.0 ** 20 - 1e-6, BUCKETS - 2), (2.0 ** 20, BUCKETS - 1),
    (1e12, BUCKETS - 1),
])
def test_it_puts_a_value_in_the_bucket_whose_lower_bound_it_reaches(value, index):
    assert bucket_index(value) == index
    if 0 < index < BUCKETS - 1:
        assert BOUNDS[index - 1] <= value < BOUNDS[index]


def test_it_merges_by_addition_as_if_the_samples_were_one():
    rng = random.Random(7)
    first = [rng.lognormvariate(5, 1.5) for _ in range(500)]
    second = [rng.lognormvariate(3, 1.0) for _ in range(300)]

    merged = histogram_merge(histogram_of(first), histogram_of(second))

    assert merged == histogram_of(first + second)
    assert sum(merged) == 800
    assert histogram_merge() == histogram_empty()
    with pytest.raises(ValueError, match="90 buckets"):
        histogram_merge([1, 2, 3])


@pytest.mark.parametrize("percent", [1, 50, 90, 95, 99, 100])
def test_it_reads_percentiles_within_one_buckets_relative_error(percent):
    rng = random.Random(percent)
    values = [rng.lognormvariate(6, 1.2) for _ in range(2000)]  # about 400 ms, spread over decades

    estimate = histogram_percentile(histogram_of(values), percent / 100)

    exact = nearest_rank(values, percent)
    assert abs(estimate - exact) / exact <= RELATIVE_ERROR
    assert bucket_index(estimate) == bucket_index(exact)


def test_it_counts_ranks_exactly_at_round_quantiles():
    # 7 values of 10 ms and 93 of 1000 ms: the 7th percentile is 10 ms (0.07 * 100 is 7.000000000000001 in floats).
    counts = histogram_of([10.0] * 7 + [1000.0] * 93)

    assert histogram_percentile(counts, 0.07) == pytest.approx(10.0, rel=RELATIVE_ERROR)
    assert histogram_percentile(counts, 0.08) == pytest.approx(1000.0, rel=RELATIVE_ERROR)


def test_it_answers_none_for_no_samples_and_refuses_a_quantile_outside_0_1():
    assert histogram_percentile(histogram_empty(), 0.5) is None
    with pytest.raises(ValueError):
        histogram_percentile(histogram_of([1.0]), 0)
    with pytest.raises(ValueError):
        histogram_percentile(histogram_of([1.0]), 1.5)


def test_it_answers_the_edges_of_the_open_buckets():
    assert histogram_percentile(histogram_of([0.01]), 0.5) == BOUNDS[0] / 2
    assert histogram_percentile(histogram_of([5e6]), 0.5) == BOUNDS[-1]
