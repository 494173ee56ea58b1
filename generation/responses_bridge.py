"""Translation between OpenAI's two text APIs: Chat Completions and Responses. Pure functions, no I/O.

A chat request to a model served on `/responses` (GPT-5 Pro) is translated to a Responses request and its answer
back to a chat completion, streaming included (`ChatFromResponsesEvents`); a `/v1/responses` request to a chat
model the other way (`ResponsesFromChatEvents` for streams). What one API says and the other cannot (a `stop`
sequence for Responses, `previous_response_id` or a built-in tool for Chat) is `Unmappable`: a 400 naming the
field, before any upstream is called. Hints with no effect on the answer's shape (`reasoning.summary`, `include`,
`truncation`, reasoning items sent back as input) are dropped. Unknown fields pass through, as on the native paths.
"""

import time
import uuid
from typing import Any

import orjson

from llmhub.errors import ApplicationError

CHAT, RESPONSES = "chat", "responses"


class Unmappable(ApplicationError):
    """A request field the other API has no equivalent for."""

    status = 400
    code = "unsupported_parameter"

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"'{param}' {reason}", extra={"param": param})
        self.param = param


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _is_neutral(value: Any) -> bool:
    """A value that asks for nothing (clients often send the defaults explicitly)."""
    return value is None or value is False or value == 0 or value == [] or value == {}


# --- Chat request → Responses request --------------------------------------------------------------------

# Chat fields Responses has no equivalent for: refused unless their value asks for nothing.
_CHAT_ONLY = {
    "stop": "has no equivalent in the Responses API the model is served on",
    "presence_penalty": "has no equivalent in the Responses API the model is served on",
    "frequency_penalty": "has no equivalent in the Responses API the model is served on",
    "logit_bias": "has no equivalent in the Responses API the model is served on",
    "logprobs": "is not supported for a model served on the Responses API",
    "top_logprobs": "is not supported for a model served on the Responses API",
    "seed": "has no equivalent in the Responses API the model is served on",
    "prediction": "has no equivalent in the Responses API the model is served on",
    "audio": "is not supported for a model served on the Responses API",
    "web_search_options": "is not supported for a model served on the Responses API",
    "functions": "is the deprecated form of 'tools': send 'tools' instead",
    "function_call": "is the deprecated form of 'tool_choice': send 'tool_choice' instead",
}
# Handled here, or by the hub (stream_options: usage is always asked of the upstream).
_CHAT_TRANSLATED = frozenset({"messages", "max_tokens", "max_completion_tokens", "response_format", "reasoning_effort",
                              "verbosity", "tools", "tool_choice", "n", "modalities", "store", "stream",
                              "stream_options", "model", *_CHAT_ONLY})


