"""The registry snapshot: resolving a model costs no query once warm, and any change is seen at once."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from conftest import FIXTURE_FILE
from llmhub.snapshot import LocalSnapshot
from registry.models import ApiKey, LLMModel, ModelFallback, Provider, Tier, UserProfile
from registry.selectors import (
    get_available_models,
    get_default_model,
    get_model_by_id,
    registry_get,
    registry_snapshot,
)
from registry.services import api_key_revoke, llm_models_set_enabled, registry_load, user_tier_set

pytestmark = pytest.mark.django_db


def model_ids(client: APIClient) -> set[str]:
    response = client.get("/api/models/")
    assert response.status_code == 200, response.content
    return {model["id"] for model in response.json()["models"]}


def test_it_resolves_models_without_a_query_once_warm(registry, django_assert_num_queries):
    registry_get()
    pro = registry_get().tiers["pro"]

    with django_assert_num_queries(0):
        assert get_model_by_id("demo-pro").id == "demo-pro"
        assert {model.id for model in get_available_models(pro)} >= {"demo", "demo-pro"}
        assert get_default_model(pro).id == "demo-pro"
        assert registry_get().models["gpt-5-pro"].fallbacks == ("deepseek-v3.2",)


def build_queries() -> int:
    registry_snapshot.invalidate()
    with CaptureQueriesContext(connection) as captured:
        registry_get()
    return len(captured)


def test_it_builds_the_snapshot_with_as_many_queries_however_many_models_there_are(registry):
    few = build_queries()
    local, tiers = Provider.objects.get(slug="local"), list(Tier.objects.all())
    for number in range(20):
        model = LLMModel.objects.create(public_id=f"extra-{number}", display_name=f"Extra {number}",
                                        upstream_model="demo", provider=local)
        model.allowed_tiers.set(tiers)
        ModelFallback.objects.create(model=model, fallback=LLMModel.objects.get(public_id="demo"))

    assert len(registry_get().models) == len(registry.models) + 20
    assert build_queries() == few


def test_it_builds_the_snapshot_of_13500_models_with_fallbacks_with_queries_that_do_not_grow(
        registry, make_user, client_for):
    """Issue 16: prefetching 13,500 models' fallbacks and tiers by id failed on SQLite ("Expression tree is too
    large"), and every request answered 500."""
    few = build_queries()
    local, tiers = Provider.objects.get(slug="local"), list(Tier.objects.all())
    created = LLMModel.objects.bulk_create(
        LLMModel(public_id=f"bulk-{number}", display_name=f"Bulk {number}", upstream_model="demo", provider=local)
        for number in range(13_500)
    )
    Through = LLMModel.allowed_tiers.through
    Through.objects.bulk_create((Through(llmmodel_id=model.pk, tier_id=tiers[0].pk) for model in created),
                                batch_size=2000)
    ModelFallback.objects.bulk_create((ModelFallback(model=model, fallback=created[index - 1])
                                       for index, model in enumerate(created)), batch_size=2000)

    registry_snapshot.invalidate()
    with CaptureQueriesContext(connection) as captured:
        built = registry_get()

    assert built.models["bulk-1"].fallbacks == ("bulk-0",)
    assert built.models["bulk-0"].allowed_tiers == (tiers[0].slug,)
    assert len(captured) == few
    assert max(len(query["sql"]) for query in captured) < 2000
    assert client_for(make_user()).get("/api/models/").status_code == 200


@pytest.mark.parametrize("auth", ["api_key", "session"])
def test_it_answers_a_warm_model_list_without_a_query(registry, make_user, client_for, django_assert_num_queries, auth):
    user = make_user(tier="pro")
    if auth == "api_key":
        client = client_for(user)
    else:
        client = APIClient()
        client.force_login(user)
    model_ids(client)

    # A session costs its session row and its user on each of the 3 requests; the registry costs nothing.
    with django_assert_num_queries(0 if auth == "api_key" else 2 * 3):
        assert "demo-pro" in model_ids(client)
        assert client.get("/api/models/demo-pro/").status_code == 200
        assert client.get("/api/models/gpt-5-pro/").status_code == 403


def test_it_answers_a_warm_request_of_a_user_without_a_tier_without_a_query(
    registry, make_user, client_for, django_assert_num_queries
):
    client = client_for(make_user(tier=None))
    model_ids(client)

    with django_assert_num_queries(0):
        assert "demo" in model_ids(client)


def test_it_shows_a_model_disabled_through_the_orm_at_once(registry, make_user, client_for):
    client = client_for(make_user(tier="pro"))
    assert "demo-pro" in model_ids(client)

    model = LLMModel.objects.get(public_id="demo-pro")
    model.enabled = False
    model.save()

    assert "demo-pro" not in model_ids(client)
    assert client.get("/api/models/demo-pro/").status_code == 404
    assert client.get("/api/models/").json()["default_model"] != "demo-pro"


def test_it_shows_a_renamed_model_at_once(registry, make_user, client_for):
    client = client_for(make_user(tier="free"))
    assert client.get("/api/models/demo/").json()["display_name"] == "Demo (simulated)"

    model = LLMModel.objects.get(public_id="demo")
    model.display_name = "Demo, renamed"
    model.save()

    assert client.get("/api/models/demo/").json()["display_name"] == "Demo, renamed"
    assert get_model_by_id("demo").display_name == "Demo, renamed"


def test_it_shows_a_renamed_provider_at_once(registry, make_user, client_for):
    client = client_for(make_user(tier="free"))
    client.get("/api/models/demo/")

    provider = Provider.objects.get(slug="local")
    provider.display_name = "Local, renamed"
    provider.save()

    assert client.get("/api/models/demo/").json()["provider_name"] == "Local, renamed"


