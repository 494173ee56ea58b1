"""The simulated upstream, driven over real HTTP by the real openai SDK, as the gateway will drive it.

No database needed; `pytest generation/tests/test_simulator.py -p no:django --noconftest` runs it without Django.
"""

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import httpx2
import openai
import pytest

from llmhub.testing import SimulatedUpstream, simulated_upstream  # noqa: F401

HELLO = [{"role": "user", "content": "Hello there, simulator"}]
HELLO_REPLY = "Simulated reply from demo: Hello there, simulator"
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
# The simulator alone (no database, no Redis): the same test in either suite.
pytestmark = pytest.mark.mode_independent


@pytest.fixture
def upstream(simulated_upstream: SimulatedUpstream) -> SimulatedUpstream:  # noqa: F811
    simulated_upstream.reset()
    return simulated_upstream


def make_client(upstream: SimulatedUpstream, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0, **options)


def make_async_client(upstream: SimulatedUpstream, **options: Any) -> openai.AsyncOpenAI:
    # aiohttp is the transport the gateway uses, so the async tests exercise that one.
    return openai.AsyncOpenAI(
        base_url=upstream.base_url,
        api_key="sk-test",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
        **options,
    )


def chat(upstream: SimulatedUpstream, model: str = "demo", **options: Any) -> Any:
    return make_client(upstream).chat.completions.create(model=model, messages=HELLO, **options)


def test_it_lists_the_default_models(upstream: SimulatedUpstream) -> None:
    models = make_client(upstream).models.list()

    assert [model.id for model in models] == ["demo", "demo-backup", "demo-pro", "demo-premium", "demo-translate",
                                             "demo-embed"]
    assert {model.owned_by for model in models} == {"simulator"}


def test_it_takes_its_models_from_the_constructor_and_at_run_time() -> None:
    # Its own server: models added at run time would outlive reset() on the session one.
    with SimulatedUpstream(models=["alpha", "beta"]) as upstream:
        with pytest.raises(openai.NotFoundError):
            chat(upstream, "gamma")
        upstream.add_models("gamma")

        assert [model.id for model in make_client(upstream).models.list()] == ["alpha", "beta", "gamma"]
        assert chat(upstream, "gamma").choices[0].message.content.startswith("Simulated reply from gamma:")


def test_it_replies_deterministically_with_usage(upstream: SimulatedUpstream) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "question"}]},
    ]

    completion = make_client(upstream).chat.completions.create(model="demo", messages=messages)

    assert completion.id.startswith("chatcmpl-sim-")
    assert completion.model == "demo"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Simulated reply from demo: second question"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 8
    assert completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == 14


def test_it_echoes_the_model_string_with_its_fault_suffix(upstream: SimulatedUpstream) -> None:
    completion = chat(upstream, "demo@latency=1")

    assert completion.model == "demo@latency=1"
    assert completion.choices[0].message.content == HELLO_REPLY


def test_it_truncates_to_max_tokens(upstream: SimulatedUpstream) -> None:
    by_max_tokens = chat(upstream, max_tokens=3)
    by_max_completion_tokens = chat(upstream, max_completion_tokens=5)

    assert by_max_tokens.choices[0].message.content == "Simulated reply from"
    assert by_max_tokens.choices[0].finish_reason == "length"
    assert by_max_tokens.usage.completion_tokens == 3
    assert by_max_completion_tokens.choices[0].message.content == "Simulated reply from demo: Hello"
    assert chat(upstream, max_tokens=100).choices[0].finish_reason == "stop"


def test_it_streams_deltas_that_concatenate_to_the_full_reply(upstream: SimulatedUpstream) -> None:
    expected = chat(upstream)

    chunks = list(chat(upstream, stream=True, stream_options={"include_usage": True}))

    content_chunks = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(content_chunks) == len(HELLO_REPLY.split())
    assert "".join(chunk.choices[0].delta.content for chunk in content_chunks) == expected.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == expected.usage.model_dump()


