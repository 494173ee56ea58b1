"""`POST /v1/responses`: OpenAI's Responses API on the lean /v1 app (`openai_compat` routes here).

Same keys, tiers, quotas, fallback and usage log as `/v1/chat/completions`; the answer is a Response object, or
with `stream: true` Responses server-sent events (`event: response.output_text.delta` ...).
"""

from typing import Any

import orjson
from django.conf import settings

from generation import responses
from generation.openai_compat import (
    BadRequest,
    Receive,
    Scope,
    Send,
    _authenticate,
    _caller,
    _meta_headers,
    _read_body,
    _respond,
    _send_stream,
    body_envelope_validate,
    prompt_requested,
)
from registry.selectors import apreferences_get, registry_snapshot


def responses_body_validate(data: Any) -> dict[str, Any]:
    """Checks what the hub relies on and what could hurt; everything else is the upstream's (or the bridge's)."""
    data = body_envelope_validate(data)
    items = data.get("input")
    stateful = any(data.get(name) is not None for name in ("previous_response_id", "conversation", "prompt"))
    if not (isinstance(items, str) or (isinstance(items, list) and items) or (items is None and stateful)):
        raise BadRequest("'input' must be a string or a non-empty list of items.", extra={"param": "input"})
    if isinstance(items, list):
        if len(items) > settings.LLMHUB["MAX_MESSAGES"]:
            raise BadRequest(f"At most {settings.LLMHUB['MAX_MESSAGES']} input items are accepted.",
                             extra={"param": "input"})
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest(f"input[{index}] must be an object.", extra={"param": f"input[{index}]"})
    if data.get("instructions") is not None and not isinstance(data["instructions"], str | list):
        raise BadRequest("'instructions' must be a string.", extra={"param": "instructions"})
    value = data.get("max_output_tokens")
    if value is not None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest("'max_output_tokens' must be a positive integer.", extra={"param": "max_output_tokens"})
        if value > settings.LLMHUB["MAX_OUTPUT_TOKENS"]:
            raise BadRequest(f"'max_output_tokens' may be at most {settings.LLMHUB['MAX_OUTPUT_TOKENS']}.",
                             extra={"param": "max_output_tokens"})
    if data.get("stream") is None:
        data.pop("stream", None)
    elif not isinstance(data["stream"], bool):
        raise BadRequest("'stream' must be a boolean.", extra={"param": "stream"})
    for name in ("tools", "include"):
        if data.get(name) is not None and not isinstance(data[name], list):
            raise BadRequest(f"'{name}' must be a list.", extra={"param": name})
    for name in ("text", "reasoning", "metadata"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise BadRequest(f"'{name}' must be an object.", extra={"param": name})
    return data


async def v1_responses(scope: Scope, receive: Receive, send: Send) -> None:
    principal = await _authenticate(scope)
    try:
        data = orjson.loads(await _read_body(scope, receive))
    except orjson.JSONDecodeError:
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None
    body = responses_body_validate(data)
    registry = await registry_snapshot.aget()
    caller = await _caller(principal, registry)
    model_id = body.pop("model", None)
    prompt = prompt_requested(scope, body)
    preferred_ids = () if model_id else (await apreferences_get(caller.user_id)).preferred_order("generation")
    if not body.get("stream"):
        outcome = await responses.respond(caller=caller, registry=registry, body=body, model_id=model_id,
                                          preferred_ids=preferred_ids, prompt=prompt)
        await _respond(send, 200, outcome.raw, _meta_headers(outcome.request_id, outcome.model, len(outcome.attempts),
                                                           outcome.quota, prompt=outcome.prompt))
        return
    stream = await responses.respond_stream(caller=caller, registry=registry, body=body, model_id=model_id,
                                            preferred_ids=preferred_ids, prompt=prompt)
    await _send_stream(stream, receive, send)
