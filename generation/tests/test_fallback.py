"""Fallback through the registry, over real HTTP against the simulated upstream: via /v1 with the openai SDK
and via POST /api/generate/ with a hub API key."""

import time

import httpx2
import openai
import pytest

from conftest import usage_rows

MESSAGES = [{"role": "user", "content": "hello hub"}]
UPSTREAM_BODY_MARKERS = ("chatcmpl-sim", "<html", "Bad Gateway", "Simulated upstream error", "xxxxxxxx")


@pytest.fixture
def pro_user(make_user):
    return make_user("pro-user", tier="pro")


@pytest.fixture
def generate(live_hub, api_key_for, free_user):
    """POST /api/generate/ as `user` (the free user unless told)."""
    keys = {}

    def post(payload: dict, *, user=None, timeout: float = 10) -> httpx2.Response:
        user = user or free_user
        if user.pk not in keys:
            keys[user.pk] = api_key_for(user)
        return httpx2.post(f"{live_hub}/api/generate/", json=payload, timeout=timeout,
                           headers={"Authorization": f"Bearer {keys[user.pk]}"})

    return post


def set_local_timeout(seconds: float) -> None:
    from registry.models import Provider

    provider = Provider.objects.get(slug="local")
    provider.timeout_seconds = seconds
    provider.save()  # post_save invalidates the registry snapshot


def set_llmhub(settings, **values) -> None:
    settings.LLMHUB = {**settings.LLMHUB, **values}


def complete(sdk, *, stream: bool, model: str = "demo") -> None:
    """A chat completion through the SDK, read to its end when streamed."""
    result = sdk.chat.completions.create(model=model, messages=MESSAGES, stream=stream)
    if stream:
        list(result)


def assert_generic(response: httpx2.Response) -> None:
    for marker in UPSTREAM_BODY_MARKERS:
        assert marker not in response.text, marker


def test_it_falls_back_on_a_500_through_the_sdk(sdk, simulated_upstream):
    simulated_upstream.set_fault("demo", "status=500")

    raw = sdk.chat.completions.with_raw_response.create(model="demo", messages=MESSAGES)

    assert raw.headers["x-llmhub-model"] == "demo-backup"
    assert raw.headers["x-llmhub-attempts"] == "2"
    assert raw.parse().choices[0].message.content == "Simulated reply from demo-backup: hello hub"
    [row] = usage_rows(1)
    assert (row.requested_model, row.answered_model, row.attempts, row.status) == ("demo", "demo-backup", 2, "ok")
    assert simulated_upstream.stats() == {"demo": 1, "demo-backup": 1}