def test_it_shows_a_change_of_allowed_tiers_at_once(registry, make_user, client_for):
    client = client_for(make_user(tier="free"))
    assert client.get("/api/models/demo-pro/").status_code == 403

    LLMModel.objects.get(public_id="demo-pro").allowed_tiers.add(Tier.objects.get(slug="free"))
    assert client.get("/api/models/demo-pro/").status_code == 200

    Tier.objects.get(slug="free").models.remove(LLMModel.objects.get(public_id="demo-pro"))
    assert client.get("/api/models/demo-pro/").status_code == 403


def test_it_shows_a_new_tier_default_and_fallbacks_at_once(registry):
    registry_get()

    tier = Tier.objects.get(slug="pro")
    tier.default_model = LLMModel.objects.get(public_id="demo")
    tier.save()
    ModelFallback.objects.filter(model__public_id="demo").delete()

    assert get_default_model(registry_get().tiers["pro"]).id == "demo"
    assert get_model_by_id("demo").fallbacks == ()


def test_it_shows_a_change_of_a_users_tier_at_once(registry, make_user, client_for):
    user = make_user(tier="free")
    client = client_for(user)
    assert client.get("/api/models/demo-premium/").status_code == 403

    profile = UserProfile.objects.get(user=user)
    profile.tier = Tier.objects.get(slug="premium")
    profile.save()
    assert client.get("/api/models/demo-premium/").status_code == 200

    user_tier_set(user=user, tier_slug="pro")
    assert client.get("/api/models/").json()["tier"]["slug"] == "pro"


@pytest.mark.parametrize("auth", ["api_key", "session"])
def test_it_follows_a_renamed_tier_at_once(registry, make_user, client_for, auth):
    user = make_user(tier="pro")
    if auth == "api_key":
        client = client_for(user)
    else:
        client = APIClient()
        client.force_login(user)
    assert client.get("/api/models/").json()["tier"]["slug"] == "pro"

    tier = Tier.objects.get(slug="pro")
    tier.slug, tier.name = "plus", "Plus"
    tier.save()

    response = client.get("/api/models/")
    assert response.status_code == 200
    assert response.json()["tier"] == {"slug": "plus", "name": "Plus", "rank": 10}
    assert client.get("/api/models/demo-premium/").json()["error"]["required_tier"] == "premium"


def test_it_answers_while_only_the_registry_has_seen_a_tier_renamed_by_another_process(registry, make_user, client_for):
    client = client_for(make_user(tier="pro"))
    assert client.get("/api/models/").status_code == 200

    # Another process renamed the tier; this one has refreshed its registry but not yet its key memo.
    Tier.objects.filter(slug="pro").update(slug="plus")
    registry_snapshot.invalidate()

    response = client.get("/api/models/")
    assert response.status_code == 200
    assert response.json()["tier"]["slug"] == "plus"


def test_it_shows_a_change_of_a_session_users_tier_at_once(registry, make_user):
    user = make_user(tier="free")
    client = APIClient()
    client.force_login(user)
    assert client.get("/api/models/demo-premium/").status_code == 403

    user_tier_set(user=user, tier_slug="premium")

    assert client.get("/api/models/demo-premium/").status_code == 200


@pytest.mark.parametrize("how", ["orm", "service", "delete", "deactivate_user"])
def test_it_refuses_a_revoked_key_at_once(registry, make_user, client_for, how):
    user = make_user(tier="free")
    client = client_for(user)
    assert client.get("/api/models/").status_code == 200
    api_key = ApiKey.objects.get(user=user)

    if how == "orm":
        api_key.revoked_at = timezone.now()
        api_key.save()
    elif how == "service":
        api_key_revoke(api_key=api_key)
    elif how == "delete":
        api_key.delete()
    else:
        user.is_active = False
        user.save()

    assert client.get("/api/models/").status_code == 401


def test_it_shows_models_enabled_or_disabled_by_the_service_at_once(registry, make_user, client_for):
    client = client_for(make_user(tier="enterprise"))
    ids = [LLMModel.objects.get(public_id=public_id).pk for public_id in ("demo", "demo-pro")]
    assert {"demo", "demo-pro"} <= model_ids(client)

    assert llm_models_set_enabled(model_ids=ids, enabled=False) == 2
    assert not {"demo", "demo-pro"} & model_ids(client)
    assert client.get("/api/models/demo/").status_code == 404

    assert llm_models_set_enabled(model_ids=ids, enabled=True) == 2
    assert {"demo", "demo-pro"} <= model_ids(client)


def test_it_shows_a_reload_of_the_fixture_at_once(registry, tmp_path):
    data = json.loads(FIXTURE_FILE.read_text())
    data["models"] = [model for model in data["models"] if model["id"] != "demo-premium"]
    data["default_model"]["tiers"].update(premium="demo-pro", enterprise="demo-pro")
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    assert get_model_by_id("demo-premium").enabled

    registry_load(path=path)

    assert "demo-premium" not in {model.id for model in get_available_models(registry_get().tiers["enterprise"])}


def test_it_sees_a_change_made_by_another_process_within_the_check_interval(registry, settings):
    """Another process bumps the shared version token (a second snapshot of the same name stands in for it);
    this one sees it at its next check."""
    settings.LLMHUB = {**settings.LLMHUB, "REGISTRY_CACHE_CHECK_SECONDS": 0}
    registry_snapshot.invalidate()
    assert get_model_by_id("demo").display_name == "Demo (simulated)"

    # What another process does: write the row (no signal reaches us) and bump the version token.
    LLMModel.objects.filter(public_id="demo").update(display_name="Changed elsewhere")
    assert get_model_by_id("demo").display_name == "Demo (simulated)"
    LocalSnapshot("registry", dict).invalidate()

    assert get_model_by_id("demo").display_name == "Changed elsewhere"