def chat_request_to_responses(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request asking what the chat request asks. Stateless: `store` is false unless asked."""
    for name, reason in _CHAT_ONLY.items():
        if not _is_neutral(body.get(name)):
            raise Unmappable(name, reason)
    if body.get("n") not in (None, 1):
        raise Unmappable("n", "must be 1 for a model served on the Responses API (it answers one choice)")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise Unmappable("modalities", "may only be [\"text\"] for a model served on the Responses API")
    out: dict[str, Any] = {key: value for key, value in body.items() if key not in _CHAT_TRANSLATED}
    out["input"] = [item for index, message in enumerate(body.get("messages") or ())
                    for item in _chat_message_to_items(message, index)]
    out["store"] = bool(body.get("store"))
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        out["max_output_tokens"] = max_tokens
    if body.get("reasoning_effort") is not None:
        out["reasoning"] = {"effort": body["reasoning_effort"]}
    text = _chat_format_to_text(body.get("response_format"))
    if body.get("verbosity") is not None:
        text["verbosity"] = body["verbosity"]
    if text:
        out["text"] = text
    if body.get("tools") is not None:
        out["tools"] = [_chat_tool_to_responses(tool, index) for index, tool in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _chat_tool_choice_to_responses(body["tool_choice"])
    if body.get("stream"):
        out["stream"] = True
    return out


def _chat_message_to_items(message: Any, index: int) -> list[dict[str, Any]]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise Unmappable(where, "must be an object")
    role = message.get("role", "user")
    content = message.get("content")
    if role == "tool":
        return [{"type": "function_call_output", "call_id": message.get("tool_call_id"),
                 "output": _plain_text(content, where)}]
    if role == "function":
        raise Unmappable(f"{where}.role", "'function' is the deprecated form of 'tool'")
    items: list[dict[str, Any]] = []
    if role == "assistant":
        parts = _assistant_parts(content, message.get("refusal"), where)
        if parts:
            items.append({"type": "message", "role": "assistant", "content": parts})
        for position, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or call.get("type", "function") != "function":
                raise Unmappable(f"{where}.tool_calls[{position}]", "must be a function call")
            items.append({"type": "function_call", "call_id": call.get("id"), "name": function.get("name"),
                          "arguments": function.get("arguments") or ""})
        return items
    if isinstance(content, list):
        content = [_chat_part_to_input(part, f"{where}.content[{position}]") for position, part in enumerate(content)]
    return [{"type": "message", "role": role, "content": "" if content is None else content}]


def _plain_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for position, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise Unmappable(f"{where}.content[{position}]", "must be a text part here")
        texts.append(part.get("text") or "")
    return "".join(texts)


def _assistant_parts(content: Any, refusal: Any, where: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            parts.append({"type": "output_text", "text": content, "annotations": []})
    elif isinstance(content, list):
        for position, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append({"type": "output_text", "text": part.get("text") or "", "annotations": []})
            elif kind == "refusal":
                parts.append({"type": "refusal", "refusal": part.get("refusal") or ""})
            else:
                raise Unmappable(f"{where}.content[{position}].type", "must be 'text' or 'refusal' in an assistant message")
    if refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    return parts


def _chat_part_to_input(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return {"type": "input_text", "text": part.get("text") or ""}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        detail = image.get("detail") if isinstance(image, dict) else None
        return {"type": "input_image", "image_url": url, "detail": detail or "auto"}
    if kind == "file":
        file = part.get("file") if isinstance(part.get("file"), dict) else {}
        return {"type": "input_file", **{key: file[key] for key in ("file_id", "file_data", "filename") if key in file}}
    raise Unmappable(f"{where}.type", f"{kind!r} has no equivalent in the Responses API the model is served on")


def _chat_format_to_text(response_format: Any) -> dict[str, Any]:
    if response_format is None:
        return {}
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in ("text", "json_object"):
        return {"format": {"type": kind}}
    if kind == "json_schema" and isinstance(response_format.get("json_schema"), dict):
        return {"format": {"type": "json_schema", **response_format["json_schema"]}}
    raise Unmappable("response_format", "must be an object of type 'text', 'json_object' or 'json_schema'")


def _chat_tool_to_responses(tool: Any, index: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict):
        raise Unmappable(f"tools[{index}]", "must be a function tool")
    return {"type": "function", **function}


_TOOL_CHOICES = frozenset({"none", "auto", "required"})


def _chat_tool_choice_to_responses(choice: Any) -> Any:
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        return {"type": "function", "name": choice["function"].get("name")}
    raise Unmappable("tool_choice", "must be 'none', 'auto', 'required' or a function")


# --- Responses answer → chat completion ------------------------------------------------------------------

_INCOMPLETE_FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}


def response_to_chat(data: dict[str, Any]) -> dict[str, Any]:
    """The chat completion a Responses answer is. Reasoning items have no place in a chat message: dropped."""
    texts, refusals, calls = [], [], []
    for item in data.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(part.get("text") or "")
                elif isinstance(part, dict) and part.get("type") == "refusal":
                    refusals.append(part.get("refusal") or "")
        elif item.get("type") == "function_call":
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                               "refusal": "".join(refusals) or None}
    if calls:
        message["tool_calls"] = calls
    completion = {"id": _chat_id(data.get("id")), "object": "chat.completion",
                  "created": int(data.get("created_at") or time.time()), "model": data.get("model"),
                  "choices": [{"index": 0, "message": message, "logprobs": None,
                               "finish_reason": _finish_reason(data, bool(calls))}]}
    usage = usage_responses_to_chat(data.get("usage"))
    if usage is not None:
        completion["usage"] = usage
    return completion


def _chat_id(response_id: Any) -> str:
    return "chatcmpl-" + (response_id.removeprefix("resp_") if isinstance(response_id, str) else uuid.uuid4().hex)


def _finish_reason(data: dict[str, Any], called: bool) -> str:
    if data.get("status") == "incomplete":
        reason = (data.get("incomplete_details") or {}).get("reason")
        return _INCOMPLETE_FINISH.get(reason, "length")
    return "tool_calls" if called else "stop"


def usage_responses_to_chat(usage: Any) -> Any:
    """Responses' usage in chat's words (reasoning tokens included); a usage that is not an object is passed on
    as it is, for the hub's own check of nonsense (`services.usage_from`)."""
    if not isinstance(usage, dict):
        return usage
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    out = {"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": usage.get("total_tokens", _sum(prompt, completion))}
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens")
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens")
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def usage_chat_to_responses(usage: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)},
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)},
        "total_tokens": usage.get("total_tokens", _sum(prompt, completion)),
    }


