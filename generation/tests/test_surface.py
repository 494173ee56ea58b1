"""The rest of the OpenAI surface (issue 9): embeddings, legacy completions, per-model request adaptation, strict
validation, upstream errors a client can act on, context windows, and what slow or confused clients get. Over
real HTTP against the simulated upstream, with the official openai SDK where a client would use it."""

import socket
import time

import httpx2
import openai
import pytest

from conftest import usage_rows
from registry.models import LLMModel

MESSAGES = [{"role": "user", "content": "hello hub"}]


def model_update(public_id: str, **fields) -> None:
    model = LLMModel.objects.get(public_id=public_id)
    for name, value in fields.items():
        setattr(model, name, value)
    model.save()  # its signal invalidates the registry snapshot


@pytest.fixture
def key(free_user, api_key_for) -> str:
    return api_key_for(free_user)


def post(live_hub: str, key: str, path: str, body: dict, headers: dict | None = None) -> httpx2.Response:
    return httpx2.post(f"{live_hub}{path}", json=body, headers={"Authorization": f"Bearer {key}", **(headers or {})},
                       timeout=10)


# --- Embeddings ----------------------------------------------------------------------------------------------

def test_it_serves_embeddings_through_the_sdk_with_one_usage_row_with_tokens_and_cost(sdk, simulated_upstream):
    answer = sdk.embeddings.create(model="demo-embed", input=["hello hub", "second text"])  # base64 by default
    floats = sdk.embeddings.create(model="demo-embed", input="hello hub", encoding_format="float")

    assert [len(item.embedding) for item in answer.data] == [16, 16]
    assert floats.data[0].embedding == pytest.approx(answer.data[0].embedding)
    assert answer.usage.prompt_tokens == 4
    first, second = usage_rows(2)
    assert (first.endpoint, first.answered_model, first.status, first.input_tokens, first.output_tokens) == (
        "v1.embeddings", "demo-embed", "ok", 4, 0)
    assert first.cost > 0 and second.input_tokens == 2


def test_it_falls_back_to_an_embedding_model_of_the_same_kind(sdk, simulated_upstream):
    backup = LLMModel.objects.get(public_id="demo-embed")
    backup.pk, backup.public_id, backup.upstream_model = None, "demo-embed-backup", "demo-backup"
    backup.save()
    primary = LLMModel.objects.get(public_id="demo-embed")
    backup.allowed_tiers.set(primary.allowed_tiers.all())
    primary.fallback_links.create(fallback=backup, position=0)
    model_update("demo-embed")
    simulated_upstream.set_fault("demo-embed", "status=503")

    answer = sdk.embeddings.with_raw_response.create(model="demo-embed", input="hello")

    assert answer.headers["x-llmhub-model"] == "demo-embed-backup"
    assert answer.headers["x-llmhub-attempts"] == "2"
    [row] = usage_rows(1)
    assert (row.answered_model, row.attempts, row.status) == ("demo-embed-backup", 2, "ok")


