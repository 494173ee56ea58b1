"""The simulated upstream's native Responses API (`POST /v1/responses`), driven by the real openai SDK.

No database needed: `pytest generation/tests/test_simulator_responses.py -p no:django --noconftest`.
"""

import json
import urllib.error
import urllib.request

import openai
import pytest

from llmhub.testing import SimulatedUpstream, simulated_upstream  # noqa: F401

TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


@pytest.fixture
def sdk(simulated_upstream: SimulatedUpstream) -> openai.OpenAI:  # noqa: F811
    simulated_upstream.reset()
    return openai.OpenAI(base_url=simulated_upstream.base_url, api_key="sk-test", max_retries=0)


def test_it_answers_a_response_with_usage_and_reasoning_tokens(sdk, simulated_upstream):  # noqa: F811
    response = sdk.responses.create(model="demo", input="Hello there", instructions="Be kind.",
                                    reasoning={"effort": "medium"}, previous_response_id="resp_1")

    assert response.output_text == "Simulated reply from demo: Hello there"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 6 + 8)
    assert response.usage.output_tokens_details.reasoning_tokens == 8
    assert response.previous_response_id == "resp_1"
    assert simulated_upstream.stats() == {"demo": 1}


def test_it_streams_the_events_the_sdk_assembles(sdk):
    with sdk.responses.stream(model="demo", input="Hello there") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Simulated reply from demo: Hello there"


def test_a_cut_answer_streams_as_incomplete(sdk):
    # As OpenAI's: `response.incomplete` ends the stream (the SDK's stream helper wants `response.completed`).
    events = list(sdk.responses.create(model="demo", input="Hello there", max_output_tokens=2, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    final = events[-1].response
    assert final.output_text == "Simulated reply" and final.incomplete_details.reason == "max_output_tokens"


def test_it_calls_a_tool_and_answers_json(sdk):
    call = sdk.responses.create(model="demo", input="weather?", tools=[TOOL]).output[0]
    assert (call.type, call.name, call.arguments) == ("function_call", "get_weather", "{}")
    answer = sdk.responses.create(model="demo", input="hi", text={"format": {"type": "json_object"}})
    assert json.loads(answer.output_text) == {"reply": "Simulated reply from demo: hi"}


@pytest.mark.parametrize("fault", ["status=500", "429=3", "notools"])
def test_it_applies_the_same_faults_as_chat(sdk, fault):
    with pytest.raises(openai.APIStatusError) as error:
        sdk.responses.create(model=f"demo@{fault}", input="hi", tools=[TOOL])
    assert error.value.status_code == {"status=500": 500, "429=3": 429, "notools": 400}[fault]


@pytest.mark.parametrize("body", [{"model": "demo"}, {"model": "demo", "input": 5}, {"model": "demo", "input": [5]},
                                  {"model": "demo", "input": "hi", "tools": "all"}, {"input": "hi"}])
def test_it_answers_a_malformed_request_with_openais_400(simulated_upstream, body):  # noqa: F811
    request = urllib.request.Request(f"{simulated_upstream.base_url}/responses", data=json.dumps(body).encode(),
                                     headers={"Authorization": "Bearer sk-test", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    assert error.value.code == 400
    assert json.loads(error.value.read())["error"]["type"] == "invalid_request_error"
