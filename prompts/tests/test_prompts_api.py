"""Prompt templates used by name over real HTTP (the openai SDK on /v1, httpx on /api) against the simulated
upstream: what the upstream receives, the headers, the usage row, and the 400/404s that name what is wrong."""

import json

import httpx2
import openai
import pytest

from conftest import usage_rows
from prompts.services import prompt_label_move, prompt_version_create

SUPPORT = {"system": "You support {{ product }} customers, in a {{ tone }} tone.", "user": "Question: {{ question }}",
           "variables": {"product": {"type": "str", "default": "llmhub"}, "question": {"type": "str"},
                         "tone": {"type": "enum", "values": ["warm", "dry"], "default": "warm"}},
           "params": {"temperature": 0.3, "max_tokens": 77}}


@pytest.fixture
def support(live_hub):
    prompt_version_create(name="support", label="production", **SUPPORT)
    prompt_version_create(name="support", label="candidate", **{**SUPPORT, "system": "v2: {{ product }}"})


@pytest.fixture
def sdk(live_hub, api_key_for, free_user) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(free_user), max_retries=0)


@pytest.fixture
def api(live_hub, api_key_for, free_user):
    key = api_key_for(free_user)

    def post(path: str, payload: dict, headers: dict | None = None) -> httpx2.Response:
        return httpx2.post(f"{live_hub}{path}", json=payload, timeout=20,
                           headers={"Authorization": f"Bearer {key}", **(headers or {})})

    return post


def sent(simulated_upstream, model: str = "demo") -> dict:
    return simulated_upstream.last_request(model)


def test_it_serves_a_template_on_chat_completions(sdk, support, simulated_upstream):
    simulated_upstream.reset()
    raw = sdk.chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "earlier turn"}],
        metadata={"prompt": "support", "variables": json.dumps({"question": "why?"}), "team": "a"})

    assert raw.headers["x-llmhub-prompt"] == "support@1"
    body = sent(simulated_upstream)
    assert body["messages"] == [
        {"role": "system", "content": "You support llmhub customers, in a warm tone."},
        {"role": "user", "content": "earlier turn"},
        {"role": "user", "content": "Question: why?"}]
    assert body["temperature"] == 0.3 and body["max_tokens"] == 77  # the template's defaults
    assert body["metadata"] == {"team": "a"}  # the hub's keys never reach the upstream
    assert raw.parse().choices[0].message.content == "Simulated reply from demo: Question: why?"
    [row] = usage_rows(1)
    assert (row.prompt_template, row.prompt_version, row.endpoint) == ("support", 1, "v1.chat_completions")


def test_it_takes_a_label_or_a_version_and_the_clients_own_parameters(sdk, support, simulated_upstream):
    simulated_upstream.reset()
    variables = json.dumps({"question": "q", "tone": "dry"})
    raw = sdk.chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "x"}], temperature=1.5, max_tokens=5,
        metadata={"prompt": "support@candidate", "variables": variables})
    assert raw.headers["x-llmhub-prompt"] == "support@2"
    assert sent(simulated_upstream)["messages"][0]["content"] == "v2: llmhub"
    assert (sent(simulated_upstream)["temperature"], sent(simulated_upstream)["max_tokens"]) == (1.5, 5)

    raw = sdk.chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-llmhub-prompt": "support@1", "x-llmhub-prompt-variables": variables})
    assert raw.headers["x-llmhub-prompt"] == "support@1"
    assert sent(simulated_upstream)["messages"][0]["content"] == "You support llmhub customers, in a dry tone."


def test_it_streams_with_a_template(sdk, support, simulated_upstream):
    with sdk.chat.completions.with_streaming_response.create(
            model="demo", messages=[{"role": "user", "content": "x"}], stream=True,
            metadata={"prompt": "support", "variables": '{"question": "streamed?"}'}) as response:
        assert response.headers["x-llmhub-prompt"] == "support@1"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
    assert text == "Simulated reply from demo: Question: streamed?"
    [row] = usage_rows(1)
    assert (row.prompt_template, row.prompt_version, row.streamed) == ("support", 1, True)


