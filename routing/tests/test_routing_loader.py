"""A tier's routing policy declared in the registry file (`tiers[i].routing`): loaded with the rest of the file,
idempotent, exact for a tier that declares it, leaving admin's rows of other tiers alone; a bad value refuses the
whole file naming its JSON path, and changes nothing."""

import pytest

from registry.models import Tier
from registry.services import registry_load
from registry.tests.test_loader import assert_refused, fixture_data, load, write
from routing.models import RoutingPolicy
from routing.policies import PolicySpec
from routing.selectors import routing_plan

pytestmark = pytest.mark.django_db

PRO_ROUTING = {"policy": "cost", "shadow_policy": "performance", "params": {"success_floor": 0.97},
               "by_task": {"code": {"policy": "task", "params": {"models": {"code": "qwen3-coder-plus"}}},
                           "translation": {"policy": "performance"}}}


def with_pro_routing(routing: dict) -> dict:
    data = fixture_data()
    data["tiers"][1]["routing"] = routing
    return data


def rows() -> list[tuple]:
    return sorted(RoutingPolicy.objects.values_list("tier__slug", "task", "policy", "shadow_policy", "params"))


def test_the_shipped_fixture_declares_the_enterprise_policy(registry):
    assert rows() == [("enterprise", "", "default", "", {})]


def test_it_loads_a_tiers_policy_per_task_and_loading_it_again_changes_nothing(tmp_path, registry):
    path = write(tmp_path, with_pro_routing(PRO_ROUTING))
    load(path)

    assert rows() == [("enterprise", "", "default", "", {}),
                      ("pro", "", "cost", "performance", {"success_floor": 0.97}),
                      ("pro", "code", "task", "", {"models": {"code": "qwen3-coder-plus"}}),
                      ("pro", "translation", "performance", "", {})]
    assert routing_plan("pro", "code")[0] == PolicySpec("task", {"models": {"code": "qwen3-coder-plus"}})
    assert routing_plan("pro", "summarise") == (PolicySpec("cost", {"success_floor": 0.97}),
                                                PolicySpec("performance", {"success_floor": 0.97}))
    before = rows()
    report = registry_load(path=path)
    assert (report.created, report.updated) == (0, 0) and rows() == before


def test_a_declaring_tier_gets_exactly_the_files_rows_and_the_others_keep_admins(tmp_path, registry):
    load(write(tmp_path, with_pro_routing(PRO_ROUTING)))
    RoutingPolicy.objects.create(tier=Tier.objects.get(slug="free"), task="", policy="preference")

    load(write(tmp_path, with_pro_routing({"by_task": {"code": {"policy": "cost"}}})))

    assert rows() == [("enterprise", "", "default", "", {}), ("free", "", "preference", "", {}),
                      ("pro", "code", "cost", "", {})]
    assert routing_plan("pro", "translation")[0].name == "default"  # the tier's rows for other tasks left with it


@pytest.mark.parametrize(("routing", "expected"), [
    ({"policy": "cheapest"}, 'tiers[1].routing.policy: unknown policy "cheapest" (known: default, task, performance, '
                             'cost, preference)'),
    ({"policy": "cost", "shadow_policy": "oracle"}, 'tiers[1].routing.shadow_policy: unknown policy "oracle"'),
    ({"by_task": {"poetry": {"policy": "cost"}}},
     'tiers[1].routing.by_task.poetry: unknown task "poetry" (known: generation, translation, code, summarise)'),
    ({"by_task": {"code": {"policy": "fast"}}}, 'tiers[1].routing.by_task.code.policy: unknown policy "fast"'),
    ({"policy": "cost", "params": {"success_floor": 2}}, "tiers[1].routing.params: success_floor is a number from 0 "
                                                         "to 1."),
    ({"by_task": {"code": {"policy": "cost", "params": {"speed": 1}}}},
     "tiers[1].routing.by_task.code.params: Unknown parameters: speed"),
    ({"by_task": {"code": {"params": {}}}}, "tiers[1].routing.by_task.code: 'policy' is a required property"),
    ({"policy": "cost", "colour": "red"}, "tiers[1].routing: Additional properties are not allowed ('colour' was "
                                          "unexpected)"),
])
def test_a_bad_value_refuses_the_file_naming_its_path(tmp_path, registry, routing, expected):
    before = rows()

    assert_refused(tmp_path, lambda data: data["tiers"][1].update(routing=routing), expected)

    assert rows() == before