def test_it_falls_back_on_a_500_through_the_generate_api(generate, simulated_upstream):
    simulated_upstream.set_fault("demo", "status=500")

    response = generate({"prompt": "hello hub", "model": "demo"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "demo-backup"
    assert body["text"] == "Simulated reply from demo-backup: hello hub"
    assert [(a["model"], a["outcome"], a["upstream_status"]) for a in body["attempts"]] == [
        ("demo", "unavailable", 500), ("demo-backup", "ok", None)]
    [row] = usage_rows(1)
    assert (row.answered_model, row.attempts, row.endpoint) == ("demo-backup", 2, "api.generate")


def test_it_falls_back_when_the_upstream_never_answers(generate, simulated_upstream):
    set_local_timeout(1)
    simulated_upstream.set_fault("demo", "hang")

    started = time.monotonic()
    response = generate({"prompt": "hello hub", "model": "demo"})

    assert response.status_code == 200, response.text
    assert 0.9 < time.monotonic() - started < 3  # waited for the 1 s timeout, not the 30 s one
    assert response.json()["model"] == "demo-backup"
    assert [a["outcome"] for a in response.json()["attempts"]] == ["timeout", "ok"]


def test_it_answers_504_within_the_deadline_when_every_model_hangs(sdk, settings, simulated_upstream):
    set_local_timeout(1)
    set_llmhub(settings, GENERATION_DEADLINE_SECONDS=1.5)
    simulated_upstream.set_fault("demo", "hang")
    simulated_upstream.set_fault("demo-backup", "hang")

    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as error:
        sdk.chat.completions.create(model="demo", messages=MESSAGES)

    assert error.value.status_code == 504
    assert time.monotonic() - started < 1.5 + 1
    assert simulated_upstream.stats() == {"demo": 1, "demo-backup": 1}
    [row] = usage_rows(1)
    assert (row.status, row.http_status, row.error_type, row.answered_model) == ("error", 504, "upstream_timeout", "")
    assert row.attempts == 2


def test_it_falls_back_on_a_429_and_cools_the_model_down(generate, simulated_upstream):
    simulated_upstream.set_fault("demo", "429=30")

    first = generate({"prompt": "one", "model": "demo"})
    second = generate({"prompt": "two", "model": "demo"})

    assert [first.json()["model"], second.json()["model"]] == ["demo-backup", "demo-backup"]
    assert [a["outcome"] for a in first.json()["attempts"]] == ["rate_limited", "ok"]
    assert [a["model"] for a in second.json()["attempts"]] == ["demo-backup"]  # demo skipped while cooling
    assert simulated_upstream.stats() == {"demo": 1, "demo-backup": 2}
    assert [row.attempts for row in usage_rows(2)] == [2, 1]


def test_it_tries_a_model_again_once_its_retry_after_has_passed(generate, simulated_upstream):
    simulated_upstream.set_fault("demo", "429=1")
    assert generate({"prompt": "one", "model": "demo"}).json()["model"] == "demo-backup"
    simulated_upstream.set_fault("demo", "")

    time.sleep(1.1)

    assert generate({"prompt": "two", "model": "demo"}).json()["model"] == "demo"


def test_it_falls_back_on_a_dropped_connection(generate, simulated_upstream):
    simulated_upstream.set_fault("demo", "drop=0")

    response = generate({"prompt": "hello hub", "model": "demo"})

    assert response.status_code == 200, response.text
    assert response.json()["model"] == "demo-backup"
    assert [a["outcome"] for a in response.json()["attempts"]] == ["unavailable", "ok"]


def test_it_answers_502_not_504_when_every_connection_drops(sdk, simulated_upstream):
    simulated_upstream.set_fault("demo", "drop=0")
    simulated_upstream.set_fault("demo-backup", "drop=0")

    with pytest.raises(openai.InternalServerError) as error:
        sdk.chat.completions.create(model="demo", messages=MESSAGES)

    assert error.value.status_code == 502


@pytest.mark.parametrize("stream", [False, True])
def test_it_does_not_fall_back_on_a_400_from_the_upstream(sdk, simulated_upstream, stream):
    simulated_upstream.set_fault("demo", "status=400")

    with pytest.raises(openai.BadRequestError) as error:
        complete(sdk, stream=stream)

    # The upstream's reason reaches the client (issue 9: it can fix its request), and no other model is tried.
    assert error.value.body["message"] == "The upstream rejected the request: Simulated upstream error."
    assert simulated_upstream.stats() == {"demo": 1}
    [row] = usage_rows(1)
    assert (row.status, row.http_status, row.attempts) == ("error", 400, 1)


def test_it_does_not_fall_back_on_a_401_from_the_upstream_and_answers_502(generate, simulated_upstream):
    simulated_upstream.set_fault("demo", "status=401")

    response = generate({"prompt": "hello hub", "model": "demo"})

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "misconfigured"
    assert_generic(response)
    assert simulated_upstream.stats() == {"demo": 1}


def test_it_falls_back_to_the_free_models_fallback_for_a_free_user(generate, simulated_upstream):
    simulated_upstream.set_fault("demo", "status=503")

    assert generate({"prompt": "hi", "model": "demo"}).json()["model"] == "demo-backup"


def test_it_falls_back_from_demo_pro_to_demo_for_a_pro_user(generate, pro_user, simulated_upstream):
    simulated_upstream.set_fault("demo-pro", "status=500")

    response = generate({"prompt": "hi", "model": "demo-pro"}, user=pro_user)

    assert response.json()["model"] == "demo"
    assert simulated_upstream.stats() == {"demo-pro": 1, "demo": 1}


@pytest.mark.parametrize("stream", [False, True])
def test_it_never_tries_a_fallback_above_the_callers_tier(sdk, simulated_upstream, stream):
    from registry.models import LLMModel, ModelFallback

    link = ModelFallback.objects.get(model__public_id="demo")
    link.fallback = LLMModel.objects.get(public_id="demo-premium")
    link.save()
    simulated_upstream.set_fault("demo", "status=500")

    with pytest.raises(openai.InternalServerError) as error:
        complete(sdk, stream=stream)

    assert error.value.status_code == 502
    assert simulated_upstream.stats()["demo-premium"] == 0
    assert simulated_upstream.stats() == {"demo": 1}


@pytest.mark.parametrize("fault", ["malformed", "html", "huge=9000000"])
def test_it_answers_502_with_a_generic_message_for_a_broken_200(generate, simulated_upstream, fault):
    simulated_upstream.set_fault("demo", fault)
    simulated_upstream.set_fault("demo-backup", fault)

    response = generate({"prompt": "hello hub", "model": "demo"}, timeout=30)

    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_failed"
    assert [a["outcome"] for a in response.json()["error"]["attempts"]] == ["bad_response", "bad_response"]
    assert len(response.content) < 4096
    assert_generic(response)


def test_it_falls_back_on_a_broken_200(sdk, simulated_upstream):
    simulated_upstream.set_fault("demo", "html")

    raw = sdk.chat.completions.with_raw_response.create(model="demo", messages=MESSAGES)

    assert raw.headers["x-llmhub-model"] == "demo-backup"


def test_it_writes_exactly_one_usage_row_per_request(generate, sdk, pro_user, simulated_upstream):
    from usage.models import UsageLog

    simulated_upstream.set_fault("demo-pro", "status=500")
    sdk.chat.completions.create(model="demo", messages=MESSAGES)
    list(sdk.chat.completions.create(model="demo", messages=MESSAGES, stream=True))
    generate({"prompt": "hi"})
    generate({"prompt": "hi", "model": "demo-pro"}, user=pro_user)  # falls back to demo
    simulated_upstream.set_fault("demo", "status=500")
    simulated_upstream.set_fault("demo-backup", "status=502")
    assert generate({"prompt": "hi", "model": "demo"}).status_code == 502
    with pytest.raises(openai.InternalServerError):
        list(sdk.chat.completions.create(model="demo", messages=MESSAGES, stream=True))
    # Refused before the pipeline (tier, unknown model, bad input): nothing is metered.
    assert generate({"prompt": "hi", "model": "demo-premium"}).status_code == 403
    assert generate({"prompt": "hi", "model": "no-such-model"}).status_code == 404
    assert generate({"prompt": "hi", "bogus": 1}).status_code == 400

    rows = usage_rows(6)
    time.sleep(0.3)
    rows = usage_rows(6)

    assert len(rows) == 6 == len({row.request_id for row in rows})
    assert [(row.status, row.http_status) for row in rows] == [
        ("ok", 200), ("ok", 200), ("ok", 200), ("ok", 200), ("error", 502), ("error", 502)]
    assert UsageLog.objects.filter(answered_model="demo", requested_model="demo-pro").count() == 1


@pytest.mark.parametrize("provider, model", [("local", "demo")])
def test_it_maps_the_legacy_provider_parameter_to_a_registry_model(generate, provider, model):
    response = generate({"prompt": "hi", "provider": provider})

    assert response.status_code == 200, response.text
    assert response.json()["model"] == model
    [row] = usage_rows(1)
    assert (row.requested_model, row.answered_model) == (provider, model)


def test_it_refuses_a_legacy_provider_with_no_model_for_the_tier(generate, simulated_upstream):
    response = generate({"prompt": "hi", "provider": "openai"})  # its only model is premium

    assert response.status_code == 404
    assert sum(simulated_upstream.stats().values()) == 0