def test_it_serves_a_template_on_the_responses_api(sdk, support, simulated_upstream):
    simulated_upstream.reset()
    raw = sdk.responses.with_raw_response.create(model="demo", input="hello", instructions="Be brief.",
                                                 metadata={"prompt": "support", "variables": '{"question": "r?"}'})

    assert raw.headers["x-llmhub-prompt"] == "support@1"
    assert raw.parse().output_text == "Simulated reply from demo: Question: r?"
    messages = sent(simulated_upstream)["messages"]  # a chat model: the Responses request bridged
    assert messages[0] == {"role": "system", "content": "You support llmhub customers, in a warm tone.\n\nBe brief."}
    assert [m["content"] for m in messages[1:]] == ["hello", "Question: r?"]
    [row] = usage_rows(1)
    assert (row.prompt_template, row.prompt_version, row.endpoint) == ("support", 1, "v1.responses")


def test_it_serves_a_template_on_api_generate(api, support, simulated_upstream):
    simulated_upstream.reset()
    response = api("/api/generate/", {"model": "demo", "metadata": {"prompt": "support@2",
                                                                    "variables": {"question": "g?"}}})

    assert response.status_code == 200, response.text
    assert response.headers["x-llmhub-prompt"] == "support@2"
    assert response.json()["text"] == "Simulated reply from demo: Question: g?"
    assert sent(simulated_upstream)["messages"][0] == {"role": "system", "content": "v2: llmhub"}
    assert sent(simulated_upstream)["max_tokens"] == 77

    response = api("/api/generate/", {"model": "demo", "prompt": "plain"},
                   headers={"x-llmhub-prompt": "support", "x-llmhub-prompt-variables": '{"question": "h?"}'})
    assert response.status_code == 200, response.text
    assert [m["content"] for m in sent(simulated_upstream)["messages"][1:]] == ["plain", "Question: h?"]


def test_it_translates_with_the_built_in_template_unchanged_and_with_another(api, live_hub, simulated_upstream):
    simulated_upstream.reset()
    response = api("/api/translate/", {"text": "Bonjour", "target_language": "en", "source_language": "fr",
                                       "model": "demo"})
    assert response.status_code == 200, response.text
    assert response.headers["x-llmhub-prompt"] == "translation@1"
    assert sent(simulated_upstream)["messages"] == [
        {"role": "system", "content": "Translate the user's text from French (fr) into English (en). Answer with the "
                                      "translation only, keeping paragraphs and formatting."},
        {"role": "user", "content": "Bonjour"}]

    prompt_version_create(name="legal-translation", system="Translate into {{ target_language }}, {{ register }}.",
                          variables={"target_language": {"type": "str"}, "register": {"type": "str"}})
    response = api("/api/translate/", {"text": "Bonjour", "target_language": "de", "model": "demo",
                                       "metadata": {"prompt": "legal-translation", "variables": {"register": "formal"}}})
    assert response.status_code == 200, response.text
    assert sent(simulated_upstream)["messages"] == [{"role": "system", "content": "Translate into German (de), formal."},
                                                    {"role": "user", "content": "Bonjour"}]
    rows = usage_rows(2)
    assert [(row.prompt_template, row.prompt_version) for row in rows] == [("translation", 1), ("legal-translation", 1)]


def test_it_refuses_a_missing_variable_naming_it_before_any_upstream_call(sdk, api, support, simulated_upstream):
    simulated_upstream.reset()
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}],
                                    metadata={"prompt": "support"})
    assert refused.value.code == "prompt_variable_missing"
    assert refused.value.param == "metadata.variables.question"
    assert "'question'" in refused.value.message

    response = api("/api/generate/", {"metadata": {"prompt": "support", "variables": {"question": 5}}})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "prompt_variable_invalid"
    assert "'question'" in response.json()["error"]["message"]

    response = api("/api/translate/", {"text": "x", "target_language": "fr",
                                       "metadata": {"prompt": "support", "variables": {}}})
    assert response.status_code == 400 and response.json()["error"]["code"] == "prompt_variable_missing"
    assert sum(simulated_upstream.stats().values()) == 0
    assert usage_rows(0, timeout=0.2) == []


