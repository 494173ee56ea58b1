"""Declaring quota limits: the fixture (schema and path-precise errors), loading it, admin (tier limits, per-user
overrides, a key's own limits never above its owner's), and the cap on users' own models."""

import copy
import io
import json
import re
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.test import Client

from conftest import FIXTURE_FILE
from registry.limits import LimitSpec, limits_get
from registry.loader import RegistryFileInvalid, registry_file_parse
from registry.models import QuotaLimit, Tier, UserLLMConfig
from registry.services import registry_load
from registry.tests.admin_forms import admin_post

pytestmark = pytest.mark.django_db

LIMITS = [{"metric": "requests", "period": "minute", "limit": 20},
          {"metric": "cost", "period": "month", "limit": "5.00"},
          {"metric": "tokens", "period": "day", "limit": 100000, "model": "demo"}]


def fixture_with(**free) -> dict:
    data = json.loads(FIXTURE_FILE.read_text())
    data["tiers"][0].update(free)
    return data


def limits_of(tier: str) -> set[tuple]:
    return set(QuotaLimit.objects.filter(tier__slug=tier).values_list("metric", "period", "limit", "model"))


def test_it_parses_a_tiers_limits_and_own_model_settings():
    spec = registry_file_parse(fixture_with(limits=LIMITS, max_own_models=2, own_models_metered=True), environ={})

    free = spec.tiers[0]
    assert free.limits == [LimitSpec("requests", "minute", Decimal(20)), LimitSpec("cost", "month", Decimal("5.00")),
                           LimitSpec("tokens", "day", Decimal(100000), "demo")]
    assert (free.max_own_models, free.own_models_metered) == (2, True)
    assert spec.tiers[1].limits == []  # no limits: unlimited


@pytest.mark.parametrize(("limits", "expected"), [
    ([{"metric": "bytes", "period": "day", "limit": 1}], "tiers[0].limits[0].metric: 'bytes' is not one of"),
    ([{"metric": "requests", "period": "week", "limit": 1}], "tiers[0].limits[0].period: 'week' is not one of"),
    ([{"metric": "requests", "period": "day"}], "tiers[0].limits[0]: 'limit' is a required property"),
    ([{"metric": "requests", "period": "day", "limit": -1}], "tiers[0].limits[0].limit: -1 is not valid"),
    ([{"metric": "requests", "period": "day", "limit": 1.5}],
     "tiers[0].limits[0].limit: a requests limit must be a whole number"),
    ([{"metric": "cost", "period": "day", "limit": "0.0000001"}], "tiers[0].limits[0].limit: at most 6 decimal places"),
    ([{"metric": "tokens", "period": "day", "limit": 5, "model": "nope"}], 'tiers[0].limits[0].model: unknown model "nope"'),
    ([LIMITS[0], {**LIMITS[0], "limit": 30}], "tiers[0].limits[1]: a second requests limit per minute"),
    ([{"metric": "requests", "period": "day", "limit": 1, "colour": "red"}],
     "tiers[0].limits[0]: Additional properties are not allowed ('colour' was unexpected)"),
])
def test_it_refuses_a_bad_limit_naming_its_json_path(limits, expected):
    with pytest.raises(RegistryFileInvalid) as error:
        registry_file_parse(fixture_with(limits=limits), environ={})
    assert any(problem.startswith(expected) for problem in error.value.problems), error.value.problems


def test_it_refuses_a_negative_own_model_cap():
    with pytest.raises(RegistryFileInvalid) as error:
        registry_file_parse(fixture_with(max_own_models=-1), environ={})
    assert error.value.problems == ["tiers[0].max_own_models: -1 is less than the minimum of 0"]


def test_it_loads_limits_idempotently_and_replaces_them_with_the_file(tmp_path, simulated_upstream):
    path = tmp_path / "models.json"
    path.write_text(json.dumps(fixture_with(limits=LIMITS, max_own_models=3)))

    registry_load(path=path)
    second = registry_load(path=path)

    assert (second.created, second.updated) == (0, 0)
    assert limits_of("free") == {("requests", "minute", Decimal(20), ""), ("cost", "month", Decimal(5), ""),
                                 ("tokens", "day", Decimal(100000), "demo")}
    assert Tier.objects.get(slug="free").max_own_models == 3
    assert limits_get().tier("free").max_own_models == 3

    changed = copy.deepcopy(json.loads(path.read_text()))
    changed["tiers"][0]["limits"] = [{"metric": "requests", "period": "minute", "limit": 10}]
    path.write_text(json.dumps(changed))
    registry_load(path=path)
    assert limits_of("free") == {("requests", "minute", Decimal(10), "")}


