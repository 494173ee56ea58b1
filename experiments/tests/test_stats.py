"""experiments/stats.py: the mSPRT's formulas, its confidence sequence, the burn-in, and the planned horizon."""

import math
import random

import pytest

from experiments import stats
from experiments.simulation import Scenario, simulate


def test_it_matches_the_papers_formula_for_equal_arms():
    # Johari et al.: Λ = sqrt(V / (V + nτ²)) · exp(n² τ² d² / (2 V (V + nτ²))), V the sum of the arms' variances.
    n, variance_sum, tau, difference = 400, 0.5, 0.05, 0.04
    expected = 0.5 * math.log(variance_sum / (variance_sum + n * tau**2)) + \
        n**2 * tau**2 * difference**2 / (2 * variance_sum * (variance_sum + n * tau**2))
    assert stats.msprt_log_ratio(difference, variance_sum / n, tau**2) == pytest.approx(expected)


def test_its_confidence_sequence_is_exactly_where_the_test_stops_rejecting():
    control, treatment = stats.Summary(1000, 0.80, 0.16), stats.Summary(1000, 0.86, 0.86 * 0.14)
    comparison = stats.compare(control, treatment, alpha=0.05, tau=0.04, min_samples=100)

    assert comparison.ready and comparison.significant and comparison.lower > 0
    assert comparison.p_value < 0.05
    variance = 0.16 / 1000 + 0.86 * 0.14 / 1000
    for edge in (comparison.lower, comparison.upper):  # Λ(θ0) = 1/α at the interval's ends
        assert stats.msprt_log_ratio(comparison.difference - edge, variance, 0.04**2) == pytest.approx(math.log(20))


def test_it_does_not_look_before_the_burn_in_or_with_no_variance():
    assert not stats.compare(stats.Summary(99, 0.5, 0.25), stats.Summary(500, 0.9, 0.09), alpha=0.05, tau=0.05,
                             min_samples=100).ready
    assert not stats.compare(stats.Summary.of_binary(200, 200), stats.Summary.of_binary(200, 200), alpha=0.05,
                             tau=0.05, min_samples=100).significant


def test_summaries_from_sums_are_the_plain_mean_and_variance():
    values = [random.Random(3).random() for _ in range(50)]
    summary = stats.Summary.of_sums(len(values), sum(values), sum(v * v for v in values))
    mean = sum(values) / 50
    assert summary.mean == pytest.approx(mean)
    assert summary.variance == pytest.approx(sum((v - mean) ** 2 for v in values) / 50)


def test_the_normal_quantile_is_exact_to_many_digits():
    assert stats.normal_quantile(0.975) == pytest.approx(1.959963984540054, abs=1e-9)
    assert stats.normal_quantile(0.8) == pytest.approx(0.8416212335729143, abs=1e-9)
    assert stats.normal_quantile(0.001) == pytest.approx(-3.090232306167813, abs=1e-9)


def test_the_horizon_grows_with_power_and_shrinks_with_the_effect():
    def planned(power: float, effect: float) -> int:
        return stats.horizon(control_variance=0.16, treatment_variance=0.16, effect=effect, tau=effect, alpha=0.05,
                             power=power)

    assert planned(0.9, 0.04) > planned(0.8, 0.04) > planned(0.8, 0.08)
    # Larger than the fixed-sample z-test's n for the same power (the price of looking at every step).
    fixed = 2 * (1.959964 + 0.841621) ** 2 * 0.32 / 0.04**2
    assert planned(0.8, 0.04) > fixed


def test_a_small_simulation_keeps_alpha_and_finds_a_large_lift():
    aa = simulate(Scenario("A/A", "binary", 0.5, 0.0, 0.2), runs=200, alpha=0.05, power=0.8, min_samples=50, seed=1)
    ab = simulate(Scenario("A/B", "binary", 0.5, 0.2, 0.2), runs=200, alpha=0.05, power=0.8, min_samples=50, seed=2)
    assert aa.rejected / aa.runs <= 0.05
    assert ab.rejected_right_way / ab.runs >= 0.8