@pytest.mark.parametrize(("name", "status", "code"), [
    ("nope", 404, "prompt_not_found"), ("support@staging", 404, "prompt_label_not_found"),
    ("support@9", 404, "prompt_version_not_found"), ("@1", 404, "prompt_not_found"),
])
def test_it_answers_an_unknown_template_label_or_version_with_a_clear_code(sdk, support, name, status, code):
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}],
                                    metadata={"prompt": name, "variables": '{"question": "q"}'})
    assert (refused.value.status_code, refused.value.code) == (status, code)


def test_it_refuses_variables_that_are_not_a_json_object(sdk, support):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}],
                                    metadata={"prompt": "support", "variables": "{not json"})
    assert (refused.value.code, refused.value.param) == ("prompt_invalid", "metadata.variables")


def test_it_trims_the_oldest_turns_to_fit_the_window_and_says_so(sdk, support, simulated_upstream):
    simulated_upstream.reset()
    turn = "word " * 1600  # 8,000 characters: about 2,000 tokens; the demo model's window is 8,192
    history = [{"role": "user" if index % 2 == 0 else "assistant", "content": f"turn {index} {turn}"}
               for index in range(5)]
    raw = sdk.chat.completions.with_raw_response.create(
        model="demo", messages=history, max_tokens=1000, metadata={"prompt": "support", "variables": '{"question": "q"}'})

    assert raw.headers["x-llmhub-trimmed-turns"] == "2"
    messages = sent(simulated_upstream)["messages"]
    assert messages[0]["role"] == "system"  # never trimmed
    assert [m["content"].split()[1] for m in messages[1:-1]] == ["2", "3", "4"]  # the oldest two went
    assert messages[-1]["content"] == "Question: q"

    raw = sdk.chat.completions.with_raw_response.create(
        model="demo", messages=history[:1], metadata={"prompt": "support", "variables": '{"question": "q"}'})
    assert "x-llmhub-trimmed-turns" not in raw.headers


def test_it_folds_the_system_part_for_a_model_that_takes_no_system_role(sdk, support, simulated_upstream):
    from registry.models import LLMModel

    model = LLMModel.objects.get(public_id="demo")
    model.request_params = {"no_system_role": True}
    model.save()
    simulated_upstream.reset()
    sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}],
                                metadata={"prompt": "support", "variables": '{"question": "q"}'})

    assert sent(simulated_upstream)["messages"] == [
        {"role": "user", "content": "You support llmhub customers, in a warm tone.\n\nhi"},
        {"role": "user", "content": "Question: q"}]


def test_a_promoted_template_is_served_from_the_very_next_request_on_in_every_process(
        sdk, support, two_app_processes, api_key_for, free_user):
    key = api_key_for(free_user)
    here, *others = [sdk, *(openai.OpenAI(base_url=f"{root}/v1", api_key=key, max_retries=0)
                            for root in two_app_processes)]

    def served(client: openai.OpenAI) -> str:
        return client.chat.completions.with_raw_response.create(
            model="demo", messages=[{"role": "user", "content": "x"}],
            metadata={"prompt": "support", "variables": '{"question": "q"}'}).headers["x-llmhub-prompt"]

    assert [served(client) for client in (here, *others)] == ["support@1"] * 3  # every snapshot is built

    prompt_label_move(name="support", label="production", version=2)
    # No wait, in this process or the others (which check versions only once a minute).
    assert [served(client) for client in (*reversed(others), here)] == ["support@2"] * 3

    prompt_version_create(name="support", label="production", **{**SUPPORT, "system": "v3: {{ product }}"})
    assert [served(client) for client in others] == ["support@3"] * 2


def test_it_sends_the_same_messages_for_the_same_input(sdk, support, simulated_upstream):
    def sent_for(variables: dict) -> list:
        simulated_upstream.reset()
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}],
                                    metadata={"prompt": "support", "variables": json.dumps(variables)})
        return sent(simulated_upstream)["messages"]

    first = sent_for({"question": "q {{ tone }}", "tone": "dry"})
    assert sent_for({"tone": "dry", "question": "q {{ tone }}"}) == first  # key order changes nothing
    assert first[-1]["content"] == "Question: q {{ tone }}"  # a value is never read as template text
