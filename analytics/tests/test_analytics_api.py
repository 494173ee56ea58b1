"""/api/analytics/ and the analytics pages: who sees what. A user sees the models their tier allows and their own;
another user's own model is as unknown as a model that does not exist; staff see every registry model; the
recommendations are for staff only. Owner, other tier, outsider and staff in each."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone
from openai import OpenAI

from conftest import usage_wait_idle
from pages.tests.conftest import own_model
from registry.models import LLMModel
from registry.selectors import registry_snapshot
from usage.models import UsageLog
from usage.rollups import usage_rollups_update

pytestmark = pytest.mark.django_db


def log_row(user, number: int, *, model: str = "demo", hours_ago: int = 0, **fields) -> UsageLog:
    defaults = {"endpoint": "v1.chat_completions", "tier": "free", "requested_model": model, "answered_model": model,
                "status": "ok", "http_status": 200, "input_tokens": 100, "output_tokens": 20,
                "cost": Decimal("0.0012"), "latency_ms": 250.0}
    return UsageLog.objects.create(request_id=f"an-{user.pk if user else 0}-{number}-{model}", user=user,
                                   created_at=timezone.now() - timedelta(hours=hours_ago), **{**defaults, **fields})


@pytest.fixture
def people(registry, make_user):
    free, pro = make_user("an-free", tier="free"), make_user("an-pro", tier="pro")
    staff = make_user("an-staff", tier="free", is_staff=True)
    for number in range(3):
        log_row(pro, number, model="demo-pro", hours_ago=2, tier="pro")
        log_row(free, number, model="demo", hours_ago=30)
    usage_rollups_update()
    return {"free": free, "pro": pro, "staff": staff}


def ids(body: dict) -> set[str]:
    return {row["id"] for row in body["models"]}


def test_it_lists_the_models_a_tier_may_use(people, client_for):
    free = client_for(people["free"]).get("/api/analytics/models/")
    assert free.status_code == 200, free.content
    assert "demo" in ids(free.json()) and "demo-pro" not in ids(free.json()) and "gpt-5-pro" not in ids(free.json())
    pro = client_for(people["pro"]).get("/api/analytics/models/?window=24h").json()
    assert "demo-pro" in ids(pro) and "gpt-5-pro" not in ids(pro)
    assert next(row for row in pro["models"] if row["id"] == "demo-pro")["requests"] == 3
    assert pro["models"][0]["id"] == "demo-pro"  # traffic first
    assert {row["provider"] for row in pro["providers"]} >= {"local", "deepseek"}


def test_staff_see_every_registry_model_even_disabled(people, client_for):
    LLMModel.objects.filter(public_id="kimi-k2-0905").update(enabled=False)
    registry_snapshot.invalidate()
    body = client_for(people["staff"]).get("/api/analytics/models/").json()
    assert {"gpt-5-pro", "demo-premium", "kimi-k2-0905"} <= ids(body)
    assert client_for(people["staff"]).get("/api/analytics/models/kimi-k2-0905/").status_code == 200
    assert client_for(people["pro"]).get("/api/analytics/models/kimi-k2-0905/").status_code == 404


def test_a_model_above_the_tier_is_403_and_an_unknown_one_404(people, client_for):
    free = client_for(people["free"])
    response = free.get("/api/analytics/models/demo-pro/")
    assert response.status_code == 403 and response.json()["error"]["code"] == "tier_required"
    missing = free.get("/api/analytics/models/no-such-model/")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert client_for(people["pro"]).get("/api/analytics/models/demo-pro/?window=24h").json()["requests"] == 3


@pytest.mark.parametrize("query, field", [("window=1y", "window"), ("task=code", "task"), ("window=", "window")])
def test_it_refuses_a_bad_window_or_task_naming_it(people, client_for, query, field):
    for path in ("/api/analytics/models/", "/api/analytics/models/demo/"):
        response = client_for(people["free"]).get(f"{path}?{query}")
        assert response.status_code == 400
        assert field in response.json()["error"]["fields"]


def test_an_outsider_gets_401(people):
    from rest_framework.test import APIClient

    for path in ("/api/analytics/models/", "/api/analytics/models/demo/", "/api/analytics/recommendations/"):
        assert APIClient().get(path).status_code == 401


def test_recommendations_are_for_staff(people, client_for):
    response = client_for(people["pro"]).get("/api/analytics/recommendations/")
    assert response.status_code == 403 and response.json()["error"]["code"] == "staff_only"
    assert client_for(people["staff"]).get("/api/analytics/recommendations/").json() == []


@pytest.fixture
def allow_simulator(settings, simulated_upstream) -> str:
    settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": [f"127.0.0.1:{simulated_upstream.port}"]}
    return simulated_upstream.base_url


def test_an_own_model_counts_for_its_owner_only_even_under_a_registry_id(live_hub, allow_simulator, make_user,
                                                                          api_key_for, client_for):
    """Ann owns a model with the id `demo`: her requests to `demo` are her model's, Bob's are the registry's."""
    ann, bob = make_user("ann", tier="free"), make_user("bob", tier="free")
    own_model(ann, base_url=allow_simulator, slug="demo", display_name="Ann's demo")
    registry_snapshot.invalidate()
    for user, count in ((ann, 2), (bob, 3)):
        client = OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(user), max_retries=0)
        for number in range(count):
            client.chat.completions.create(model="demo", messages=[{"role": "user", "content": f"hi {number}"}])
    usage_wait_idle()
    assert UsageLog.objects.filter(answered_model="demo").count() == 5

    anns = client_for(ann).get("/api/analytics/models/demo/").json()
    assert (anns["model"]["owned"], anns["model"]["display_name"], anns["requests"]) == (True, "Ann's demo", 2)
    assert client_for(bob).get("/api/analytics/models/demo/").json()["requests"] == 3
    listed = client_for(ann).get("/api/analytics/models/").json()["models"]
    assert [(row["owned"], row["requests"]) for row in listed if row["id"] == "demo"] == [(False, 3), (True, 2)]
    # Bob's list has no model of Ann's; the registry's demo only.
    assert [row["owned"] for row in client_for(bob).get("/api/analytics/models/").json()["models"]
            if row["id"] == "demo"] == [False]


