"""The Responses API both ways, driven by the official openai SDK over real HTTP against the simulated upstream:
`/v1/responses` to a chat model (bridged) and to a model served on `/responses` (native), and chat requests to
the latter (bridged). `demo` speaks chat; `demo-backup` (demo's fallback) is switched to the Responses API here."""

import httpx2
import openai
import pytest

from conftest import usage_rows
from usage.services import tokens_count_text

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
CHAT_WEATHER_TOOL = {"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"}}
MESSAGES = [{"role": "user", "content": "hello hub"}]
RESPONSES_MODEL = "demo-backup"


@pytest.fixture
def responses_model(live_hub):
    """`demo-backup` served on the Responses API (the simulator serves both APIs for every model)."""
    from registry.models import LLMModel
    from registry.selectors import registry_snapshot

    LLMModel.objects.filter(public_id=RESPONSES_MODEL).update(api="responses")
    registry_snapshot.invalidate()
    return RESPONSES_MODEL


@pytest.fixture
def any_model(request, responses_model):
    """Each test runs against a chat model (bridged) and a model served on the Responses API (native)."""
    return {"chat": "demo", "responses": responses_model}[request.param]


both = pytest.mark.parametrize("any_model", ["chat", "responses"], indirect=True)


def one_row(endpoint: str = "v1.responses", *, streamed: bool = False):
    [row] = usage_rows(1)
    assert (row.endpoint, row.status, row.streamed) == (endpoint, "ok", streamed)
    assert row.input_tokens > 0 and row.output_tokens > 0 and row.cost > 0
    return row


@both
def test_it_answers_a_response(sdk, any_model, simulated_upstream):
    response = sdk.responses.create(model=any_model, input="hello hub", instructions="Be brief.")

    assert response.output_text == f"Simulated reply from {any_model}: hello hub"
    assert response.status == "completed" and response.object == "response"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 6)  # instructions + input
    row = one_row()
    assert (row.answered_model, row.input_tokens, row.output_tokens) == (any_model, 4, 6)
    assert simulated_upstream.stats() == {any_model: 1}


@both
def test_it_streams_a_response(sdk, any_model):
    events = list(sdk.responses.create(model=any_model, input=[{"role": "user", "content": "hello hub"}],
                                       stream=True))

    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        f"Simulated reply from {any_model}: hello hub"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text == f"Simulated reply from {any_model}: hello hub"
    assert final.usage.output_tokens == 6
    row = one_row(streamed=True)
    assert (row.input_tokens, row.output_tokens) == (final.usage.input_tokens, 6) and row.ttft_ms is not None


@both
def test_the_sdks_stream_helper_assembles_the_final_response(sdk, any_model):
    with sdk.responses.stream(model=any_model, input="hello hub") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == f"Simulated reply from {any_model}: hello hub"
    one_row(streamed=True)


@both
def test_it_calls_a_tool(sdk, any_model):
    response = sdk.responses.create(model=any_model, input="weather in Paris?", tools=[WEATHER_TOOL],
                                    tool_choice={"type": "function", "name": "get_weather"})

    [call] = [item for item in response.output if item.type == "function_call"]
    assert (call.name, call.arguments) == ("get_weather", "{}") and call.call_id
    one_row()
    # The tool's result goes back as input: the conversation goes on.
    follow_up = sdk.responses.create(model=any_model, tools=[WEATHER_TOOL], tool_choice="none", input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ])
    assert follow_up.output_text.startswith(f"Simulated reply from {any_model}")


@both
def test_it_streams_a_tool_call(sdk, any_model):
    with sdk.responses.stream(model=any_model, input="weather?", tools=[WEATHER_TOOL]) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in types
    [call] = final.output
    assert (call.type, call.name, call.arguments) == ("function_call", "get_weather", "{}")
    one_row(streamed=True)


@both
@pytest.mark.parametrize("text_format", [
    {"type": "json_object"},
    {"type": "json_schema", "name": "reply", "strict": True,
     "schema": {"type": "object", "properties": {"reply": {"type": "string"}}, "required": ["reply"],
                "additionalProperties": False}},
])
def test_it_answers_json(sdk, any_model, text_format):
    import json

    response = sdk.responses.create(model=any_model, input="hello hub", text={"format": text_format})
    assert json.loads(response.output_text) == {"reply": f"Simulated reply from {any_model}: hello hub"}
    one_row()