def test_it_ends_the_stream_with_done_and_omits_usage_unless_asked(upstream: SimulatedUpstream) -> None:
    request = {"model": "demo", "messages": HELLO, "stream": True}

    with make_client(upstream).chat.completions.with_streaming_response.create(**request) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]

    assert events[-1] == "data: [DONE]"
    assert all('"usage"' not in event for event in events)


def test_it_streams_with_the_async_aiohttp_client(upstream: SimulatedUpstream) -> None:
    async def collect() -> str:
        async with make_async_client(upstream) as client:
            stream = await client.chat.completions.create(model="demo", messages=HELLO, stream=True)
            return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    assert asyncio.run(collect()) == HELLO_REPLY


def test_it_answers_json_mode_with_a_json_object(upstream: SimulatedUpstream) -> None:
    completion = chat(upstream, response_format={"type": "json_object"})
    streamed = chat(upstream, response_format={"type": "json_object"}, stream=True)

    content = completion.choices[0].message.content
    assert json.loads(content) == {"reply": HELLO_REPLY}
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == content


def test_it_calls_the_first_tool(upstream: SimulatedUpstream) -> None:
    completion = chat(upstream, tools=[WEATHER_TOOL])

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert [(call.function.name, call.function.arguments) for call in choice.message.tool_calls] == [("get_weather", "{}")]
    assert chat(upstream, tools=[WEATHER_TOOL], tool_choice="none").choices[0].message.content == HELLO_REPLY


def test_it_streams_a_tool_call(upstream: SimulatedUpstream) -> None:
    chunks = [chunk for chunk in chat(upstream, tools=[WEATHER_TOOL], stream=True) if chunk.choices]

    calls = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    assert [call.function.name for call in calls] == ["get_weather"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_it_rejects_an_invalid_key_without_echoing_it(upstream: SimulatedUpstream) -> None:
    key = "sk-rejected-0123456789"
    client = openai.OpenAI(base_url=upstream.base_url, api_key=key, max_retries=0)

    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model="demo", messages=HELLO)

    assert raised.value.code == "invalid_api_key"
    assert key not in str(raised.value)
    assert key not in raised.value.response.text


def test_it_requires_a_bearer_key(upstream: SimulatedUpstream) -> None:
    request = urllib.request.Request(upstream.base_url + "/models")

    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=5)

    assert raised.value.code == 401
    assert json.loads(raised.value.read())["error"]["type"] == "invalid_request_error"


def test_it_answers_404_for_an_unknown_model(upstream: SimulatedUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        chat(upstream, "no-such-model")

    assert raised.value.code == "model_not_found"
    assert raised.value.param == "model"
    assert "The model `no-such-model` does not exist" in raised.value.message


def test_it_answers_the_status_fault(upstream: SimulatedUpstream) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        chat(upstream, "demo@status=500")
    with pytest.raises(openai.BadRequestError):
        chat(upstream, "demo", extra_headers={"X-Sim-Fault": "status=400"})

    assert raised.value.status_code == 500
    assert raised.value.type == "server_error"


def test_it_waits_for_the_latency_fault(upstream: SimulatedUpstream) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        chat(upstream, "demo@latency=200,status=503")

    assert time.monotonic() - started >= 0.2


def test_it_rate_limits_with_retry_after(upstream: SimulatedUpstream) -> None:
    with pytest.raises(openai.RateLimitError) as raised:
        chat(upstream, "demo@429=7")

    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.code == "rate_limit_exceeded"


def test_it_hangs_until_the_client_gives_up(upstream: SimulatedUpstream) -> None:
    client = make_client(upstream, timeout=0.5)

    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="demo@hang", messages=HELLO)

    assert 0.5 <= time.monotonic() - started < 3
    assert chat(upstream).choices[0].message.content == HELLO_REPLY  # the hung request blocks nobody


def test_it_holds_hundreds_of_slow_requests_concurrently(upstream: SimulatedUpstream) -> None:
    async def fire(count: int) -> list[str]:
        async with make_async_client(upstream) as client:
            calls = [client.chat.completions.create(model="demo@latency=1000", messages=HELLO) for _ in range(count)]
            return [completion.choices[0].message.content for completion in await asyncio.gather(*calls)]

    started = time.monotonic()
    replies = asyncio.run(fire(256))

    assert replies == [HELLO_REPLY] * 256
    # One at a time would take 256 s; the slack is for the SDK's own per-request cost in this process.
    assert time.monotonic() - started < 10


