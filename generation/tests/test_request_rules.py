"""The pure pieces behind /v1's request handling: upstream error details (scrubbed), per-model adaptation, the
strict validation of known fields, and the legacy completion bridge. No server needed."""

import dataclasses

import orjson
import pytest

from generation.adaptation import params_dropped, params_refused, request_adapt
from generation.client import upstream_error_details
from generation.legacy_completions import chat_answer_to_completion, completion_request_to_chat
from generation.openai_validation import InvalidField, chat_fields_validate
from registry.params import NO_PARAMS, request_params_parse
from registry.selectors import ModelSpec


def error_body(message, **fields) -> bytes:
    return orjson.dumps({"error": {"message": message, **fields}})


def test_it_passes_an_upstream_reason_param_and_code_on():
    message, param, code = upstream_error_details(
        error_body("Each tool needs `function.name`.", param="tools", code="invalid_value"))
    assert message == "The upstream rejected the request: Each tool needs `function.name`."
    assert (param, code) == ("tools", "invalid_value")


@pytest.mark.parametrize("leak", [
    "sk-proj-abcdefghijklmnopqrstuvwx", "Bearer abc.def.ghi", "https://user:pa55@internal.example/v1",
    "https://api.example/v1?api_key=secret123", "0123456789abcdef0123456789abcdef0123",
])
def test_it_scrubs_keys_and_credentialed_urls_from_an_upstream_message(leak):
    message, _, _ = upstream_error_details(error_body(f"Rejected {leak} here"))
    assert "[redacted]" in message
    for secret in ("abcdefghijklmnop", "abc.def", "pa55", "secret123", "0123456789abcdef"):
        assert secret not in message


def test_it_scrubs_the_models_own_key_and_caps_the_length():
    message, _, _ = upstream_error_details(error_body("bad key tiny-key-9 " + "x " * 1000), secrets=("tiny-key-9",))
    assert "tiny-key-9" not in message and len(message) <= 540


def test_it_falls_back_to_a_generic_message_for_a_body_that_is_not_openais():
    assert upstream_error_details(b"<html>oops</html>") == ("The upstream rejected the request.", None, None)
    assert upstream_error_details(error_body("x", code="has spaces; drop table"))[2] is None


def spec(**request_params) -> ModelSpec:
    return ModelSpec(id="m", pk=1, display_name="M", upstream_model="m", provider="p", provider_name="P",
                     base_url="http://x", api_key="", timeout=1, connect_timeout=1, headers={}, allowed_tiers=(),
                     required_tier=None, enabled=True, capabilities=frozenset(), context_window=100,
                     input_price_per_million=0, output_price_per_million=0, fallbacks=(),
                     request_params=request_params_parse(request_params))


def test_it_adapts_a_body_as_the_model_declares_and_leaves_other_models_alone():
    model = spec(unsupported=["temperature"], renamed={"max_tokens": "max_completion_tokens"})
    body = {"messages": [], "temperature": 1, "max_tokens": 5, "seed": 2}

    assert request_adapt(model, body) == {"messages": [], "max_completion_tokens": 5, "seed": 2}
    assert params_dropped(model, body) == ["temperature"] and params_refused(model, body) is None
    assert body["temperature"] == 1  # the client's body is not changed
    plain = dataclasses.replace(model, request_params=NO_PARAMS)
    assert request_adapt(plain, body) is body


def test_a_value_under_the_models_own_name_wins_over_a_renamed_one():
    model = spec(renamed={"max_tokens": "max_completion_tokens"})
    assert request_adapt(model, {"max_tokens": 5, "max_completion_tokens": 9}) == {"max_completion_tokens": 9}


def test_a_refusing_model_names_the_parameter():
    assert params_refused(spec(unsupported=["top_p", "n"], on_unsupported="refuse"), {"n": 2}) == "n"


OPENAI_VALID_BODY = {
    "temperature": 0, "top_p": 1.0, "n": 2, "stop": ["a", "b", "c", "d"], "seed": -5, "logprobs": True,
    "top_logprobs": 20, "presence_penalty": -2, "frequency_penalty": 2.0, "logit_bias": {"50256": -100},
    "response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": {"type": "object"},
                                                              "strict": True}},
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
              {"type": "custom", "custom": {"name": "grammar_tool"}}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False,
    "user": "u1", "metadata": {"a": "b"}, "store": False, "modalities": ["text"], "reasoning_effort": "low",
    "stream_options": {"include_usage": True}, "some_future_field": [1, {"x": None}],
}


def test_it_accepts_every_valid_openai_shape_and_unknown_fields():
    body = dict(OPENAI_VALID_BODY)
    chat_fields_validate(body)
    assert body == OPENAI_VALID_BODY


def test_it_takes_stream_null_as_false():
    body = {"stream": None}
    chat_fields_validate(body)
    assert body == {"stream": False}


def test_it_names_the_nested_field_at_fault():
    with pytest.raises(InvalidField) as error:
        chat_fields_validate({"tools": [{"type": "function", "function": {"name": "ok"}},
                                        {"type": "function", "function": {"name": "bad name!"}}]})
    assert error.value.extra["param"] == "tools[1].function.name"


def test_it_bridges_a_legacy_prompt_to_one_user_message_and_the_answer_back():
    chat = completion_request_to_chat({"model": "demo", "prompt": ["Say hi"], "max_tokens": 5, "echo": False})
    assert chat == {"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": "Say hi"}]}

    answer = orjson.loads(chat_answer_to_completion({
        "id": "chatcmpl-1", "created": 7, "model": "demo", "usage": {"prompt_tokens": 1},
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}))
    assert answer == {"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "demo",
                      "choices": [{"text": "hi", "index": 0, "logprobs": None, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 1}}