def _sum(first: Any, second: Any) -> Any:
    return first + second if type(first) is int and type(second) is int else None


class ChatFromResponsesEvents:
    """Turns a Responses event stream into chat completion chunks, one event at a time. `event(data)` takes one
    parsed event and returns the chat SSE bytes it becomes (often none); `response.completed` ends the stream
    with the finish chunk, the usage chunk and `[DONE]`. An `error` or `response.failed` event becomes a
    broken stream: the caller ends it with its own error event."""

    # The events that become chunks; any other (`response.output_text.done`, ...) repeats what was streamed.
    USED = frozenset({b"response.created", b"response.output_text.delta", b"response.refusal.delta",
                      b"response.output_item.added", b"response.function_call_arguments.delta",
                      b"response.completed", b"response.incomplete", b"response.failed", b"error"})

    def __init__(self) -> None:
        self.envelope: dict[str, Any] = {"id": _chat_id(None), "object": "chat.completion.chunk",
                                         "created": int(time.time()), "model": None}
        self.calls: dict[int, int] = {}  # output index of a function call → its index among the tool calls
        self.failed = False
        self._envelope_changed()

    def _envelope_changed(self) -> None:
        # A text delta is the hot path: its chunk is the envelope's bytes around the delta's own.
        head = orjson.dumps({**self.envelope, "choices": None})
        self._text_head = b"data: " + head[:-len(b"null}")] + b'[{"index":0,"delta":{"content":'

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return b"data: " + orjson.dumps({**self.envelope, "choices": [choice]}) + b"\n\n"

    def event(self, data: dict[str, Any]) -> bytes:
        kind = data.get("type")
        if kind == "response.output_text.delta":
            # A delta that is not text goes on as it is: the hub's stream check ends the stream on it.
            return self._text_head + orjson.dumps(data.get("delta")) + \
                b'},"logprobs":null,"finish_reason":null}]}\n\n'
        if kind == "response.refusal.delta":
            return self._chunk({"refusal": data.get("delta") or ""})
        if kind == "response.output_item.added" and (data.get("item") or {}).get("type") == "function_call":
            item, index = data["item"], len(self.calls)
            self.calls[data.get("output_index", index)] = index
            return self._chunk({"tool_calls": [{"index": index, "id": item.get("call_id"), "type": "function",
                                                "function": {"name": item.get("name"),
                                                             "arguments": item.get("arguments") or ""}}]})
        if kind == "response.function_call_arguments.delta":
            index = self.calls.get(data.get("output_index"), 0)
            return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": data.get("delta") or ""}}]})
        if kind == "response.created":
            response = data.get("response") or {}
            self.envelope.update(id=_chat_id(response.get("id")), model=response.get("model"),
                                 created=int(response.get("created_at") or self.envelope["created"]))
            self._envelope_changed()
            return self._chunk({"role": "assistant", "content": ""})
        if kind in ("response.completed", "response.incomplete"):
            response = data.get("response") or {}
            out = self._chunk({}, _finish_reason(response, bool(self.calls)))
            usage = usage_responses_to_chat(response.get("usage"))
            if usage is not None:
                out += b"data: " + orjson.dumps({**self.envelope, "choices": [], "usage": usage}) + b"\n\n"
            return out + b"data: [DONE]\n\n"
        if kind in ("error", "response.failed"):
            self.failed = True
        return b""


# --- Responses request → chat request --------------------------------------------------------------------

