"""Routing over real HTTP against the simulated upstream: the openai SDK on /v1, a hub API key on /api/generate
and /api/translate. Capability-aware fallbacks, "fallbacks": "auto", tier policies, task hints, explanations."""

import io

import httpx2
import openai
import pytest

from conftest import usage_rows

MESSAGES = [{"role": "user", "content": "hello hub"}]
VISION_MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]


@pytest.fixture
def sdk(live_hub, free_user, api_key_for) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(free_user), max_retries=0, timeout=10)


@pytest.fixture
def premium_sdk(live_hub, make_user, api_key_for) -> openai.OpenAI:
    user = make_user("premium-user", tier="premium")
    return openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(user), max_retries=0, timeout=10)


@pytest.fixture
def free_key(free_user, api_key_for) -> str:
    return api_key_for(free_user)


@pytest.fixture
def only_local_models(live_hub):
    """Leaves only the simulated upstream's models enabled (the others would be tried over the internet)."""
    from registry.models import LLMModel
    from registry.selectors import registry_snapshot

    LLMModel.objects.exclude(provider__slug="local").update(enabled=False)
    registry_snapshot.invalidate()


def model_set(public_id: str, **fields) -> None:
    from registry.models import LLMModel

    model = LLMModel.objects.get(public_id=public_id)
    for name, value in fields.items():
        setattr(model, name, value)
    model.save()  # post_save invalidates the registry snapshot


def routing_policy(tier: str, policy: str, *, task: str = "", shadow: str = "", **params) -> None:
    from registry.models import Tier
    from routing.models import RoutingPolicy

    RoutingPolicy.objects.create(tier=Tier.objects.get(slug=tier), task=task, policy=policy, shadow_policy=shadow,
                                 params=params)


def test_it_never_falls_back_from_a_vision_request_to_a_model_without_vision(premium_sdk, simulated_upstream):
    simulated_upstream.set_fault("demo-premium", "status=500")  # its fallbacks, demo-pro and demo, have no vision

    with pytest.raises(openai.APIStatusError) as error:
        premium_sdk.chat.completions.create(model="demo-premium", messages=VISION_MESSAGES)

    assert error.value.status_code == 502
    assert simulated_upstream.stats() == {"demo-premium": 1}
    [row] = usage_rows(1)
    reasons = {entry["model"]: entry["reason"] for entry in row.route["candidates"]}
    assert reasons["demo-pro"] == reasons["demo"] == "capability: no vision"


def test_a_text_request_to_the_same_model_still_falls_back(premium_sdk, simulated_upstream):
    simulated_upstream.set_fault("demo-premium", "status=500")

    raw = premium_sdk.chat.completions.with_raw_response.create(model="demo-premium", messages=MESSAGES)

    assert raw.headers["x-llmhub-model"] == "demo-pro"


def test_a_model_with_automatic_fallbacks_falls_back_to_an_equivalent_model(live_hub, only_local_models, free_key,
                                                                             simulated_upstream):
    model_set("demo", fallbacks_auto=True)
    simulated_upstream.set_fault("demo", "status=500")

    response = httpx2.post(f"{live_hub}/api/generate/", json={"prompt": "hello hub", "model": "demo"},
                           headers={"Authorization": f"Bearer {free_key}"}, timeout=10)

    assert response.status_code == 200, response.text
    assert response.json()["model"] == "demo-backup"
    assert response.headers["x-llmhub-route"] == "explicit; demo; explicit"
    [row] = usage_rows(1)
    outcomes = {entry["model"]: (entry["outcome"], entry["reason"]) for entry in row.route["candidates"]}
    assert outcomes["demo"] == ("winner", "explicit")
    assert outcomes["demo-backup"] == ("fallback", "fallback 1")
    assert outcomes["demo-pro"] == ("skipped", "tier: needs pro")
    assert outcomes["demo-premium"] == ("skipped", "tier: needs premium")


def test_the_explanation_names_the_winner_and_each_losers_reason(live_hub, sdk, simulated_upstream):
    raw = sdk.chat.completions.with_raw_response.create(model="demo", messages=MESSAGES)

    assert raw.headers["x-llmhub-route"] == "explicit; demo; explicit"
    [row] = usage_rows(1)
    assert row.route["winner"] == "demo"
    entries = {entry["model"]: entry for entry in row.route["candidates"]}
    assert entries["demo"]["outcome"] == "winner"
    losers = [entry for model_id, entry in entries.items() if model_id != "demo"]
    assert losers and all(entry["reason"] for entry in losers)
    assert entries["demo-backup"]["outcome"] == "fallback"
    assert entries["demo-pro"]["reason"] == "tier: needs pro"
    assert "demo-embed" not in entries  # another kind of model is no candidate at all


