"""The fleet simulation's acceptance (issue 11), run as `make bench` runs it: the real router over simulated models
of known latency, cost, failure and quality, seeded. Pure: no database, no network."""

import pytest
from django.core.management import call_command

from routing.management.commands.simulate_fleet import BUDGET_US, _sublinear
from routing.simulation import bandit_scenario, cost_scenario, drift_scenario, routing_overhead


def test_the_cost_policy_stays_within_5_percent_of_the_oracle_at_99_percent_success():
    result = cost_scenario(requests=10_000)

    assert result["ratio"] <= 1.05
    assert result["success"] >= 0.99


@pytest.mark.parametrize("kind", ["latency", "failure"])
def test_the_performance_policy_leaves_a_degrading_model_within_its_bound(kind):
    result = drift_scenario(kind=kind)

    assert result["moved_after"] is not None
    assert result["moved"] <= result["bound"]
    assert result["share_after"] < 0.05  # afterwards it gets only re-probes


def test_the_bandits_regret_grows_sublinearly():
    regret = bandit_scenario()["regret"]

    assert _sublinear(regret)
    assert regret[10_000] < 10 * regret[1_000]


def test_routing_costs_at_most_0_2_ms_per_request_at_20_candidate_models():
    overhead = routing_overhead()

    assert all(micros <= BUDGET_US for name, micros in overhead.items() if "request path" in name), overhead


def test_the_command_passes_every_check(capsys):
    call_command("simulate_fleet", "--requests", "2000")  # raises CommandError naming what it missed

    assert "**FAIL**" not in capsys.readouterr().out