def test_reasoning_effort_and_reasoning_tokens_reach_both_apis(sdk, responses_model):
    response = sdk.responses.create(model=responses_model, input="hello hub", reasoning={"effort": "high"})
    assert response.usage.output_tokens_details.reasoning_tokens == 16
    assert one_row().output_tokens == 6 + 16  # reasoning tokens are output tokens, billed as such

    completion = sdk.chat.completions.create(model=responses_model, messages=MESSAGES, reasoning_effort="high")
    assert completion.usage.completion_tokens_details.reasoning_tokens == 16
    assert completion.usage.completion_tokens == 22


def test_a_chat_request_reaches_a_responses_model(sdk, responses_model, simulated_upstream):
    completion = sdk.chat.completions.create(model=responses_model, messages=MESSAGES)

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == f"Simulated reply from {responses_model}: hello hub"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 6)
    row = one_row("v1.chat_completions")
    assert (row.answered_model, row.input_tokens, row.output_tokens) == (responses_model, 2, 6)


def test_a_chat_stream_reaches_a_responses_model_with_usage(sdk, responses_model):
    chunks = list(sdk.chat.completions.create(model=responses_model, messages=MESSAGES, stream=True,
                                              stream_options={"include_usage": True}))

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        f"Simulated reply from {responses_model}: hello hub"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 6
    row = one_row("v1.chat_completions", streamed=True)
    assert (row.input_tokens, row.output_tokens) == (2, 6)


def test_chat_tool_calls_and_json_mode_reach_a_responses_model(sdk, responses_model):
    completion = sdk.chat.completions.create(model=responses_model, messages=MESSAGES, tools=[CHAT_WEATHER_TOOL])
    [call] = completion.choices[0].message.tool_calls
    assert (call.function.name, completion.choices[0].finish_reason) == ("get_weather", "tool_calls")

    chunks = list(sdk.chat.completions.create(model=responses_model, messages=MESSAGES, tools=[CHAT_WEATHER_TOOL],
                                              stream=True))
    streamed = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert streamed[0].function.name == "get_weather" and streamed[0].id

    answer = sdk.chat.completions.create(model=responses_model, messages=MESSAGES,
                                         response_format={"type": "json_object"})
    assert answer.choices[0].message.content.startswith('{"reply":')
    assert len(usage_rows(3)) == 3


def test_a_chat_request_falls_back_from_a_chat_model_to_a_responses_model(sdk, responses_model, simulated_upstream):
    simulated_upstream.set_fault("demo", "status=500")

    completion = sdk.chat.completions.create(model="demo", messages=MESSAGES)

    assert completion.choices[0].message.content == f"Simulated reply from {responses_model}: hello hub"
    [row] = usage_rows(1)
    assert (row.answered_model, row.attempts, row.status) == (responses_model, 2, "ok")


def test_a_responses_request_falls_back_from_a_responses_model_to_a_chat_model(sdk, responses_model,
                                                                               simulated_upstream):
    from registry.models import LLMModel
    from registry.selectors import registry_snapshot

    LLMModel.objects.filter(public_id="demo").update(api="responses")
    LLMModel.objects.filter(public_id="demo-backup").update(api="chat")
    registry_snapshot.invalidate()
    simulated_upstream.set_fault("demo", "status=503")

    response = sdk.responses.create(model="demo", input="hello hub")

    assert response.output_text == "Simulated reply from demo-backup: hello hub"
    assert usage_rows(1)[0].answered_model == "demo-backup"


def test_state_passes_through_to_a_responses_model(sdk, responses_model):
    response = sdk.responses.create(model=responses_model, input="and then?", previous_response_id="resp_earlier",
                                    store=True)
    assert response.previous_response_id == "resp_earlier"