def test_the_tiers_cost_policy_chooses_the_cheapest_model_and_says_so(live_hub, only_local_models, free_key,
                                                                      simulated_upstream):
    routing_policy("free", "cost", shadow="performance")

    response = httpx2.post(f"{live_hub}/api/generate/", json={"prompt": "hello hub"},
                           headers={"Authorization": f"Bearer {free_key}"}, timeout=10)

    assert response.status_code == 200, response.text
    assert response.json()["model"] == "demo-backup"
    assert response.headers["x-llmhub-route"].startswith("cost; demo-backup; cheapest of 2 meeting objectives (")
    [row] = usage_rows(1)
    assert row.route["policy"] == "cost"
    assert row.route["shadow"]["policy"] == "performance"
    assert set(row.route["shadow"]) >= {"winner", "agree", "cost", "latency_ms", "live_cost", "live_latency_ms"}


def test_a_task_hint_reads_the_users_default_for_that_task(live_hub, sdk, free_user, simulated_upstream):
    from registry.services import preferences_update

    preferences_update(user=free_user, data={"task_defaults": {"code": "demo-backup"}})

    coded = sdk.chat.completions.with_raw_response.create(messages=MESSAGES, model=openai.NOT_GIVEN,
                                                          extra_headers={"x-llmhub-task": "code"})
    plain = sdk.chat.completions.with_raw_response.create(messages=MESSAGES, model=openai.NOT_GIVEN)
    by_metadata = sdk.chat.completions.with_raw_response.create(messages=MESSAGES, model=openai.NOT_GIVEN,
                                                                metadata={"task": "code"})

    assert coded.headers["x-llmhub-model"] == "demo-backup"
    assert coded.headers["x-llmhub-route"] == "default; demo-backup; user default"
    assert plain.headers["x-llmhub-model"] == "demo"
    assert by_metadata.headers["x-llmhub-model"] == "demo-backup"


def test_translate_and_streams_carry_the_route_header(live_hub, sdk, free_key, simulated_upstream):
    translated = httpx2.post(f"{live_hub}/api/translate/", json={"text": "hello", "target_language": "fr"},
                             headers={"Authorization": f"Bearer {free_key}"}, timeout=30)
    with sdk.chat.completions.with_streaming_response.create(model="demo", messages=MESSAGES, stream=True) as stream:
        streamed_header = stream.headers["x-llmhub-route"]
        list(stream.iter_lines())

    assert translated.status_code == 200, translated.text
    assert translated.headers["x-llmhub-route"] == "default; demo; tier default"
    assert streamed_header == "explicit; demo; explicit"
    rows = usage_rows(2)
    assert {row.route["task"] for row in rows} == {"translation", "generation"}


def test_the_shadow_report_compares_the_shadow_policy_with_the_live_one(live_hub, only_local_models, free_key,
                                                                        make_user, api_key_for, simulated_upstream):
    from django.core.management import call_command

    routing_policy("free", "cost", shadow="performance")
    for _ in range(3):
        response = httpx2.post(f"{live_hub}/api/generate/", json={"prompt": "hello hub"},
                               headers={"Authorization": f"Bearer {free_key}"}, timeout=10)
        assert response.status_code == 200, response.text
    usage_rows(3)
    staff_key = api_key_for(make_user("staff", tier="free", is_staff=True))

    report = httpx2.get(f"{live_hub}/api/routing/shadow/?hours=1", headers={"Authorization": f"Bearer {staff_key}"})
    refused = httpx2.get(f"{live_hub}/api/routing/shadow/", headers={"Authorization": f"Bearer {free_key}"})

    assert report.status_code == 200, report.text
    [row] = report.json()
    assert (row["tier"], row["live_policy"], row["shadow_policy"], row["requests"]) == ("free", "cost", "performance", 3)
    assert 0 <= row["agreement"] <= 1 and row["live_expected_cost"] > 0
    assert refused.status_code == 403
    out = io.StringIO()
    call_command("routing_shadow_report", "--hours", "1", stdout=out)
    assert "| free | cost | performance | 3 |" in out.getvalue()