# Responses fields a chat upstream cannot honour: refused unless their value asks for nothing.
_RESPONSES_ONLY = {
    "previous_response_id": "needs a model served on the Responses API (this one speaks Chat Completions, "
                            "which keeps no state): send the whole conversation in 'input'",
    "conversation": "needs a model served on the Responses API (this one speaks Chat Completions, which keeps "
                    "no state)",
    "store": "must be false for a model served on Chat Completions (it keeps no state)",
    "background": "needs a model served on the Responses API",
    "prompt": "(a stored prompt template) needs a model served on the Responses API",
    "max_tool_calls": "has no equivalent in Chat Completions, which this model speaks",
    "top_logprobs": "is not supported for a model served on Chat Completions",
}
# Hints with no effect on the answer's shape, dropped when bridged.
_RESPONSES_DROPPED = frozenset({"include", "truncation", "stream_options", "prompt_cache_retention"})
_RESPONSES_TRANSLATED = frozenset({"input", "instructions", "max_output_tokens", "reasoning", "text", "tools",
                                   "tool_choice", "stream", "model", *_RESPONSES_ONLY, *_RESPONSES_DROPPED})


def responses_request_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A chat request asking what the Responses request asks."""
    for name, reason in _RESPONSES_ONLY.items():
        if not _is_neutral(body.get(name)):
            raise Unmappable(name, reason)
    out: dict[str, Any] = {key: value for key, value in body.items() if key not in _RESPONSES_TRANSLATED}
    out["messages"] = responses_input_to_messages(body)
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise Unmappable("reasoning", "must be an object")
        if reasoning.get("effort") is not None:
            out["reasoning_effort"] = reasoning["effort"]
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise Unmappable("text", "must be an object")
        if text.get("format") is not None:
            out["response_format"] = _text_format_to_chat(text["format"])
        if text.get("verbosity") is not None:
            out["verbosity"] = text["verbosity"]
    if body.get("tools") is not None:
        if not isinstance(body["tools"], list):
            raise Unmappable("tools", "must be a list")
        out["tools"] = [_responses_tool_to_chat(tool, index) for index, tool in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _responses_tool_choice_to_chat(body["tool_choice"])
    if body.get("stream"):
        out["stream"] = True
    return out


def responses_input_to_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`instructions` and `input` as chat messages: instructions first, as a system message; function calls
    joined to the assistant message before them; reasoning items dropped (only their upstream can read them)."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif instructions is not None and not isinstance(instructions, str):
        raise Unmappable("instructions", "must be a string for a model served on Chat Completions")
    items = body.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list):
        raise Unmappable("input", "must be a string or a list of items")
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            messages.append(_input_message_to_chat(item, where))
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}}
            previous = messages[-1] if messages else None
            if previous is not None and previous["role"] == "assistant":
                previous.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = "".join(part.get("text") or "" for part in output
                                 if isinstance(part, dict) and part.get("type") in ("input_text", "output_text"))
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": output or ""})
        elif kind == "reasoning":
            continue
        else:
            raise Unmappable(f"{where}.type", f"{kind!r} has no equivalent in Chat Completions, which this model speaks")
    return messages


def _input_message_to_chat(item: dict[str, Any], where: str) -> dict[str, Any]:
    role, content = item.get("role"), item.get("content")
    if role not in ("user", "assistant", "system", "developer"):
        raise Unmappable(f"{where}.role", "must be 'user', 'assistant', 'system' or 'developer'")
    if isinstance(content, list):
        parts = [_input_part_to_chat(part, f"{where}.content[{position}]") for position, part in enumerate(content)]
        # Only user messages take non-text parts in Chat Completions.
        content = parts if role == "user" else "".join(part.get("text") or "" for part in parts)
    elif content is not None and not isinstance(content, str):
        raise Unmappable(f"{where}.content", "must be a string or a list of parts")
    return {"role": role, "content": content}


def _input_part_to_chat(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text") or ""}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal") or ""}
    if kind == "input_image" and part.get("image_url"):
        return {"type": "image_url", "image_url": {"url": part["image_url"], "detail": part.get("detail") or "auto"}}
    if kind == "input_file":
        return {"type": "file", "file": {key: part[key] for key in ("file_id", "file_data", "filename") if key in part}}
    raise Unmappable(f"{where}.type", f"{kind!r} has no equivalent in Chat Completions, which this model speaks")


def _text_format_to_chat(text_format: Any) -> dict[str, Any]:
    kind = text_format.get("type") if isinstance(text_format, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {key: value for key, value in text_format.items() if key != "type"}}
    raise Unmappable("text.format", "must be an object of type 'text', 'json_object' or 'json_schema'")


def _responses_tool_to_chat(tool: Any, index: int) -> dict[str, Any]:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise Unmappable(f"tools[{index}].type", f"{kind!r} (a built-in tool) needs a model served on the Responses "
                                                 "API; this one speaks Chat Completions, which takes function tools")
    return {"type": "function", "function": {key: value for key, value in tool.items() if key != "type"}}


def _responses_tool_choice_to_chat(choice: Any) -> Any:
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise Unmappable("tool_choice", "must be 'none', 'auto', 'required' or a function for a model served on "
                                    "Chat Completions")


# --- Chat completion → Responses answer ------------------------------------------------------------------

def response_envelope(request: dict[str, Any], *, response_id: str, model: str | None, created_at: int,
                      status: str) -> dict[str, Any]:
    """A Response object echoing the request's settings, as OpenAI's does, with no output yet."""
    text = request.get("text") if isinstance(request.get("text"), dict) else {}
    reasoning = request.get("reasoning") if isinstance(request.get("reasoning"), dict) else {}
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": status, "background": False,
        "error": None, "incomplete_details": None, "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"), "model": model, "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True), "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": None}, "store": False,
        "temperature": request.get("temperature"), "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"), "tools": request.get("tools") or [],
        "top_p": request.get("top_p"), "truncation": "disabled", "usage": None, "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def _message_item(item_id: str, text: str, refusal: str | None, status: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text or not refusal:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call_id: str | None, name: str | None, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def _status_of(finish_reason: Any) -> tuple[str, dict[str, str] | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def chat_to_response(data: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The Response object a chat completion is (its first choice: a Responses request asks for one)."""
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    status, incomplete = _status_of(choice.get("finish_reason"))
    response = response_envelope(request, response_id="resp_" + _suffix(data.get("id")), model=data.get("model"),
                                 created_at=int(data.get("created") or time.time()), status=status)
    response["incomplete_details"] = incomplete
    if message.get("content") or message.get("refusal") or not message.get("tool_calls"):
        response["output"].append(_message_item(_new_id("msg"), message.get("content") or "", message.get("refusal"),
                                                "completed"))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        response["output"].append(_call_item(_new_id("fc"), call.get("id"), function.get("name"),
                                             function.get("arguments") or "", "completed"))
    if isinstance(data.get("usage"), dict):
        response["usage"] = usage_chat_to_responses(data["usage"])
    return response