def test_it_drops_a_stream_after_n_content_chunks(upstream: SimulatedUpstream) -> None:
    received: list[str] = []

    with pytest.raises(openai.APIConnectionError):
        for chunk in chat(upstream, "demo@drop=2", stream=True):
            received.append(chunk.choices[0].delta.content)

    assert received == ["", "Simulated ", "reply "]


def test_it_drops_a_stream_for_the_async_aiohttp_client(upstream: SimulatedUpstream) -> None:
    async def collect(received: list[str]) -> None:
        async with make_async_client(upstream) as client:
            stream = await client.chat.completions.create(model="demo@drop=2", messages=HELLO, stream=True)
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content)

    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        asyncio.run(collect(received))

    assert received == ["", "Simulated ", "reply "]


def test_it_drops_a_non_streamed_request_without_answering(upstream: SimulatedUpstream) -> None:
    with pytest.raises(openai.APIConnectionError):
        chat(upstream, "demo@drop=0")

    assert chat(upstream).choices[0].message.content == HELLO_REPLY


def test_it_sends_malformed_json(upstream: SimulatedUpstream) -> None:
    with pytest.raises(json.JSONDecodeError):
        chat(upstream, "demo@malformed")
    with pytest.raises(json.JSONDecodeError):
        list(chat(upstream, "demo@malformed", stream=True))


def test_it_sends_an_html_page(upstream: SimulatedUpstream) -> None:
    response = make_client(upstream).chat.completions.with_raw_response.create(model="demo@html", messages=HELLO)
    with pytest.raises(openai.APIResponseValidationError):
        make_client(upstream, _strict_response_validation=True).chat.completions.create(model="demo@html", messages=HELLO)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.startswith("<!DOCTYPE html>")


def test_it_pads_a_huge_but_valid_body(upstream: SimulatedUpstream) -> None:
    response = make_client(upstream).chat.completions.with_raw_response.create(model="demo@huge=1000000", messages=HELLO)

    completion = response.parse()
    assert 1_000_000 <= len(response.content) < 1_001_000
    assert completion.choices[0].message.content.startswith(HELLO_REPLY + " xxx")


def raw_completion(upstream: SimulatedUpstream, model: str, **options: Any) -> dict:
    return make_client(upstream).chat.completions.with_raw_response.create(model=model, messages=HELLO,
                                                                          **options).http_response.json()


@pytest.mark.parametrize(("kind", "expected"), [
    ("negative", {"prompt_tokens": -50}), ("text", {"completion_tokens": "n/a"}), ("fraction", {"prompt_tokens": 12.5}),
    ("huge", {"prompt_tokens": 10**12}),
])
def test_it_reports_the_garbage_usage_asked_for(upstream: SimulatedUpstream, kind: str, expected: dict) -> None:
    usage = raw_completion(upstream, f"demo@usage={kind}")["usage"]

    assert usage == {**usage, **expected}
    assert "usage" not in raw_completion(upstream, "demo@usage=absent")
    streamed = make_client(upstream).chat.completions.with_raw_response.create(
        model="demo@usage=absent", messages=HELLO, stream=True, stream_options={"include_usage": True}).http_response
    text = streamed.read().decode()
    assert '"usage"' not in text and text.endswith("data: [DONE]\n\n")


def test_it_answers_content_that_is_not_a_string(upstream: SimulatedUpstream) -> None:
    assert raw_completion(upstream, "demo@content=number")["choices"][0]["message"]["content"] == 5
    streamed = make_client(upstream).chat.completions.with_raw_response.create(
        model="demo@content=number", messages=HELLO, stream=True).http_response.read()
    assert b'"content":5' in streamed


def test_it_spares_the_first_requests_of_an_after_fault(upstream: SimulatedUpstream) -> None:
    upstream.set_fault("demo", "status=500,after=2")

    assert [chat(upstream).choices[0].message.content for _ in range(2)] == [HELLO_REPLY] * 2
    with pytest.raises(openai.InternalServerError):
        chat(upstream)


