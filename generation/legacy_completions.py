"""Legacy text completions (`POST /v1/completions`) bridged to chat: the prompt becomes one user message, the
chat answer (or its stream) becomes a `text_completion`. Pure functions, no I/O.

What has no chat equivalent is a 400 naming the field rather than silently ignored: `echo`, `suffix`,
`best_of` above 1, `logprobs` (the legacy per-token shape), several prompts in one request, token-array prompts.
Unlike OpenAI's legacy default of 16 tokens, a request without `max_tokens` gets the model's own default.
"""

from collections.abc import AsyncIterator
from typing import Any

import orjson

from llmhub.errors import ApplicationError


class Unbridgeable(ApplicationError):
    status = 400
    code = "unsupported_parameter"


def _unbridgeable(param: str, why: str) -> Unbridgeable:
    return Unbridgeable(f"'{param}' is not supported on /v1/completions with chat models: {why}",
                        extra={"param": param})


def completion_request_to_chat(data: Any) -> Any:
    """The chat request a legacy completion request stands for (left as it is when it is not an object: the chat
    validation then refuses it)."""
    if not isinstance(data, dict):
        return data
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise _unbridgeable("prompt", "send one prompt (a string) per request; token arrays and several prompts "
                                      "cannot be bridged.")
    if not isinstance(prompt, str):
        raise ApplicationError("'prompt' must be a string.", code="invalid_type", extra={"param": "prompt"})
    if data.get("echo") is not None and data["echo"] is not False:
        raise _unbridgeable("echo", "a chat model does not return the prompt.")
    if data.get("suffix") is not None:
        raise _unbridgeable("suffix", "insertion needs a completion model.")
    if data.get("best_of") not in (None, 1):
        raise _unbridgeable("best_of", "use n instead.")
    if data.get("logprobs") is not None:
        raise _unbridgeable("logprobs", "the legacy per-token shape has no chat equivalent; use /v1/chat/completions.")
    chat = {name: value for name, value in data.items() if name not in ("prompt", "echo", "suffix", "best_of",
                                                                          "logprobs")}
    chat["messages"] = [{"role": "user", "content": prompt}]
    return chat


def _choice(choice: dict[str, Any], text: str) -> dict[str, Any]:
    return {"text": text, "index": choice.get("index", 0), "logprobs": None,
            "finish_reason": choice.get("finish_reason")}


def _envelope(data: dict[str, Any], choices: list[dict[str, Any]]) -> dict[str, Any]:
    answer = {"id": str(data.get("id") or "").replace("chatcmpl", "cmpl", 1) or "cmpl-llmhub",
              "object": "text_completion", "created": data.get("created", 0), "model": data.get("model", ""),
              "choices": choices}
    if data.get("usage") is not None:
        answer["usage"] = data["usage"]
    return answer


def chat_answer_to_completion(data: dict[str, Any]) -> bytes:
    choices = [_choice(choice, (choice.get("message") or {}).get("content") or "")
               for choice in data.get("choices") or () if isinstance(choice, dict)]
    return orjson.dumps(_envelope(data, choices))


def _event_to_completion(event: bytes) -> bytes:
    """One chat SSE event as a text_completion event; [DONE], error events and comments pass unchanged."""
    if not event.startswith(b"data:"):
        return event
    payload = event[5:].strip()
    if payload == b"[DONE]":
        return event
    data = orjson.loads(payload)
    if "error" in data or not isinstance(data.get("choices"), list):
        return event
    choices = [_choice(choice, (choice.get("delta") or {}).get("content") or "") for choice in data["choices"]]
    return b"data: " + orjson.dumps(_envelope(data, choices))


async def chat_events_to_completion(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A chat stream's SSE bytes (whole events, as generation.services.ChatStream yields them) as a legacy
    completion stream."""
    try:
        async for chunk in events:
            yield b"".join(_event_to_completion(event) + b"\n\n" for event in chunk.split(b"\n\n") if event)
    finally:
        await events.aclose()