@pytest.mark.parametrize(("fields", "param"), [
    ({"previous_response_id": "resp_earlier"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
])
def test_state_and_built_in_tools_are_a_400_naming_the_field_when_bridged(sdk, simulated_upstream, fields, param):
    with pytest.raises(openai.BadRequestError) as error:
        sdk.responses.create(model="demo", input="hello hub", **fields)
    assert error.value.body["param"] == param and error.value.body["code"] == "unsupported_parameter"
    assert param.split("[")[0] in error.value.message
    assert sum(simulated_upstream.stats().values()) == 0
    assert usage_rows(0, timeout=0.1) == []


def test_a_chat_field_the_responses_api_lacks_is_a_400_naming_it(sdk, responses_model, simulated_upstream):
    with pytest.raises(openai.BadRequestError) as error:
        sdk.chat.completions.create(model=responses_model, messages=MESSAGES, stop=["\n"])
    assert error.value.body["param"] == "stop"
    assert sum(simulated_upstream.stats().values()) == 0


def test_a_request_a_fallback_cannot_take_skips_that_fallback(sdk, responses_model, simulated_upstream):
    # demo (chat) falls back to demo-backup (responses), which cannot take `stop`: demo's failure is the answer.
    simulated_upstream.set_fault("demo", "status=500")
    with pytest.raises(openai.APIStatusError) as error:
        sdk.chat.completions.create(model="demo", messages=MESSAGES, stop=["\n"])
    assert error.value.status_code == 502
    assert simulated_upstream.stats() == {"demo": 1}


@pytest.mark.parametrize("body", [
    {"model": "demo"},
    {"model": "demo", "input": 5},
    {"model": "demo", "input": []},
    {"model": "demo", "input": ["hello"]},
    {"model": "demo", "input": "hi", "max_output_tokens": 0},
    {"model": "demo", "input": "hi", "stream": "yes"},
    {"model": "demo", "input": "hi", "text": "json"},
    {"model": "demo", "input": "hi", "base_url": "http://evil.example/v1"},
])
def test_it_refuses_a_malformed_request_with_a_400(live_hub, free_user, api_key_for, body, simulated_upstream):
    response = httpx2.post(f"{live_hub}/v1/responses", json=body,
                           headers={"Authorization": f"Bearer {api_key_for(free_user)}"})
    assert response.status_code == 400
    assert response.json()["error"]["param"]
    assert sum(simulated_upstream.stats().values()) == 0


def test_a_stream_cut_by_a_responses_upstream_ends_with_an_error_event_and_is_billed(sdk, responses_model,
                                                                                       simulated_upstream):
    simulated_upstream.set_fault(responses_model, "drop=2")
    events = list(sdk.responses.create(model=responses_model, input="hello hub", stream=True))
    assert events[-1].type == "error"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Simulated reply "
    [row] = usage_rows(1)
    assert (row.status, row.streamed) == ("partial", True)
    assert row.output_tokens == tokens_count_text("Simulated reply ")  # counted locally: what reached the client

    chunks = []
    with pytest.raises(openai.APIError):
        for chunk in sdk.chat.completions.create(model=responses_model, messages=MESSAGES, stream=True):
            chunks.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Simulated reply "


def test_generate_api_reaches_a_responses_model(live_hub, free_user, api_key_for, responses_model):
    response = httpx2.post(f"{live_hub}/api/generate/", json={"model": responses_model, "prompt": "hello hub"},
                           headers={"Authorization": f"Bearer {api_key_for(free_user)}"})
    assert response.status_code == 200, response.text
    assert response.json()["text"] == f"Simulated reply from {responses_model}: hello hub"
    one_row("api.generate")


def test_a_responses_model_above_the_tier_is_refused_before_any_upstream_call(sdk, simulated_upstream):
    with pytest.raises(openai.PermissionDeniedError):
        sdk.responses.create(model="demo-premium", input="hello hub")
    assert sum(simulated_upstream.stats().values()) == 0


def test_a_translation_reaches_a_responses_model(live_hub, free_user, api_key_for, responses_model):
    response = httpx2.post(f"{live_hub}/api/translate/", json={"model": responses_model, "text": "hello hub",
                                                               "target_language": "fr"},
                           headers={"Authorization": f"Bearer {api_key_for(free_user)}"})
    assert response.status_code == 200, response.text
    assert response.json()["text"].startswith(f"Simulated reply from {responses_model}")
    assert response.json()["answered_by"] == [responses_model]
    one_row("api.translate")


def test_a_nonsensical_usage_from_a_responses_upstream_is_counted_locally(sdk, responses_model, simulated_upstream):
    simulated_upstream.set_fault(responses_model, "usage=negative")

    response = sdk.responses.create(model=responses_model, input="hello hub")

    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0  # the hub's count, passed on
    [row] = usage_rows(1)
    assert row.tokens_estimated and row.input_tokens == response.usage.input_tokens
    completion = sdk.chat.completions.create(model=responses_model, messages=MESSAGES)
    assert completion.usage.prompt_tokens > 0


def test_content_that_is_not_text_from_a_responses_upstream_is_refused(sdk, responses_model, simulated_upstream):
    simulated_upstream.set_fault(responses_model, "content=number")

    with pytest.raises(openai.APIStatusError) as error:
        sdk.responses.create(model=responses_model, input="hello hub")
    assert error.value.status_code == 502
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model=responses_model, messages=MESSAGES, stream=True))
    assert [row.error_type for row in usage_rows(2)] == ["upstream_failed", "bad_response"]