def test_it_refuses_features_the_model_lacks(upstream: SimulatedUpstream) -> None:
    upstream.set_fault("demo", "nostream,nojson,notools")

    for options, param in [
        ({"stream": True}, "stream"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [WEATHER_TOOL]}, "tools"),
    ]:
        with pytest.raises(openai.BadRequestError) as raised:
            chat(upstream, **options)
        assert raised.value.param == param

    assert chat(upstream).choices[0].message.content == HELLO_REPLY


def test_it_rejects_unknown_fault_tokens(upstream: SimulatedUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        chat(upstream, "demo@latency=fast")

    assert "latency=fast" in raised.value.message
    with pytest.raises(ValueError, match="explode"):
        upstream.set_fault("demo", "explode")
    with pytest.raises(ValueError, match="usage=lots"):
        upstream.set_fault("demo", "usage=lots")


def test_it_keeps_persistent_faults_until_cleared_or_reset(upstream: SimulatedUpstream) -> None:
    upstream.set_fault("demo", "status=502")

    with pytest.raises(openai.InternalServerError):
        chat(upstream)
    assert chat(upstream, "demo-backup").choices[0].message.content.startswith("Simulated reply from demo-backup")
    upstream.clear_faults()
    assert chat(upstream).choices[0].message.content == HELLO_REPLY
    upstream.set_fault("demo", "status=502")
    upstream.reset()
    assert chat(upstream).choices[0].message.content == HELLO_REPLY


def test_it_counts_requests_per_base_model_before_faults(upstream: SimulatedUpstream) -> None:
    chat(upstream)
    chat(upstream, stream=True).close()
    with pytest.raises(openai.InternalServerError):
        chat(upstream, "demo-pro@status=500")

    assert upstream.stats() == {"demo": 2, "demo-pro": 1}
    upstream.reset()
    assert upstream.stats() == {}


def test_it_serves_deterministic_embeddings_as_floats_and_base64(upstream: SimulatedUpstream) -> None:
    client = make_client(upstream)
    first = client.embeddings.create(model="demo-embed", input=["hello", "world"])  # the SDK asks for base64
    again = client.embeddings.create(model="demo-embed", input="hello", encoding_format="float", dimensions=32)

    assert [len(item.embedding) for item in first.data] == [16, 16]
    assert first.data[0].embedding != first.data[1].embedding
    assert len(again.data[0].embedding) == 32
    assert abs(sum(value * value for value in again.data[0].embedding) - 1) < 1e-6
    assert client.embeddings.create(model="demo-embed", input=["hello"]).data[0].embedding == first.data[0].embedding
    assert first.usage.prompt_tokens == first.usage.total_tokens == 2


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "demo", "messages": HELLO, "response_format": "json"}, "response_format"),
    ({"model": "demo", "messages": HELLO, "stream_options": 5}, "stream_options"),
    ({"model": "demo", "messages": HELLO, "tools": {"a": 1}}, "tools"),
    ({"model": "demo", "messages": HELLO, "response_format": {"type": "yaml"}}, "response_format.type"),
    ({"model": "demo-embed", "input": ""}, "input"),
    ({"model": "demo-embed", "input": "x", "dimensions": "8"}, "dimensions"),
])
def test_it_answers_malformed_requests_with_openais_400(upstream: SimulatedUpstream, body: dict, param: str) -> None:
    path = "/v1/embeddings" if "input" in body else "/v1/chat/completions"
    response = httpx2.post(upstream.root_url + path, json=body, headers={"Authorization": "Bearer sk-test"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_it_never_crashes_on_a_shape_nobody_foresaw(upstream: SimulatedUpstream) -> None:
    body = {"model": "demo", "messages": [{"role": "user", "content": [{"type": "text", "text": {"x": 1}}]}],
            "tool_choice": {"function": 3}, "tools": [{"function": {"name": "f"}}]}
    response = httpx2.post(upstream.root_url + "/v1/chat/completions", json=body,
                           headers={"Authorization": "Bearer sk-test"})
    assert response.status_code in (200, 400)
    assert response.headers["content-type"] == "application/json"
