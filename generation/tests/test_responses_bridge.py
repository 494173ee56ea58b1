"""The translation between Chat Completions and Responses, table-driven over pairs of requests and answers."""

import orjson
import pytest

from generation import responses_bridge as bridge

WEATHER = {"name": "get_weather", "description": "The weather.", "parameters": {"type": "object", "properties": {}}}
SCHEMA = {"name": "reply", "strict": True, "schema": {"type": "object", "properties": {"reply": {"type": "string"}}}}

# (chat request, the Responses request it becomes)
CHAT_TO_RESPONSES = [
    pytest.param({"messages": [{"role": "user", "content": "hi"}]},
                 {"input": [{"type": "message", "role": "user", "content": "hi"}], "store": False}, id="plain"),
    pytest.param({"messages": [{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "No."},
                               {"role": "user", "content": "hi"}], "temperature": 0.2, "user": "u1"},
                 {"input": [{"type": "message", "role": "system", "content": "Be brief."},
                            {"type": "message", "role": "developer", "content": "No."},
                            {"type": "message", "role": "user", "content": "hi"}],
                  "store": False, "temperature": 0.2, "user": "u1"}, id="system-developer-and-pass-through"),
    pytest.param({"messages": [{"role": "user", "content": [
                     {"type": "text", "text": "what is this?"},
                     {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}}]}]},
                 {"input": [{"type": "message", "role": "user", "content": [
                     {"type": "input_text", "text": "what is this?"},
                     {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"}]}], "store": False},
                 id="content-parts"),
    pytest.param({"messages": [{"role": "user", "content": "weather?"},
                               {"role": "assistant", "content": None, "tool_calls": [
                                   {"id": "call_1", "type": "function",
                                    "function": {"name": "get_weather", "arguments": "{}"}}]},
                               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
                  "tools": [{"type": "function", "function": WEATHER}],
                  "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                  "parallel_tool_calls": False},
                 {"input": [{"type": "message", "role": "user", "content": "weather?"},
                            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
                  "tools": [{"type": "function", **WEATHER}], "tool_choice": {"type": "function", "name": "get_weather"},
                  "parallel_tool_calls": False, "store": False}, id="tools-and-tool-calls"),
    pytest.param({"messages": [{"role": "assistant", "content": "earlier answer"}]},
                 {"input": [{"type": "message", "role": "assistant", "content": [
                     {"type": "output_text", "text": "earlier answer", "annotations": []}]}], "store": False},
                 id="assistant-history"),
    pytest.param({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
                 {"input": [{"type": "message", "role": "user", "content": "hi"}], "store": False,
                  "text": {"format": {"type": "json_object"}}}, id="json-mode"),
    pytest.param({"messages": [{"role": "user", "content": "hi"}],
                  "response_format": {"type": "json_schema", "json_schema": SCHEMA}, "verbosity": "low"},
                 {"input": [{"type": "message", "role": "user", "content": "hi"}], "store": False,
                  "text": {"format": {"type": "json_schema", **SCHEMA}, "verbosity": "low"}}, id="structured-output"),
    pytest.param({"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "high",
                  "max_completion_tokens": 500, "n": 1, "logprobs": False, "presence_penalty": 0, "stop": None,
                  "stream": True, "stream_options": {"include_usage": True}},
                 {"input": [{"type": "message", "role": "user", "content": "hi"}], "store": False,
                  "reasoning": {"effort": "high"}, "max_output_tokens": 500, "stream": True},
                 id="reasoning-limits-and-neutral-defaults"),
    pytest.param({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 7},
                 {"input": [{"type": "message", "role": "user", "content": "hi"}], "store": False,
                  "max_output_tokens": 7}, id="max-tokens"),
]


@pytest.mark.parametrize(("chat", "responses"), CHAT_TO_RESPONSES)
def test_it_translates_a_chat_request_to_responses(chat, responses):
    assert bridge.chat_request_to_responses(chat) == responses


# (Responses request, the chat request it becomes)
RESPONSES_TO_CHAT = [
    pytest.param({"input": "hi"}, {"messages": [{"role": "user", "content": "hi"}]}, id="string-input"),
    pytest.param({"input": "hi", "instructions": "Be brief.", "temperature": 0.3, "store": False,
                  "include": ["reasoning.encrypted_content"], "truncation": "auto"},
                 {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                  "temperature": 0.3}, id="instructions-and-dropped-hints"),
    pytest.param({"input": [{"role": "developer", "content": "No."},
                            {"type": "message", "role": "user", "content": [
                                {"type": "input_text", "text": "what is this?"},
                                {"type": "input_image", "image_url": "https://x/cat.png"}]},
                            {"type": "reasoning", "id": "rs_1", "encrypted_content": "opaque"},
                            {"type": "message", "role": "assistant", "content": [
                                {"type": "output_text", "text": "A cat."}]}]},
                 {"messages": [{"role": "developer", "content": "No."},
                               {"role": "user", "content": [
                                   {"type": "text", "text": "what is this?"},
                                   {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "auto"}}]},
                               {"role": "assistant", "content": "A cat."}]}, id="items-parts-reasoning-dropped"),
    pytest.param({"input": [{"role": "user", "content": "weather?"},
                            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                            {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": "{}"},
                            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                            {"type": "function_call_output", "call_id": "call_2",
                             "output": [{"type": "input_text", "text": "rainy"}]}],
                  "tools": [{"type": "function", **WEATHER}], "tool_choice": {"type": "function", "name": "get_weather"}},
                 {"messages": [{"role": "user", "content": "weather?"},
                               {"role": "assistant", "content": None, "tool_calls": [
                                   {"id": "call_1", "type": "function",
                                    "function": {"name": "get_weather", "arguments": "{}"}},
                                   {"id": "call_2", "type": "function",
                                    "function": {"name": "get_weather", "arguments": "{}"}}]},
                               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                               {"role": "tool", "tool_call_id": "call_2", "content": "rainy"}],
                  "tools": [{"type": "function", "function": WEATHER}],
                  "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, id="tools-and-tool-calls"),
    pytest.param({"input": "hi", "text": {"format": {"type": "json_schema", **SCHEMA}, "verbosity": "high"},
                  "reasoning": {"effort": "low", "summary": "auto"}, "max_output_tokens": 300, "stream": True},
                 {"messages": [{"role": "user", "content": "hi"}],
                  "response_format": {"type": "json_schema", "json_schema": SCHEMA}, "verbosity": "high",
                  "reasoning_effort": "low", "max_tokens": 300, "stream": True}, id="structured-reasoning-limits"),
    pytest.param({"input": "hi", "text": {"format": {"type": "json_object"}}},
                 {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
                 id="json-mode"),
]


@pytest.mark.parametrize(("responses", "chat"), RESPONSES_TO_CHAT)
def test_it_translates_a_responses_request_to_chat(responses, chat):
    assert bridge.responses_request_to_chat(responses) == chat


# (request, the field named by the 400)
UNMAPPABLE = [
    pytest.param(bridge.chat_request_to_responses, {"messages": [], "stop": ["\n"]}, "stop", id="chat-stop"),
    pytest.param(bridge.chat_request_to_responses, {"messages": [], "n": 2}, "n", id="chat-n"),
    pytest.param(bridge.chat_request_to_responses, {"messages": [], "logprobs": True}, "logprobs", id="chat-logprobs"),
    pytest.param(bridge.chat_request_to_responses, {"messages": [], "seed": 7}, "seed", id="chat-seed"),
    pytest.param(bridge.chat_request_to_responses, {"messages": [], "frequency_penalty": 0.5}, "frequency_penalty",
                 id="chat-penalty"),
    pytest.param(bridge.chat_request_to_responses, {"messages": [], "modalities": ["text", "audio"]}, "modalities",
                 id="chat-audio"),
    pytest.param(bridge.chat_request_to_responses, {"messages": [], "functions": [WEATHER]}, "functions",
                 id="chat-legacy-functions"),
    pytest.param(bridge.chat_request_to_responses, {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {}}]}]}, "messages[0].content[0].type", id="chat-audio-part"),
    pytest.param(bridge.chat_request_to_responses, {"messages": [], "response_format": {"type": "yaml"}},
                 "response_format", id="chat-format"),
    pytest.param(bridge.responses_request_to_chat, {"input": "hi", "previous_response_id": "resp_1"},
                 "previous_response_id", id="responses-state"),
    pytest.param(bridge.responses_request_to_chat, {"input": "hi", "store": True}, "store", id="responses-store"),
    pytest.param(bridge.responses_request_to_chat, {"input": "hi", "background": True}, "background",
                 id="responses-background"),
    pytest.param(bridge.responses_request_to_chat, {"input": "hi", "tools": [{"type": "web_search"}]},
                 "tools[0].type", id="responses-built-in-tool"),
    pytest.param(bridge.responses_request_to_chat, {"input": [{"type": "item_reference", "id": "x"}]},
                 "input[0].type", id="responses-item-reference"),
    pytest.param(bridge.responses_request_to_chat, {"input": [{"role": "user", "content": [
        {"type": "input_image", "file_id": "file_1"}]}]}, "input[0].content[0].type", id="responses-image-file-id"),
    pytest.param(bridge.responses_request_to_chat, {"input": "hi", "tool_choice": {"type": "file_search"}},
                 "tool_choice", id="responses-tool-choice"),
    pytest.param(bridge.responses_request_to_chat, {"input": "hi", "tool_choice": "sometimes"}, "tool_choice",
                 id="responses-tool-choice-word"),
    pytest.param(bridge.responses_request_to_chat, {"input": "hi", "text": {"format": {"type": "grammar"}}},
                 "text.format", id="responses-format"),
]


@pytest.mark.parametrize(("translate", "request_body", "param"), UNMAPPABLE)
def test_what_cannot_be_mapped_is_a_400_naming_the_field(translate, request_body, param):
    with pytest.raises(bridge.Unmappable) as error:
        translate(request_body)
    assert (error.value.status, error.value.code, error.value.extra["param"]) == (400, "unsupported_parameter", param)
    assert error.value.message.startswith(f"'{param}'")


RESPONSE_USAGE = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 30,
                  "output_tokens_details": {"reasoning_tokens": 20}, "total_tokens": 42}
CHAT_USAGE = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42,
              "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 20}}


def _response(output, *, status="completed", incomplete=None, usage=RESPONSE_USAGE):
    return {"id": "resp_abc", "object": "response", "created_at": 1700000000, "model": "gpt-5-pro", "status": status,
            "incomplete_details": incomplete, "output": output, "usage": usage}


def _completion(message, finish_reason, usage=CHAT_USAGE):
    return {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000, "model": "gpt-5-pro",
            "choices": [{"index": 0, "message": {"role": "assistant", "refusal": None, **message}, "logprobs": None,
                         "finish_reason": finish_reason}], "usage": usage}


TEXT_ITEM = {"type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "Hello.", "annotations": [], "logprobs": []}]}
CALL_ITEM = {"type": "function_call", "status": "completed", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city":"Paris"}'}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}

# (Response object, the chat completion it is)
ANSWERS = [
    pytest.param(_response([{"type": "reasoning", "id": "rs_1", "summary": []}, {"id": "msg_1", **TEXT_ITEM}]),
                 _completion({"content": "Hello."}, "stop"), id="text-reasoning-usage"),
    pytest.param(_response([{"id": "fc_1", **CALL_ITEM}]),
                 _completion({"content": None, "tool_calls": [CALL]}, "tool_calls"), id="tool-call"),
    pytest.param(_response([{"id": "msg_1", **TEXT_ITEM}], status="incomplete",
                           incomplete={"reason": "max_output_tokens"}),
                 _completion({"content": "Hello."}, "length"), id="incomplete"),
]


@pytest.mark.parametrize(("response", "completion"), ANSWERS)
def test_it_translates_a_response_to_a_chat_completion(response, completion):
    assert bridge.response_to_chat(response) == completion


def _without_ids(response):
    return {**response, "output": [{k: v for k, v in item.items() if k != "id"} for item in response["output"]]}


@pytest.mark.parametrize(("response", "completion"), ANSWERS)
def test_it_translates_a_chat_completion_to_a_response(response, completion):
    translated = bridge.chat_to_response(completion, {"input": "hi", "instructions": "Be brief."})
    assert translated["id"] == "resp_abc" and translated["instructions"] == "Be brief."
    assert (translated["status"], translated["incomplete_details"]) == (response["status"], response["incomplete_details"])
    assert translated["usage"] == RESPONSE_USAGE
    assert _without_ids(translated)["output"] == [item for item in _without_ids(response)["output"]
                                                  if item["type"] != "reasoning"]


def test_a_usage_that_is_not_an_object_is_passed_on_for_the_hubs_own_check():
    assert bridge.usage_responses_to_chat(None) is None
    assert bridge.usage_responses_to_chat({"input_tokens": -5, "output_tokens": "n/a"})["prompt_tokens"] == -5


def _events(stream: bytes) -> list[dict]:
    return [orjson.loads(bridge.event_data(event)) for event in bridge.events_split(stream + b"\n\n")[0]
            if bridge.event_data(event) not in (None, b"[DONE]")]


def _chat_stream(*chunks: dict) -> list[dict]:
    return [{"id": "chatcmpl-1", "model": "demo", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if delta is not None else {"id": "chatcmpl-1", "model": "demo", "choices": [], "usage": finish}
            for delta, finish in chunks]


@pytest.mark.parametrize(("chunks", "types", "output"), [
    pytest.param(_chat_stream(({"role": "assistant", "content": ""}, None), ({"content": "Hel"}, None),
                              ({"content": "lo."}, None), ({}, "stop"), (None, CHAT_USAGE)),
                 ["response.created", "response.in_progress", "response.output_item.added",
                  "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                  "response.output_text.done", "response.content_part.done", "response.output_item.done",
                  "response.completed"],
                 [TEXT_ITEM], id="text"),
    pytest.param(_chat_stream(({"role": "assistant", "content": None}, None),
                              ({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                "function": {"name": "get_weather", "arguments": ""}}]}, None),
                              ({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}, None),
                              ({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, None),
                              ({}, "tool_calls"), (None, CHAT_USAGE)),
                 ["response.created", "response.in_progress", "response.output_item.added",
                  "response.function_call_arguments.delta", "response.function_call_arguments.delta",
                  "response.function_call_arguments.done", "response.output_item.done", "response.completed"],
                 [CALL_ITEM], id="tool-call"),
])
def test_it_streams_chat_chunks_as_responses_events(chunks, types, output):
    events = bridge.ResponsesFromChatEvents({"input": "hi"}, model=None)
    stream = events.start() + b"".join(events.chunk(chunk) for chunk in chunks if chunk["choices"])
    stream += events.finish(CHAT_USAGE)
    parsed = _events(stream)
    assert [event["type"] for event in parsed] == types
    assert [event["sequence_number"] for event in parsed] == list(range(len(parsed)))
    final = parsed[-1]["response"]
    assert final["model"] == "demo" and final["usage"] == {**RESPONSE_USAGE}
    assert _without_ids(final)["output"] == output


@pytest.mark.parametrize(("response", "completion"), ANSWERS[:2])
def test_it_streams_responses_events_as_chat_chunks(response, completion):
    events = bridge.ChatFromResponsesEvents()
    stream = events.event({"type": "response.created", "response": {**response, "output": [], "usage": None}})
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            for piece in ("Hel", "lo."):
                stream += events.event({"type": "response.output_text.delta", "output_index": index, "delta": piece})
        elif item["type"] == "function_call":
            stream += events.event({"type": "response.output_item.added", "output_index": index,
                                    "item": {**item, "arguments": ""}})
            stream += events.event({"type": "response.function_call_arguments.delta", "output_index": index,
                                    "delta": item["arguments"]})
    stream += events.event({"type": "response.completed", "response": response})
    assert stream.endswith(b"data: [DONE]\n\n")
    chunks = _events(stream)
    message = completion["choices"][0]["message"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == (message["content"] or "")
    arguments = "".join(call["function"].get("arguments") or "" for c in chunks if c["choices"]
                        for call in c["choices"][0]["delta"].get("tool_calls") or ())
    assert arguments == "".join(call["function"]["arguments"] for call in message.get("tool_calls") or ())
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == \
        completion["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == CHAT_USAGE and chunks[0]["id"] == "chatcmpl-abc"


def test_a_failed_responses_stream_is_a_broken_chat_stream():
    events = bridge.ChatFromResponsesEvents()
    assert events.event({"type": "response.failed", "response": {}}) == b""
    assert events.failed


def test_a_failed_chat_stream_ends_the_responses_stream_with_error_and_failed():
    events = bridge.ResponsesFromChatEvents({"input": "hi"}, model="demo")
    parsed = _events(events.start() + events.fail("timeout", "The upstream stopped sending."))
    assert [event["type"] for event in parsed][-2:] == ["error", "response.failed"]
    assert parsed[-1]["response"]["error"] == {"code": "timeout", "message": "The upstream stopped sending."}


class _Model:
    def __init__(self, api):
        self.api = api


@pytest.mark.parametrize(("apis", "source", "body", "kept"), [
    pytest.param(["chat", "responses"], "chat", {"messages": []}, [0, 1], id="translatable-keeps-all"),
    pytest.param(["chat", "responses"], "chat", {"messages": [], "stop": "x"}, [0], id="untranslatable-fallback-skipped"),
    pytest.param(["responses", "chat"], "responses", {"input": "hi", "previous_response_id": "r"}, [0],
                 id="stateful-chat-fallback-skipped"),
])
def test_candidates_that_cannot_take_the_request_are_skipped(apis, source, body, kept):
    models = [_Model(api) for api in apis]
    assert bridge.servable(models, primary=models[0], body=body, source=source) == [models[i] for i in kept]


def test_a_primary_that_cannot_take_the_request_is_a_400():
    models = [_Model("responses"), _Model("chat")]
    with pytest.raises(bridge.Unmappable):
        bridge.servable(models, primary=models[0], body={"messages": [], "stop": "x"}, source="chat")


@pytest.mark.parametrize(("event", "parts"), [
    (b'event: response.completed\ndata: {"a":1}', (b"response.completed", b'{"a":1}')),
    (b'data: {"a":1}', (None, b'{"a":1}')),
    (b"data: [DONE]", (None, b"[DONE]")),
    (b'event: x\ndata: {"a":\ndata: 1}', (b"x", b'{"a":\n1}')),
    (b": a comment", (None, None)),
    (b"event: ping", (b"ping", None)),
])
def test_it_reads_the_name_and_data_of_an_event(event, parts):
    assert bridge.event_parts(event) == parts
    assert bridge.events_split(event.replace(b"\n", b"\r\n") + b"\r\n\r\nrest") == ([event], b"rest")
