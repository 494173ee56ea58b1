"""GET /api/models/ and /api/models/<id>/: the tier matrix, defaults, 401/404, session auth, schema and docs."""

import json

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from conftest import FIXTURE_FILE
from registry.models import ApiKey, LLMModel
from registry.selectors import registry_snapshot

pytestmark = pytest.mark.django_db

SHIPPED = json.loads(FIXTURE_FILE.read_text())
TIERS = [tier["slug"] for tier in sorted(SHIPPED["tiers"], key=lambda tier: tier["rank"])]
TIER_NAMES = {tier["slug"]: tier["name"] for tier in SHIPPED["tiers"]}
ENABLED_MODELS = [model for model in SHIPPED["models"] if model.get("enabled", True)]
TIER_DEFAULTS = SHIPPED["default_model"]["tiers"]


def lowest_allowed_tier(model: dict) -> str:
    return min(model["allowed_tiers"], key=TIERS.index)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("model", ENABLED_MODELS, ids=[model["id"] for model in ENABLED_MODELS])
def test_it_serves_a_model_to_the_tiers_it_allows_and_refuses_the_others_naming_the_tier(
    registry, make_user, client_for, tier, model
):
    client = client_for(make_user(tier=tier))

    response = client.get(f"/api/models/{model['id']}/")

    if tier in model["allowed_tiers"]:
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["id"] == model["id"]
        assert body["display_name"] == model["display_name"]
        assert body["is_default"] == (TIER_DEFAULTS[tier] == model["id"])
        assert body["required_tier"] == lowest_allowed_tier(model)
    else:
        assert response.status_code == 403, response.content
        error = response.json()["error"]
        required = lowest_allowed_tier(model)
        assert error["code"] == "tier_required"
        assert error["required_tier"] == required
        assert TIER_NAMES[required] in error["message"]


@pytest.mark.parametrize("tier", TIERS)
def test_it_lists_exactly_the_models_the_tier_allows_with_its_default_marked(registry, make_user, client_for, tier):
    client = client_for(make_user(tier=tier))

    response = client.get("/api/models/")

    assert response.status_code == 200
    body = response.json()
    expected = {model["id"] for model in ENABLED_MODELS if tier in model["allowed_tiers"]}
    assert {model["id"] for model in body["models"]} == expected
    assert len(body["models"]) == len(expected)
    assert body["tier"]["slug"] == tier
    assert body["default_model"] == TIER_DEFAULTS[tier]
    assert [model["id"] for model in body["models"] if model["is_default"]] == [TIER_DEFAULTS[tier]]


def test_it_keeps_a_disabled_model_out_of_the_list_and_the_default(registry, make_user, client_for):
    model = LLMModel.objects.get(public_id="demo")
    model.enabled = False
    model.save()
    client = client_for(make_user(tier="free"))

    body = client.get("/api/models/").json()

    assert "demo" not in {model["id"] for model in body["models"]}
    assert body["default_model"] != "demo"
    assert body["default_model"] in {model["id"] for model in body["models"]}


@pytest.mark.parametrize("path", ["/api/models/", "/api/models/demo/"])
def test_it_answers_401_to_an_anonymous_caller(registry, path):
    response = APIClient().get(path)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/api/models/", "/api/models/demo/"])
