"""The drop-in /v1 API, driven by the official openai SDK over real HTTP against the simulated upstream."""

import asyncio

import httpx2
import openai
import pytest

from conftest import usage_rows

MESSAGES = [{"role": "user", "content": "hello hub"}]


@pytest.fixture
def async_sdk(live_hub, free_user, api_key_for):
    return openai.AsyncOpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(free_user), max_retries=0, timeout=10)


def rows(count: int = 1):
    return usage_rows(count)


def test_it_answers_a_chat_completion_through_the_sync_sdk(sdk):
    completion = sdk.chat.completions.create(model="demo", messages=MESSAGES)

    assert completion.choices[0].message.content == "Simulated reply from demo: hello hub"
    assert completion.usage.prompt_tokens == 2
    [row] = rows()
    assert (row.answered_model, row.status, row.input_tokens, row.output_tokens) == ("demo", "ok", 2, 6)
    assert row.cost > 0 and row.attempts == 1 and not row.streamed


def test_it_uses_the_tier_default_when_no_model_is_given(live_hub, free_user, api_key_for):
    response = httpx2.post(f"{live_hub}/v1/chat/completions", json={"messages": MESSAGES},
                           headers={"Authorization": f"Bearer {api_key_for(free_user)}"})
    assert response.status_code == 200
    assert response.headers["x-llmhub-model"] == "demo"


def test_it_streams_through_the_sync_sdk_with_usage(sdk):
    chunks = list(sdk.chat.completions.create(model="demo", messages=MESSAGES, stream=True,
                                              stream_options={"include_usage": True}))

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Simulated reply from demo: hello hub"
    assert chunks[-1].usage.completion_tokens == 6
    [row] = rows()
    assert row.streamed and row.status == "ok" and row.output_tokens == 6 and row.ttft_ms is not None


def test_it_hides_the_usage_chunk_when_the_client_did_not_ask_for_it(sdk):
    chunks = list(sdk.chat.completions.create(model="demo", messages=MESSAGES, stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert rows()[0].output_tokens == 6  # the hub still metered it


def test_it_works_with_the_async_sdk_streaming_and_not(async_sdk):
    async def run():
        completion = await async_sdk.chat.completions.create(model="demo", messages=MESSAGES)
        stream = await async_sdk.chat.completions.create(model="demo", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        return completion.choices[0].message.content, text

    plain, streamed = asyncio.run(run())
    assert plain == streamed == "Simulated reply from demo: hello hub"
    assert len(rows(2)) == 2


def test_it_lists_only_the_models_of_the_callers_tier(sdk):
    ids = {model.id for model in sdk.models.list()}
    assert ids == {"demo", "demo-backup", "deepseek-v3.2", "demo-embed"}


def test_it_refuses_a_model_above_the_tier_with_403_naming_the_tier(sdk, simulated_upstream):
    with pytest.raises(openai.PermissionDeniedError) as error:
        sdk.chat.completions.create(model="demo-premium", messages=MESSAGES)
    assert "Premium" in error.value.message
    with pytest.raises(openai.PermissionDeniedError):
        list(sdk.chat.completions.create(model="demo-premium", messages=MESSAGES, stream=True))
    assert sum(simulated_upstream.stats().values()) == 0


def test_it_answers_404_for_an_unknown_model(sdk):
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)


def test_it_answers_401_for_a_bad_key_without_echoing_it(live_hub):
    client = openai.OpenAI(base_url=f"{live_hub}/v1", api_key="lh-not-a-real-key-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as error:
        client.chat.completions.create(model="demo", messages=MESSAGES)
    assert "lh-not-a-real-key-123" not in str(error.value.body)


def test_it_answers_429_with_retry_after_when_every_model_is_rate_limited(sdk, simulated_upstream):
    simulated_upstream.set_fault("demo", "429=7")
    simulated_upstream.set_fault("demo-backup", "429=5")

    with pytest.raises(openai.RateLimitError) as error:
        sdk.chat.completions.create(model="demo", messages=MESSAGES)

    assert 4 <= int(error.value.response.headers["retry-after"]) <= 7
    # Both are cooling down now: the next request is refused without calling the upstream.
    before = sum(simulated_upstream.stats().values())
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="demo", messages=MESSAGES)
    assert sum(simulated_upstream.stats().values()) == before
    assert [row.http_status for row in rows(2)] == [429, 429]


@pytest.mark.parametrize("body", [
    {"model": "demo", "messages": []},
    {"model": "demo", "messages": "hello"},
    {"model": "demo", "messages": [{"role": "wizard", "content": "x"}]},
    {"model": "demo", "messages": [{"role": {}, "content": "x"}]},  # unhashable: it was a 500 (schemathesis)
    {"model": "demo", "messages": [{"role": ["user"], "content": "x"}]},
    {"model": "demo", "messages": MESSAGES, "max_tokens": 0},
    {"model": "demo", "messages": MESSAGES, "max_tokens": 10**9},
    {"model": "demo", "messages": MESSAGES, "stream": "yes"},
    {"model": "demo", "messages": MESSAGES, "api_base": "http://evil.example/v1"},
    {"model": "demo", "messages": MESSAGES, "api_key": "sk-stolen"},
    {"model": "demo", "messages": MESSAGES, "extra_headers": {"x": "y"}},
    {"model": 5, "messages": MESSAGES},
])
def test_it_refuses_bad_input_with_an_openai_error_and_forwards_nothing(live_hub, free_user, api_key_for,
                                                                        simulated_upstream, body):
    response = httpx2.post(f"{live_hub}/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {api_key_for(free_user)}"})
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert sum(simulated_upstream.stats().values()) == 0


def test_it_refuses_invalid_json_and_deep_nesting_with_400(live_hub, free_user, api_key_for):
    headers = {"Authorization": f"Bearer {api_key_for(free_user)}", "Content-Type": "application/json"}
    for content in (b"{not json", b"[" * 100_000 + b"]" * 100_000):
        response = httpx2.post(f"{live_hub}/v1/chat/completions", content=content, headers=headers)
        assert response.status_code == 400, content[:10]


def test_it_refuses_a_huge_body_with_413_before_reading_it(live_hub, free_user, api_key_for):
    response = httpx2.post(f"{live_hub}/v1/chat/completions", content=b"x" * (20 * 1024 * 1024),
                           headers={"Authorization": f"Bearer {api_key_for(free_user)}"}, timeout=30)
    assert response.status_code == 413


def test_it_serves_its_openapi_document(live_hub):
    response = httpx2.get(f"{live_hub}/v1/openapi.json")

    assert response.status_code == 200
    document = response.json()
    assert set(document["paths"]) == {"/v1/models", "/v1/models/{model}", "/v1/chat/completions", "/v1/completions",
                                      "/v1/embeddings", "/v1/responses"}
    assert document["components"]["schemas"]["ChatCompletionRequest"]["required"] == ["messages"]


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/v1/chat/completions", "POST"), ("DELETE", "/v1/models", "GET"), ("POST", "/v1/models/demo", "GET"),
])
def test_it_answers_a_wrong_method_with_405_and_allow(live_hub, free_user, api_key_for, simulated_upstream,
                                                      method, path, allowed):
    response = httpx2.request(method, f"{live_hub}{path}", headers={"Authorization": f"Bearer {api_key_for(free_user)}"})

    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert sum(simulated_upstream.stats().values()) == 0