def _suffix(chat_id: Any) -> str:
    return chat_id.removeprefix("chatcmpl-") if isinstance(chat_id, str) and chat_id else uuid.uuid4().hex


class ResponsesFromChatEvents:
    """Turns chat completion chunks into the Responses event stream the openai SDK parses (`response.created`,
    `response.output_item.added`, `response.output_text.delta`, `response.function_call_arguments.delta`, ...,
    `response.completed`). `start()` opens it, `chunk(data)` takes each parsed chat chunk, `finish(usage)`
    closes it after `[DONE]`, `fail(code, message)` ends it with an `error` and a `response.failed` event."""

    def __init__(self, request: dict[str, Any], *, model: str | None) -> None:
        self.response = response_envelope(request, response_id=_new_id("resp"), model=model,
                                          created_at=int(time.time()), status="in_progress")
        self.sequence = 0
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.message_id: str | None = None
        self.message_index = -1
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool call index → its item (with "output_index")
        self.next_index = 0
        self.finish_reason: str | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def start(self) -> bytes:
        return (self._event("response.created", response=self.response)
                + self._event("response.in_progress", response=self.response))

    def _open_message(self) -> bytes:
        if self.message_id is not None:
            return b""
        self.message_id, self.message_index = _new_id("msg"), self._take_index()
        item = _message_item(self.message_id, "", None, "in_progress")
        item["content"] = []
        return (self._event("response.output_item.added", output_index=self.message_index, item=item)
                + self._event("response.content_part.added", item_id=self.message_id, output_index=self.message_index,
                              content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                     "logprobs": []}))

    def _take_index(self) -> int:
        self.next_index += 1
        return self.next_index - 1

    def chunk(self, data: dict[str, Any]) -> bytes:
        out = b""
        if self.response["model"] is None and data.get("model"):
            self.response["model"] = data["model"]
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._open_message()
                self.text.append(delta["content"])
                out += self._event("response.output_text.delta", item_id=self.message_id,
                                   output_index=self.message_index, content_index=0, delta=delta["content"],
                                   logprobs=[])
            if delta.get("refusal"):
                self.refusal.append(delta["refusal"])
            for call in delta.get("tool_calls") or ():
                out += self._call_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        function = call.get("function") or {}
        item = self.calls.get(call.get("index", 0))
        out = b""
        if item is None:
            output_index = self._take_index()
            item = _call_item(_new_id("fc"), call.get("id"), function.get("name"), "", "in_progress")
            self.calls[call.get("index", 0)] = {"item": item, "output_index": output_index}
            out += self._event("response.output_item.added", output_index=output_index, item=dict(item))
        else:
            item = item["item"]
        arguments = function.get("arguments")
        if arguments:
            item["arguments"] += arguments
            out += self._event("response.function_call_arguments.delta", item_id=item["id"],
                               output_index=self.calls[call.get("index", 0)]["output_index"], delta=arguments)
        return out

    def finish(self, usage: dict[str, Any] | None) -> bytes:
        """The closing events; `usage` is in chat's words."""
        out, output = b"", []
        if self.message_id is not None or not self.calls:
            out += self._open_message()
            text = "".join(self.text)
            item = _message_item(self.message_id, text, "".join(self.refusal) or None, "completed")
            part = item["content"][0]
            out += (self._event("response.output_text.done", item_id=self.message_id, output_index=self.message_index,
                                content_index=0, text=text, logprobs=[])
                    + self._event("response.content_part.done", item_id=self.message_id,
                                  output_index=self.message_index, content_index=0, part=part)
                    + self._event("response.output_item.done", output_index=self.message_index, item=item))
            output.append((self.message_index, item))
        for entry in self.calls.values():
            item = {**entry["item"], "status": "completed"}
            out += (self._event("response.function_call_arguments.done", item_id=item["id"], name=item["name"],
                                output_index=entry["output_index"], arguments=item["arguments"])
                    + self._event("response.output_item.done", output_index=entry["output_index"], item=item))
            output.append((entry["output_index"], item))
        status, incomplete = _status_of(self.finish_reason)
        self.response.update(status=status, incomplete_details=incomplete,
                             output=[item for _, item in sorted(output, key=lambda pair: pair[0])],
                             usage=usage_chat_to_responses(usage) if usage else None)
        return out + self._event(f"response.{status}", response=self.response)

    def fail(self, code: str, message: str) -> bytes:
        self.response.update(status="failed", error={"code": code, "message": message})
        return (self._event("error", code=code, message=message, param=None)
                + self._event("response.failed", response=self.response))