@both
def test_a_cut_answer_is_incomplete_in_responses_and_length_in_chat(sdk, any_model, responses_model):
    response = sdk.responses.create(model=any_model, input="hello hub", max_output_tokens=2)
    assert (response.status, response.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert response.output_text == "Simulated reply"
    events = list(sdk.responses.create(model=any_model, input="hello hub", max_output_tokens=2, stream=True))
    assert events[-1].type == "response.incomplete"

    completion = sdk.chat.completions.create(model=responses_model, messages=MESSAGES, max_tokens=2)
    assert completion.choices[0].finish_reason == "length"
    chunks = list(sdk.chat.completions.create(model=responses_model, messages=MESSAGES, max_tokens=2, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


@both
def test_quotas_count_responses_requests_as_chat_ones(live_hub, free_user, api_key_for, any_model, simulated_upstream):
    import asyncio
    from decimal import Decimal

    from registry.models import QuotaLimit, Tier
    from usage.quotas import quota_status

    free = Tier.objects.get(slug="free")
    QuotaLimit.objects.create(tier=free, metric="requests", period="day", limit=Decimal(5))
    QuotaLimit.objects.create(tier=free, metric="tokens", period="day", limit=Decimal(2000))
    key = api_key_for(free_user)

    async def burst(payload: dict) -> list[httpx2.Response]:
        async with httpx2.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(f"{live_hub}/v1/responses", json=payload, headers={
                "Authorization": f"Bearer {key}"}) for _ in range(12)))

    # The reservation counts max_output_tokens: one that cannot fit is refused before any upstream call.
    too_big = httpx2.post(f"{live_hub}/v1/responses", json={"model": any_model, "input": "hi", "max_output_tokens": 5000},
                          headers={"Authorization": f"Bearer {key}"})
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (429, "tokens_per_day")
    responses = asyncio.run(burst({"model": any_model, "input": "hello hub", "max_output_tokens": 50}))

    assert sorted(response.status_code for response in responses) == [200] * 5 + [429] * 7
    rows = usage_rows(5)
    assert len(rows) == 5 and sum(simulated_upstream.stats().values()) == 5
    used = {row["metric"]: row for row in asyncio.run(quota_status(user_id=free_user.pk, api_key_id=None,
                                                                   tier_slug="free"))}
    assert used["tokens"]["used"] == sum(row.input_tokens + row.output_tokens for row in rows)
    assert used["tokens"]["held"] == 0


@both
def test_a_client_that_goes_away_mid_stream_is_settled_at_once(live_hub, free_user, api_key_for, any_model,
                                                              simulated_upstream):
    import time

    simulated_upstream.set_fault(any_model, "chunk_delay=800")  # a whole stream would take about 10 s

    with httpx2.Client(timeout=10) as client, client.stream(
            "POST", f"{live_hub}/v1/responses", headers={"Authorization": f"Bearer {api_key_for(free_user)}"},
            json={"model": any_model, "input": "hello hub", "stream": True}) as response:
        assert response.status_code == 200
        next(response.iter_raw())
    left = time.monotonic()

    [row] = usage_rows(1, timeout=2)
    assert time.monotonic() - left < 2  # settled at once, not when the upstream would have finished
    assert (row.status, row.error_type, row.streamed, row.endpoint) == (
        "partial", "client_disconnected", True, "v1.responses")
