"""experiments.services: sticky assignment by hash and weights, with stopped and promoted arms."""

import time
from collections import Counter

import pytest

from experiments.models import Arm
from experiments.selectors import running_experiments
from experiments.services import (
    ExperimentInvalid,
    arm_stop,
    experiment_assign,
    experiment_promote,
)

pytestmark = pytest.mark.django_db


def test_it_assigns_each_user_the_same_arm_every_time_by_the_weights(registry, make_experiment):
    make_experiment("split", arms=(("a", "demo", {}, 3), ("b", "demo-backup", {"temperature": 0.2}, 1)))

    first = {user: experiment_assign(user, key="split").arm for user in range(4000)}

    assert first == {user: experiment_assign(user, key="split").arm for user in range(4000)}
    share = Counter(first.values())["a"] / 4000
    assert 0.72 < share < 0.78  # 3:1
    b = experiment_assign(next(u for u, arm in first.items() if arm == "b"), key="split")
    assert (b.model_id, dict(b.params), b.template_ref) == ("demo-backup", {"temperature": 0.2}, "greeting@2")


def test_it_joins_by_prompt_name_with_any_label_and_not_without_a_name(registry, make_experiment):
    make_experiment("by-prompt", prompt_name="greeting")

    assert experiment_assign(7, prompt="greeting@production").experiment_key == "by-prompt"
    assert experiment_assign(7, prompt="greeting") == experiment_assign(7, prompt="greeting@3")
    assert experiment_assign(7, prompt="other") is None
    assert experiment_assign(7) is None
    assert experiment_assign(None, key="by-prompt") is None
    assert experiment_assign(7, key="missing") is None


def test_it_moves_only_the_users_of_a_stopped_arm_and_serves_a_winner_to_everyone(registry, make_experiment):
    experiment = make_experiment("three", arms=(("a", "demo", {}, 1), ("b", "demo", {}, 1), ("c", "demo", {}, 1)))
    before = {user: experiment_assign(user, key="three").arm for user in range(900)}

    assert arm_stop(arm=Arm.objects.get(experiment=experiment, name="c"), reason="test")
    after = {user: experiment_assign(user, key="three").arm for user in range(900)}

    assert all(after[user] == arm for user, arm in before.items() if arm != "c")
    moved = Counter(after[user] for user, arm in before.items() if arm == "c")
    assert set(moved) == {"a", "b"} and min(moved.values()) > 0.3 * sum(moved.values())

    assert experiment_promote(experiment=experiment, arm_name="b")
    assert {experiment_assign(user, key="three").arm for user in range(900)} == {"b"}
    assert not experiment_promote(experiment=experiment, arm_name="a")  # no longer running


def test_it_refuses_to_start_an_experiment_that_cannot_run(registry, make_experiment):
    with pytest.raises(ExperimentInvalid, match="two arms"):
        make_experiment("lonely", arms=(("a", "demo", {}, 1), ("b", "demo", {}, 0)))
    with pytest.raises(ExperimentInvalid, match="Unknown model: nope"):
        make_experiment("unknown", arms=(("a", "demo", {}, 1), ("b", "nope", {}, 1)))
    make_experiment("first", prompt_name="greeting")
    with pytest.raises(ExperimentInvalid, match="Another experiment"):
        make_experiment("second", prompt_name="greeting")


def test_it_assigns_in_well_under_a_tenth_of_a_millisecond_once_warm(registry, make_experiment):
    make_experiment("fast", prompt_name="greeting")
    running_experiments.get()
    started = time.perf_counter()
    for user in range(10_000):
        experiment_assign(user, prompt="greeting@production")
    assert (time.perf_counter() - started) / 10_000 < 0.0001