def test_it_keeps_limits_set_in_admin_when_the_legacy_variables_configure_the_model(tmp_path, registry):
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="requests", period="day", limit=7)

    registry_load(path=None, default_path=tmp_path / "absent.json")  # no file named, none at the default

    assert limits_of("free") == {("requests", "day", Decimal(7), "")}


# --- Admin ------------------------------------------------------------------------------------------------------

@pytest.fixture
def staff_client(registry) -> Client:
    out = io.StringIO()
    call_command("ensure_demo_user", stdout=out)
    username, password = re.search(r"username '([^']+)', password '([^']+)'", out.getvalue()).groups()
    client = Client()
    assert client.login(username=username, password=password)
    return client


def inline(prefix: str, rows: list[dict]) -> dict:
    data = {f"{prefix}-TOTAL_FORMS": str(len(rows)), f"{prefix}-INITIAL_FORMS": "0"}
    for index, row in enumerate(rows):
        data.update({f"{prefix}-{index}-{name}": value for name, value in row.items()})
    return data


def test_it_edits_a_tiers_limits_in_admin(staff_client):
    url = f"/admin/registry/tier/{Tier.objects.get(slug='free').pk}/change/"
    response = admin_post(staff_client, url, **inline("limits", [{"metric": "requests", "period": "day", "limit": "50"},
                                                                  {"metric": "cost", "period": "month", "limit": "2.5"}]))
    assert response.status_code == 302, response.context["inline_admin_formsets"][0].formset.errors
    assert limits_of("free") == {("requests", "day", Decimal(50), ""), ("cost", "month", Decimal("2.5"), "")}
    assert {spec.metric for spec in limits_get().tier("free").limits} == {"requests", "cost"}

    refused = admin_post(staff_client, url, **inline("limits", [{"metric": "tokens", "period": "day", "limit": "1.5"},
                                                                 {"metric": "requests", "period": "hour", "limit": ""}]))
    assert refused.status_code == 200
    errors = refused.context["inline_admin_formsets"][0].formset.errors
    assert errors[0]["limit"] == ["A tokens limit must be a whole number."]
    assert errors[1]["limit"] == ["A limit is required."]
    assert len(limits_of("free")) == 2  # nothing written


def test_it_overrides_and_lifts_a_users_limits_in_admin(staff_client, make_user):
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="requests", period="day", limit=5)
    user = make_user("override-me", tier="free")
    url = f"/admin/auth/user/{user.pk}/change/"

    response = admin_post(staff_client, url, **inline("llm_limits", [
        {"metric": "requests", "period": "day", "limit": "500"}, {"metric": "cost", "period": "month", "limit": ""}]))

    assert response.status_code == 302
    owner = limits_get().owner_limits(tier_slug="free", user_id=user.pk)
    assert owner == (LimitSpec("requests", "day", Decimal(500)),)  # the cost override lifts nothing the tier had


def test_it_refuses_a_key_limit_above_its_owners_and_writes_nothing(staff_client, make_user, api_key_for):
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="requests", period="day", limit=100)
    user = make_user("key-owner", tier="free")
    api_key_for(user)
    key = user.hub_api_keys.get()
    url = f"/admin/registry/apikey/{key.pk}/change/"

    refused = admin_post(staff_client, url, **inline("limits", [{"metric": "requests", "period": "day", "limit": "101"}]))

    assert refused.status_code == 200
    errors = refused.context["inline_admin_formsets"][0].formset.non_form_errors()
    assert "requests per day: 101 is above the owner's limit of 100." in errors
    assert not QuotaLimit.objects.filter(api_key=key).exists()

    accepted = admin_post(staff_client, url, **inline("limits", [{"metric": "requests", "period": "day", "limit": "10"},
                                                                  {"metric": "tokens", "period": "hour", "limit": "999"}]))
    assert accepted.status_code == 302
    assert {spec.metric for spec in limits_get().keys[key.pk]} == {"requests", "tokens"}


# --- The cap on users' own models ---------------------------------------------------------------------------------

def test_it_caps_how_many_own_models_a_tier_may_add(registry, make_user, client_for, settings, simulated_upstream):
    settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": [f"127.0.0.1:{simulated_upstream.port}"]}
    Tier.objects.filter(slug="free").update(max_own_models=1)
    from registry.limits import limits_snapshot

    limits_snapshot.invalidate()
    client = client_for(make_user("capped", tier="free"))

    def add(slug: str):
        return client.post("/api/models/", {"id": slug, "display_name": slug, "model": "demo",
                                            "base_url": simulated_upstream.base_url, "api_key": "sk-own"}, format="json")

    assert add("first").status_code == 201
    refused = add("second")

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "max_own_models_reached"
    assert refused.json()["error"]["max_own_models"] == 1
    assert list(UserLLMConfig.objects.values_list("slug", flat=True)) == ["first"]