# --- Which candidates can serve a request ----------------------------------------------------------------

def request_translated(body: dict[str, Any], *, source: str) -> dict[str, Any]:
    """The request in the other API's words (`source` is the API it is written for)."""
    return chat_request_to_responses(body) if source == CHAT else responses_request_to_chat(body)


def servable(candidates: list[Any], *, primary: Any, body: dict[str, Any], source: str) -> list[Any]:
    """The candidates that can serve a request written for the `source` API: all of them when the request
    translates (or none needs it); else only those speaking that API, and an `Unmappable` 400 when the
    primary does not (the client named a model that cannot take its request)."""
    if all(model.api == source for model in candidates):
        return candidates
    try:
        request_translated(body, source=source)
    except Unmappable:
        if primary.api != source:
            raise
        return [model for model in candidates if model.api == source]
    return candidates


def output_text(data: dict[str, Any]) -> str:
    """The text of a Response object's messages."""
    return "".join(part.get("text") or "" for item in data.get("output") or () if isinstance(item, dict)
                   and item.get("type") == "message" for part in item.get("content") or ()
                   if isinstance(part, dict) and part.get("type") == "output_text")


def events_split(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Whole SSE events of `buffer` and what is left of it (CRLF line ends allowed)."""
    if b"\r" in buffer:
        buffer = buffer.replace(b"\r\n", b"\n")
    *events, rest = buffer.split(b"\n\n")
    return [event for event in events if event], rest


def event_parts(event: bytes) -> tuple[bytes | None, bytes | None]:
    """(`event:` name, `data:` payload) of one SSE event, each None when absent. The usual event, a name line
    then one data line, is cut in place; anything else is read line by line (data lines joined)."""
    name = None
    if event.startswith(b"event:"):
        end = event.find(b"\n")
        if end < 0:
            return event[6:].strip(), None
        name, event = event[6:end].strip(), event[end + 1:]
    if event.startswith(b"data:") and b"\n" not in event:
        return name, event[5:].strip()
    data = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return name, b"\n".join(data) if data else None


def event_data(event: bytes) -> bytes | None:
    """The `data:` payload of one SSE event (its lines joined), or None when it has none."""
    return event_parts(event)[1]