@pytest.mark.parametrize("header", [
    "Bearer lh-not-a-real-key-0123456789abcdef",
    "Bearer lh-two parts-key",
    "Bearer",
])
def test_it_answers_401_to_a_wrong_key_without_echoing_it(registry, path, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get(path)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"
    for part in header.split()[1:]:
        assert part not in response.content.decode()
        assert part not in str(response.headers)


def test_it_answers_401_to_a_revoked_key_without_echoing_it(registry, make_user, api_key_for):
    user = make_user(tier="enterprise")
    raw_key = api_key_for(user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert client.get("/api/models/").status_code == 200

    api_key = ApiKey.objects.get(user=user)
    api_key.revoked_at = timezone.now()
    api_key.save()
    response = client.get("/api/models/")

    assert response.status_code == 401
    assert raw_key not in response.content.decode()
    assert raw_key[len("lh-"):] not in response.content.decode()


def test_it_answers_401_to_the_key_of_an_inactive_user(registry, make_user, client_for):
    user = make_user(tier="free")
    client = client_for(user)
    assert client.get("/api/models/").status_code == 200

    user.is_active = False
    user.save()

    assert client.get("/api/models/").status_code == 401


@pytest.mark.parametrize("model_id", ["no-such-model", "GPT-5-PRO", "demo%20"])
def test_it_answers_404_for_an_unknown_model(registry, make_user, client_for, model_id):
    response = client_for(make_user(tier="enterprise")).get(f"/api/models/{model_id}/")

    assert response.status_code == 404
    assert response.json()["error"]["code"] in {"model_not_found", "not_found"}


def test_it_answers_404_for_a_disabled_model_even_to_a_tier_that_may_use_it(registry, make_user, client_for):
    LLMModel.objects.filter(public_id="demo-pro").update(enabled=False)
    registry_snapshot.invalidate()
    client = client_for(make_user(tier="enterprise"))

    response = client.get("/api/models/demo-pro/")

    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "model_not_found", "message": "The model 'demo-pro' does not exist.",
    }


def test_it_answers_404_for_a_disabled_model_to_a_tier_that_may_not_use_it(registry, make_user, client_for):
    LLMModel.objects.filter(public_id="gpt-5-pro").update(enabled=False)
    registry_snapshot.invalidate()

    response = client_for(make_user(tier="free")).get("/api/models/gpt-5-pro/")

    assert response.status_code == 404


@pytest.mark.parametrize(("tier", "model_id", "status"), [
    ("free", "demo", 200), ("free", "demo-pro", 403), ("premium", "gpt-5-pro", 200),
])
def test_it_accepts_a_session_login_too(registry, make_user, tier, model_id, status):
    client = APIClient()
    client.force_login(make_user(tier=tier))

    assert client.get("/api/models/").json()["tier"]["slug"] == tier
    assert client.get(f"/api/models/{model_id}/").status_code == status


def test_it_puts_a_user_without_a_tier_in_the_lowest_tier(registry, make_user, client_for):
    client = client_for(make_user(tier=None))

    body = client.get("/api/models/").json()

    assert body["tier"]["slug"] == TIERS[0]
    assert client.get("/api/models/demo-pro/").status_code == 403


def test_it_serves_an_openapi_schema_with_the_models_paths(registry):
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    assert "/api/models/" in schema["paths"]
    assert "/api/models/{model_id}/" in schema["paths"]
    assert "get" in schema["paths"]["/api/models/"]
    assert schema["components"]["securitySchemes"]["hubApiKey"] == {
        "type": "http", "scheme": "bearer", "description": "A hub API key: `Authorization: Bearer lh-…`.",
    }
    assert {"hubApiKey": []} in schema["paths"]["/api/models/"]["get"]["security"]


def test_it_serves_the_swagger_ui(registry):
    response = APIClient().get("/api/docs/")

    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


@pytest.mark.parametrize("path", ["/api/models/", "/api/models/demo/"])
def test_it_renders_the_browsable_api_for_a_logged_in_user(registry, make_user, path):
    client = APIClient()
    client.force_login(make_user(tier="free"))

    response = client.get(path, HTTP_ACCEPT="text/html")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"Demo (simulated)" in response.content


def test_it_renders_a_403_in_the_browsable_api_too(registry, make_user):
    client = APIClient()
    client.force_login(make_user(tier="free"))

    response = client.get("/api/models/gpt-5-pro/", HTTP_ACCEPT="text/html")

    assert response.status_code == 403
    assert b"tier_required" in response.content