def test_it_refuses_a_model_of_the_wrong_kind_on_each_endpoint_before_any_upstream_call(sdk, simulated_upstream):
    with pytest.raises(openai.BadRequestError) as embedding_on_chat:
        sdk.chat.completions.create(model="demo-embed", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as chat_on_embeddings:
        sdk.embeddings.create(model="demo", input="hello")

    assert embedding_on_chat.value.body["param"] == "model" and "/v1/embeddings" in embedding_on_chat.value.message
    assert chat_on_embeddings.value.code == "model_not_supported"
    assert sum(simulated_upstream.stats().values()) == 0


def test_a_chat_without_a_model_skips_an_embedding_model_among_the_users_defaults(sdk, free_user):
    from registry.services import preferences_update

    preferences_update(user=free_user, data={"default_model": "demo-embed"})

    answer = sdk.chat.completions.with_raw_response.create(messages=MESSAGES, model=None)
    assert answer.headers["x-llmhub-model"] == "demo"


def test_it_tells_each_models_kind(sdk):
    kinds = {model.id: model.kind for model in sdk.models.list()}
    assert kinds["demo-embed"] == "embedding" and kinds["demo"] == "chat"


# --- Legacy completions --------------------------------------------------------------------------------------

def test_it_bridges_legacy_completions_to_chat_plain_and_streaming(sdk):
    completion = sdk.completions.create(model="demo", prompt="hello hub", max_tokens=50)
    chunks = list(sdk.completions.create(model="demo", prompt="hello hub", stream=True,
                                         stream_options={"include_usage": True}))

    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Simulated reply from demo: hello hub"
    assert completion.choices[0].finish_reason == "stop" and completion.usage.completion_tokens == 6
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == completion.choices[0].text
    assert chunks[-1].usage.total_tokens == 8
    plain, streamed = usage_rows(2)
    assert (plain.endpoint, plain.status, plain.input_tokens, plain.output_tokens) == ("v1.completions", "ok", 2, 6)
    assert plain.cost > 0 and streamed.streamed and streamed.output_tokens == 6


def test_it_refuses_what_a_chat_model_cannot_do_on_legacy_completions(sdk, simulated_upstream):
    # One test walks the cases: each live-server test costs a database flush and a registry load.
    for options, param in [({"echo": True}, "echo"), ({"suffix": "end"}, "suffix"), ({"best_of": 3}, "best_of"),
                           ({"logprobs": 2}, "logprobs"), ({"prompt": ["one", "two"]}, "prompt"),
                           ({"prompt": [1, 2, 3]}, "prompt")]:
        with pytest.raises(openai.BadRequestError) as error:
            sdk.completions.create(model="demo", **{"prompt": "hello", **options})
        assert error.value.body["param"] == param, options
    assert sum(simulated_upstream.stats().values()) == 0


# --- Per-model request adaptation -----------------------------------------------------------------------------

def test_it_renames_and_drops_parameters_as_the_model_declares(live_hub, key, simulated_upstream):
    model_update("demo", request_params={"unsupported": ["temperature", "top_p"],
                                         "renamed": {"max_tokens": "max_completion_tokens"}})

    response = post(live_hub, key, "/v1/chat/completions", {"model": "demo", "messages": MESSAGES,
                                                            "temperature": 0.5, "max_tokens": 40, "seed": 3})

    assert response.status_code == 200
    assert response.headers["x-llmhub-dropped-params"] == "temperature"
    sent = simulated_upstream.last_request("demo")
    assert "temperature" not in sent and "max_tokens" not in sent
    assert (sent["max_completion_tokens"], sent["seed"]) == (40, 3)


def test_it_refuses_a_parameter_with_400_when_the_model_says_so(live_hub, key, simulated_upstream):
    model_update("demo", request_params={"unsupported": ["temperature"], "on_unsupported": "refuse"})

    response = post(live_hub, key, "/v1/chat/completions", {"model": "demo", "messages": MESSAGES,
                                                            "temperature": 0.5})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "temperature"
    assert response.json()["error"]["code"] == "unsupported_parameter"
    assert sum(simulated_upstream.stats().values()) == 0
    assert post(live_hub, key, "/v1/chat/completions", {"model": "demo", "messages": MESSAGES}).status_code == 200


def test_it_skips_a_fallback_that_refuses_a_parameter(live_hub, key, simulated_upstream):
    model_update("demo-backup", request_params={"unsupported": ["seed"], "on_unsupported": "refuse"})
    simulated_upstream.set_fault("demo", "status=500")

    response = post(live_hub, key, "/v1/chat/completions", {"model": "demo", "messages": MESSAGES, "seed": 1})

    assert response.status_code == 502
    outcomes = [(a["model"], a["outcome"]) for a in response.json()["error"]["attempts"]]
    assert outcomes == [("demo-backup", "unsupported_parameter"), ("demo", "unavailable")]
    assert simulated_upstream.stats() == {"demo": 1}


# --- Strict validation ------------------------------------------------------------------------------------------

INVALID_FIELDS = [
    ("temperature", "hot", "temperature"), ("temperature", 2.5, "temperature"), ("top_p", [1], "top_p"),
    ("top_p", 1.5, "top_p"), ("n", 0, "n"), ("n", 10_000, "n"), ("stop", 5, "stop"), ("stop", ["a"] * 5, "stop"),
    ("seed", 1.5, "seed"), ("logprobs", "yes", "logprobs"), ("top_logprobs", 21, "top_logprobs"),
    ("response_format", "json", "response_format"), ("response_format", {"type": "yaml"}, "response_format.type"),
    ("response_format", {"type": "json_schema"}, "response_format.json_schema"),
    ("tools", [{"type": "function", "function": {}}], "tools[0].function.name"),
    ("tools", {"name": "f"}, "tools"), ("tool_choice", "sometimes", "tool_choice"),
    ("tool_choice", {"type": "function"}, "tool_choice.function"), ("presence_penalty", -3, "presence_penalty"),
    ("logit_bias", {"50256": 200}, "logit_bias.50256"), ("stream_options", {"include_usage": "yes"},
                                                         "stream_options.include_usage"),
    ("messages", [{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
     "messages[0].content[0].image_url"),
    ("messages", [{"role": "tool", "content": "42"}], "messages[0].tool_call_id"),
]


def test_it_refuses_a_known_field_of_the_wrong_type_or_range_before_any_upstream_call(live_hub, key,
                                                                                      simulated_upstream):
    for field, value, param in INVALID_FIELDS:
        response = post(live_hub, key, "/v1/chat/completions", {"model": "demo", "messages": MESSAGES, field: value})

        assert response.status_code == 400, (field, value, response.text)
        error = response.json()["error"]
        assert (error["param"], error["type"]) == (param, "invalid_request_error"), (field, value)
        assert response.headers["x-request-id"].startswith("req_")
    assert sum(simulated_upstream.stats().values()) == 0


def test_it_takes_stream_null_as_false_and_passes_unknown_fields_through(live_hub, key, simulated_upstream):
    response = post(live_hub, key, "/v1/chat/completions", {"model": "demo", "messages": MESSAGES, "stream": None,
                                                            "temperature": None, "future_knob": {"a": 1}})

    assert response.status_code == 200 and response.json()["object"] == "chat.completion"
    assert simulated_upstream.last_request("demo")["future_knob"] == {"a": 1}


# --- Upstream errors ------------------------------------------------------------------------------------------

def test_it_passes_the_upstreams_400_reason_on_and_never_retries_it(sdk, simulated_upstream):
    simulated_upstream.set_fault("demo", "notools")

    with pytest.raises(openai.BadRequestError) as error:
        sdk.chat.completions.create(model="demo", messages=MESSAGES,
                                    tools=[{"type": "function", "function": {"name": "lookup"}}])

    assert error.value.body["message"] == "The upstream rejected the request: The model `demo` does not support tools."
    assert (error.value.body["param"], error.value.code) == ("tools", "unsupported_parameter")
    assert simulated_upstream.stats() == {"demo": 1}


def test_it_passes_an_upstream_422_on_as_422(sdk, simulated_upstream):
    simulated_upstream.set_fault("demo", "status=422")

    with pytest.raises(openai.UnprocessableEntityError) as error:
        sdk.chat.completions.create(model="demo", messages=MESSAGES)

    assert error.value.body["message"] == "The upstream rejected the request: Simulated upstream error."
    assert simulated_upstream.stats() == {"demo": 1}


def test_it_names_every_model_tried_when_every_model_failed(live_hub, key, simulated_upstream):
    simulated_upstream.set_fault("demo", "status=500")
    simulated_upstream.set_fault("demo-backup", "status=503")

    response = post(live_hub, key, "/v1/chat/completions", {"model": "demo", "messages": MESSAGES})

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["message"] == ("Every model failed: demo (unavailable, HTTP 500), demo-backup (unavailable, "
                                "HTTP 503).")
    assert [attempt["model"] for attempt in error["attempts"]] == ["demo", "demo-backup"]
    [row] = usage_rows(1)
    assert response.headers["x-request-id"] == row.request_id


# --- Context windows ------------------------------------------------------------------------------------------

def test_it_skips_a_model_whose_window_is_too_small_for_a_fallback_with_a_larger_one(live_hub, key,
                                                                                     simulated_upstream):
    model_update("demo-backup", context_window=100_000)
    prompt = "word " * 10_000  # about 12,500 tokens: over demo's 8,192

    response = post(live_hub, key, "/v1/chat/completions",
                    {"model": "demo", "messages": [{"role": "user", "content": prompt}]})

    assert response.status_code == 200
    assert response.headers["x-llmhub-model"] == "demo-backup"
    assert simulated_upstream.stats() == {"demo-backup": 1}
    [row] = usage_rows(1)
    assert row.attempts == 2


def test_it_answers_context_length_exceeded_when_no_model_fits(live_hub, key, simulated_upstream):
    response = post(live_hub, key, "/v1/chat/completions",
                    {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9000})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert sum(simulated_upstream.stats().values()) == 0


# --- Slow and confused clients ----------------------------------------------------------------------------------

def test_it_answers_408_to_a_body_that_never_completes(live_hub, key, settings):
    settings.LLMHUB = {**settings.LLMHUB, "BODY_TIMEOUT_SECONDS": 0.5}
    host, port = live_hub.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"model\":")
        started = time.monotonic()
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer and b"x-request-id: req_" in answer
    assert time.monotonic() - started < 3


def test_it_answers_head_like_get_without_a_body(live_hub, key):
    head = httpx2.head(f"{live_hub}/v1/models", headers={"Authorization": f"Bearer {key}"})
    get = httpx2.get(f"{live_hub}/v1/models", headers={"Authorization": f"Bearer {key}"})

    assert head.status_code == get.status_code == 200
    assert head.content == b"" and head.headers["content-length"] == get.headers["content-length"]


def test_it_allows_browser_clients_from_the_configured_origins(live_hub, key, settings):
    settings.LLMHUB = {**settings.LLMHUB, "CORS_ORIGINS": ["https://app.example"]}
    preflight = httpx2.options(f"{live_hub}/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})
    allowed = post(live_hub, key, "/v1/chat/completions", {"model": "demo", "messages": MESSAGES},
                   headers={"Origin": "https://app.example"})
    other = httpx2.get(f"{live_hub}/v1/models", headers={"Authorization": f"Bearer {key}", "Origin": "https://evil.example"})

    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-stainless-os" in preflight.headers["access-control-allow-headers"]
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in allowed.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in other.headers


def test_it_sends_no_cors_headers_when_no_origin_is_configured(live_hub, key):
    response = httpx2.get(f"{live_hub}/v1/models", headers={"Authorization": f"Bearer {key}", "Origin": "https://x.example"})
    assert "access-control-allow-origin" not in response.headers


def test_the_sdk_pointed_at_the_site_root_gets_a_json_404_naming_the_base_url(live_hub, key):
    client = openai.OpenAI(base_url=live_hub, api_key=key, max_retries=0, timeout=10)

    with pytest.raises(openai.NotFoundError) as listing:
        client.models.list()
    with pytest.raises(openai.NotFoundError) as chatting:
        client.chat.completions.create(model="demo", messages=MESSAGES)

    assert f"{live_hub}/v1" in listing.value.message and f"{live_hub}/v1" in chatting.value.message


def test_a_browser_asking_for_models_still_gets_the_page(live_hub):
    response = httpx2.get(f"{live_hub}/models", headers={"Accept": "text/html"})
    assert response.status_code in (301, 302) and response.headers["location"].startswith("/models/")


# --- The bad inputs listed at the top of issue 9, walked in one test ------------------------------------------

def _short_body(live_hub: str, key: str) -> tuple[int, dict[str, str], bytes]:
    """A client that declares 100 body bytes and sends 10."""
    host, port = live_hub.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"model\":")
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_every_bad_input_of_the_issue_gets_an_openai_shaped_4xx_with_a_request_id(live_hub, key, simulated_upstream,
                                                                                 settings):
    settings.LLMHUB = {**settings.LLMHUB, "BODY_TIMEOUT_SECONDS": 0.5}
    auth = {"Authorization": f"Bearer {key}"}
    chat = f"{live_hub}/v1/chat/completions"

    def with_field(**fields):
        return lambda: httpx2.post(chat, json={"model": "demo", "messages": MESSAGES, **fields}, headers=auth)

    def upstream_400():
        simulated_upstream.set_fault("demo", "notools")
        return with_field(tools=[{"type": "function", "function": {"name": "lookup"}}])()

    cases = {
        "response_format 'json'": (with_field(response_format="json"), 400),
        "temperature 'hot'": (with_field(temperature="hot"), 400),
        "n 0": (with_field(n=0), 400),
        "stop 5": (with_field(stop=5), 400),
        "top_p [1]": (with_field(top_p=[1]), 400),
        "a tool without function.name": (with_field(tools=[{"type": "function", "function": {}}]), 400),
        "an upstream 400": (upstream_400, 400),
        "a 300,000-token prompt": (lambda: httpx2.post(chat, headers=auth, timeout=30, json={
            "model": "demo", "messages": [{"role": "user", "content": "word " * 300_000}]}), 400),
        "POST /chat/completions": (lambda: httpx2.post(f"{live_hub}/chat/completions", json={}, headers=auth), 404),
        "GET /models": (lambda: httpx2.get(f"{live_hub}/models", headers={**auth, "Accept": "application/json"}), 404),
        "GET /v1": (lambda: httpx2.get(f"{live_hub}/v1", headers=auth), 404),
        "GET /v1/": (lambda: httpx2.get(f"{live_hub}/v1/", headers=auth), 404),
        "no API key": (lambda: httpx2.post(chat, json={"model": "demo", "messages": MESSAGES}), 401),
        "a body that is not JSON": (lambda: httpx2.post(chat, content=b"{nope", headers=auth), 400),
    }
    for name, (request, expected) in cases.items():
        response = request()
        assert response.status_code == expected, (name, response.status_code, response.text)
        assert response.headers["content-type"] == "application/json", name
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["type"] == "invalid_request_error" and error["code"], name
        assert response.headers["x-request-id"].startswith("req_"), name

    status, headers, body = _short_body(live_hub, key)
    assert (status, headers["content-type"]) == (408, "application/json")
    assert headers["x-request-id"].startswith("req_") and b'"code":"request_timeout"' in body
    assert simulated_upstream.stats() == {"demo": 1}  # only the upstream 400 reached it