# --- The pages --------------------------------------------------------------------------------------------------

def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_pages_need_a_login(people):
    for path in ("/analytics/", "/models/demo/analytics/", "/analytics/recommendations/"):
        response = Client().get(path)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_pages_show_what_the_tier_allows(people):
    free = logged_in(people["free"])
    compare = free.get("/analytics/")
    assert compare.status_code == 200
    assert b'data-model="demo"' in compare.content and b'data-model="demo-pro"' not in compare.content
    assert free.get("/models/demo/analytics/").status_code == 200
    assert free.get("/models/demo-pro/analytics/").status_code == 403
    assert free.get("/models/no-such-model/analytics/").status_code == 404
    assert free.get("/analytics/?window=1y").status_code == 400
    assert free.get("/models/demo/analytics/?task=code").status_code == 400
    assert free.get("/analytics/recommendations/").status_code == 403
    staff = logged_in(people["staff"])
    assert b'data-model="gpt-5-pro"' in staff.get("/analytics/").content
    assert staff.get("/analytics/recommendations/").status_code == 200


def test_an_open_breaker_shows_its_reason_and_time_in_the_api_and_the_model_page(people, client_for):
    from health.breakers import breaker_test_outcome, breakers_reset

    breaker_test_outcome("demo", answered=False, key_rejected=True)
    try:
        breaker = client_for(people["free"]).get("/api/analytics/models/demo/").json()["status"]["breaker"]
        page = logged_in(people["free"]).get("/models/demo/analytics/").content.decode()
    finally:
        breakers_reset()

    assert breaker["state"] == "open" and breaker["reason"] == "the upstream rejected the model's key (test)"
    assert breaker["since"] is not None and breaker["retry_at"] is not None
    assert 'data-breaker="open"' in page and "Circuit breaker open since" in page
    assert "the upstream rejected the model&#x27;s key (test)" in page
