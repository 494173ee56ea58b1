"""The OpenAPI document of the OpenAI-compatible surface (/v1), served at /v1/openapi.json.

Written by hand because /v1 is a bare ASGI app (no DRF to derive it from); `llmhub/tests/test_openapi.py` fuzzes
it against the live app with schemathesis, so it cannot drift from what `openai_compat.chat_body_validate`,
`openai_validation`, `embeddings` and the routes do. Fields the hub does not know are the upstream's to judge
(they pass through), so only the fields the hub checks are described, exactly as checked, and others are allowed.
"""

from functools import cache
from typing import Any

import orjson
from django.conf import settings

from generation.embeddings import ENCODING_FORMATS, MAX_DIMENSIONS, MAX_INPUTS, MAX_TOKEN_ID
from generation.openai_validation import FORBIDDEN_FIELDS, MAX_STOP, MAX_TOOLS, RESPONSE_FORMATS, ROLES, TOOL_CHOICES

_NAME = {"type": "string", "pattern": "^[a-zA-Z0-9_-]+$", "minLength": 1, "maxLength": 64}
_PART_KINDS = {"text": {"type": "string"}, "image_url": {"type": "object", "required": ["url"],
                                                         "properties": {"url": {"type": "string"}}},
               "input_audio": {"type": "object"}, "file": {"type": "object"}, "refusal": {"type": "string"}}
CONTENT_PART: dict[str, Any] = {"description": "A content part: text, image_url, input_audio, file, refusal, or a "
                                               "newer kind (passed on).", "oneOf": [
    *({"type": "object", "required": ["type", kind], "properties": {"type": {"type": "string", "enum": [kind]},
                                                                   kind: schema}} for kind, schema in _PART_KINDS.items()),
    {"type": "object", "required": ["type"],
     "properties": {"type": {"type": "string", "not": {"enum": sorted(_PART_KINDS)}}}},
]}

MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["role"], "description": "A chat message, as OpenAI's Chat Completions API takes it "
                                                           "(a `tool` message needs `tool_call_id`).",
    "properties": {"role": {"type": "string", "enum": sorted(ROLES)},
                   "content": {"nullable": True, "oneOf": [{"type": "string"},
                                                           {"type": "array", "items": CONTENT_PART}]},
                   "name": {"type": "string", "nullable": True}},
    "anyOf": [{"properties": {"role": {"enum": ["tool"]}, "tool_call_id": {"type": "string"}},
               "required": ["tool_call_id"]},
              {"properties": {"role": {"enum": sorted(ROLES - {"tool"})}}}],
}


def messages_schema() -> dict[str, Any]:
    return {"type": "array", "items": MESSAGE_SCHEMA, "minItems": 1, "maxItems": settings.LLMHUB["MAX_MESSAGES"]}


def _max_tokens() -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": settings.LLMHUB["MAX_OUTPUT_TOKENS"], "nullable": True}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if retry_after:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 1},
                                               "description": "Seconds to wait."}}
    return response


_UNAUTHORIZED = _error("Missing, invalid or revoked hub API key (`invalid_api_key`), or an expired one "
                       "(`api_key_expired`).")
_NOT_ALLOWED = _error("Method not allowed (`method_not_allowed`); `Allow` names the one that is.")

def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _number(low: float, high: float) -> dict[str, Any]:
    return {"type": "number", "minimum": low, "maximum": high, "nullable": True}


def _named_tool(kind: str, extra: dict[str, Any] | None = None, *, type_required: bool = True) -> dict[str, Any]:
    return {"type": "object", "required": ["type", kind] if type_required else [kind], "properties": {
        "type": {"type": "string", "enum": [kind]},
        kind: {"type": "object", "required": ["name"], "properties": {"name": _NAME, **(extra or {})}}}}


_FUNCTION_FIELDS = {"description": _nullable({"type": "string"}), "parameters": _nullable({"type": "object"}),
                    "strict": _nullable({"type": "boolean"})}


def chat_fields() -> dict[str, Any]:
    """The fields of a chat request the hub checks, as generation/openai_validation.py checks them (null is
    absent), besides `messages`."""
    return {
        "model": {"type": "string", "minLength": 1, "nullable": True,
                  "description": "A model id of /v1/models; your default when absent.", "example": "demo"},
        "max_tokens": _max_tokens(),
        "max_completion_tokens": _max_tokens(),
        "stream": {"type": "boolean", "nullable": True, "description": "Answer as server-sent events (null: no)."},
        "stream_options": {"type": "object", "nullable": True,
                           "properties": {"include_usage": _nullable({"type": "boolean"})}},
        "temperature": _number(0, 2),
        "top_p": _number(0, 1),
        "presence_penalty": _number(-2, 2),
        "frequency_penalty": _number(-2, 2),
        "n": {"type": "integer", "minimum": 1, "maximum": settings.LLMHUB["MAX_CHOICES"], "nullable": True},
        "stop": {"nullable": True, "oneOf": [{"type": "string"},
                                             {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP}]},
        "seed": {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1, "nullable": True},
        "logprobs": _nullable({"type": "boolean"}),
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20, "nullable": True},
        "logit_bias": {"type": "object", "nullable": True, "additionalProperties": {
            "type": "number", "minimum": -100, "maximum": 100}},
        "response_format": {"nullable": True, "oneOf": [
            {"type": "object", "required": ["type"], "properties": {
                "type": {"type": "string", "enum": [kind for kind in RESPONSE_FORMATS if kind != "json_schema"]}}},
            {"type": "object", "required": ["type", "json_schema"], "properties": {
                "type": {"type": "string", "enum": ["json_schema"]},
                "json_schema": {"type": "object", "required": ["name"], "properties": {
                    "name": _NAME, "schema": _nullable({"type": "object"}),
                    "strict": _nullable({"type": "boolean"})}}}},
        ]},
        "tools": {"type": "array", "nullable": True, "maxItems": MAX_TOOLS, "items": {"oneOf": [
            _named_tool("function", _FUNCTION_FIELDS, type_required=False), _named_tool("custom")]}},
        "tool_choice": {"nullable": True, "oneOf": [
            {"type": "string", "enum": list(TOOL_CHOICES)}, _named_tool("function"), _named_tool("custom"),
            {"type": "object", "required": ["type", "allowed_tools"], "properties": {
                "type": {"type": "string", "enum": ["allowed_tools"]}, "allowed_tools": {"type": "object"}}}]},
        "parallel_tool_calls": _nullable({"type": "boolean"}),
        "store": _nullable({"type": "boolean"}),
        "metadata": {"type": "object", "nullable": True, "additionalProperties": {"type": "string"}},
        "modalities": {"type": "array", "nullable": True, "items": {"type": "string"}},
        **{name: _nullable({"type": "string"}) for name in ("user", "reasoning_effort", "service_tier", "verbosity",
                                                            "prompt_cache_key", "safety_identifier")},
        **{name: _nullable({"type": "object"}) for name in ("prediction", "audio", "web_search_options")},
    }


_NOT_FORBIDDEN = {"not": {"anyOf": [{"required": [name]} for name in sorted(FORBIDDEN_FIELDS)]}}

CHAT_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "description": "OpenAI's chat completion request. The hub checks the fields below against OpenAI's types and "
                   "ranges (a 400 naming the field), adapts them to the model (parameters it renames or does not "
                   "accept: `x-llmhub-dropped-params`), and refuses those that would choose the upstream or its key; "
                   "any other field goes to the upstream as given (forward compatible).",
    "properties": {"messages": {"$ref": "#/components/schemas/Messages"}},
    **_NOT_FORBIDDEN,
}

COMPLETION_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["prompt"],
    "description": "A legacy text completion, answered by a chat model: the prompt is one user message. `echo`, "
                   "`suffix`, `best_of` above 1 and `logprobs` have no chat equivalent (400 naming the field).",
    "properties": {"prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"},
                                                             "minItems": 1, "maxItems": 1}],
                              "description": "One prompt."}},
    **_NOT_FORBIDDEN,
}

TEXT_COMPLETION: dict[str, Any] = {
    "type": "object", "required": ["object", "choices"],
    "properties": {"id": {"type": "string"}, "object": {"type": "string", "enum": ["text_completion"]},
                   "model": {"type": "string"}, "created": {"type": "integer"},
                   "choices": {"type": "array", "items": {"type": "object", "required": ["text", "index"],
                                                          "properties": {"text": {"type": "string"},
                                                                         "index": {"type": "integer"}}}},
                   "usage": {"type": "object", "nullable": True}},
}

TOKEN = {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}

EMBEDDINGS_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "description": "OpenAI's embeddings request, for a model of kind `embedding` (see /v1/models).",
    "properties": {
        "model": {"type": "string", "minLength": 1, "example": "demo-embed"},
        "input": {"oneOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": {"type": "string", "minLength": 1}},
            {"type": "array", "minItems": 1, "items": TOKEN},
            {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS,
             "items": {"type": "array", "minItems": 1, "items": TOKEN}},
        ], "example": "hello"},
        "dimensions": {"type": "integer", "minimum": 1, "maximum": MAX_DIMENSIONS, "nullable": True},
        "encoding_format": {"type": "string", "enum": [*ENCODING_FORMATS, None], "nullable": True},
        "user": _nullable({"type": "string"}),
    },
    **_NOT_FORBIDDEN,
}

EMBEDDINGS: dict[str, Any] = {
    "type": "object", "required": ["object", "data"],
    "properties": {"object": {"type": "string"}, "model": {"type": "string"},
                   "data": {"type": "array", "items": {"type": "object", "required": ["embedding"], "properties": {
                       "index": {"type": "integer"},
                       "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]}}}},
                   "usage": {"type": "object", "nullable": True}},
}

CHAT_COMPLETION: dict[str, Any] = {
    "type": "object", "required": ["choices"],
    "description": "The upstream's answer as it gave it (`x-llmhub-model` names the model that answered).",
    "properties": {"id": {"type": "string"}, "object": {"type": "string"}, "model": {"type": "string"},
                   "choices": {"type": "array", "items": {"type": "object"}},
                   "usage": {"type": "object", "nullable": True}},
}

SSE_EVENT: dict[str, Any] = {
    "type": "object", "required": ["data"], "description": "One server-sent event.",
    "properties": {"data": {"type": "string", "description": "A `chat.completion.chunk` as JSON, an `error` object "
                                                             "(a stream cut after it began), or `[DONE]`."},
                   "event": {"type": "string"}},
}

_TEXT = {"type": "string"}
_INPUT_ITEM: dict[str, Any] = {"oneOf": [
    {"type": "object", "required": ["role", "content"], "description": "A message.",
     "properties": {"type": {"type": "string", "enum": ["message"]},
                    "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
                    "content": {"oneOf": [_TEXT, {"type": "array", "items": {
                        "type": "object", "required": ["type", "text"],
                        "properties": {"type": {"type": "string", "enum": ["input_text", "output_text"]},
                                       "text": _TEXT}}}]}}},
    {"type": "object", "required": ["type", "call_id", "name", "arguments"], "description": "A function call.",
     "properties": {"type": {"type": "string", "enum": ["function_call"]}, "call_id": _TEXT, "name": _TEXT,
                    "arguments": _TEXT}},
    {"type": "object", "required": ["type", "call_id", "output"], "description": "A function call's result.",
     "properties": {"type": {"type": "string", "enum": ["function_call_output"]}, "call_id": _TEXT,
                    "output": _TEXT}},
]}

RESPONSES_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["input"],
    "description": "OpenAI's Responses request. A model served on the Responses API gets it as given (with "
                   "`previous_response_id`, `store`, built-in tools, …); a chat model gets it translated, and what "
                   "Chat Completions cannot express is a 400 naming the field (`unsupported_parameter`). Any other "
                   "of OpenAI's parameters goes to the upstream as given.",
    "properties": {
        "model": {"type": "string", "minLength": 1, "nullable": True,
                  "description": "A model id of /v1/models; your default when absent."},
        "input": {"oneOf": [_TEXT, {"type": "array", "items": _INPUT_ITEM, "minItems": 1,
                                    "maxItems": 16}]},
        "instructions": {"type": "string", "nullable": True},
        "max_output_tokens": _max_tokens(),
        "stream": {"type": "boolean", "nullable": True, "description": "Answer as Responses server-sent events."},
        "reasoning": {"type": "object", "nullable": True, "properties": {
            "effort": {"type": "string", "enum": ["minimal", "low", "medium", "high"]}}},
        "text": {"type": "object", "nullable": True, "properties": {
            "format": {"type": "object", "required": ["type"],
                       "properties": {"type": {"type": "string", "enum": ["text", "json_object"]}}}}},
        "tools": {"type": "array", "nullable": True, "items": {
            "type": "object", "required": ["type", "name"],
            "properties": {"type": {"type": "string", "enum": ["function"]}, "name": _TEXT,
                           "description": _TEXT, "parameters": {"type": "object"}}}},
        "tool_choice": {"type": "string", "enum": ["none", "auto", "required"], "nullable": True},
    },
    "not": {"anyOf": [{"required": [name]} for name in sorted(FORBIDDEN_FIELDS)]},
}

RESPONSE: dict[str, Any] = {
    "type": "object", "required": ["id", "object", "output"],
    "description": "A Response object (`x-llmhub-model` names the model that answered).",
    "properties": {"id": {"type": "string"}, "object": {"type": "string", "enum": ["response"]},
                   "status": {"type": "string", "nullable": True}, "model": {"type": "string", "nullable": True},
                   "output": {"type": "array", "items": {"type": "object"}},
                   "usage": {"type": "object", "nullable": True}},
}

RESPONSES_SSE_EVENT: dict[str, Any] = {
    "type": "object", "required": ["data"], "description": "One Responses server-sent event.",
    "properties": {"event": {"type": "string", "description": "The event's type: `response.created`, "
                                                              "`response.output_text.delta`, …, `response.completed`, "
                                                              "or `error` (a stream cut after it began)."},
                   "data": {"type": "string", "description": "The event as JSON."}},
}

MODEL: dict[str, Any] = {
    "type": "object", "required": ["id", "object", "created", "owned_by", "kind"],
    "properties": {"id": {"type": "string"}, "object": {"type": "string", "enum": ["model"]},
                   "created": {"type": "integer"}, "owned_by": {"type": "string"},
                   "kind": {"type": "string", "enum": ["chat", "embedding"],
                            "description": "chat: /v1/chat/completions and /v1/completions; embedding: /v1/embeddings."}},
}

ERROR: dict[str, Any] = {
    "type": "object", "required": ["error"], "description": "OpenAI's error shape, so its SDKs raise their classes.",
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": "string", "nullable": True},
        "code": {"type": "string"},
        "attempts": {"type": "array", "description": "A gateway failure: each model tried, its outcome and why.",
                     "items": {"type": "object"}}}}},
}


def _generation_responses(ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "200": ok,
        "400": _error("Invalid request (`param` names the field), a model of the wrong kind, a parameter the model "
                      "refuses, `context_length_exceeded`, or the upstream's own reason (message, param, code)."),
        "401": _UNAUTHORIZED,
        "403": _error("Your tier may not use the model (`tier_required`)."),
        "404": _error("No such model (`model_not_found`)."),
        "405": _NOT_ALLOWED,
        "408": _error("The request body did not arrive in time (`request_timeout`)."),
        "413": _error("The request body is too large (`body_too_large`)."),
        "422": _error("The upstream refused the request as unprocessable (its message, param and code)."),
        "429": _error("Rate limited or out of quota.", retry_after=True),
        "502": _error("Every upstream model failed (`error.attempts` names each)."),
        "503": _error("A dependency or every model is unavailable: retry later.", retry_after=True),
        "504": _error("Every upstream model timed out."),
    }


def _post(operation_id: str, request: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {"post": {"operationId": operation_id, "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{request}"}}}}, "responses": _generation_responses(ok)}}


def openapi_document() -> dict[str, Any]:
    model_parameter = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "llmhub OpenAI-compatible API", "version": settings.SPECTACULAR_SETTINGS["VERSION"],
                 "description": "Use any OpenAI client with `base_url=<hub>/v1` and a hub API key."},
        "security": [{"hubApiKey": []}],
        "paths": {
            "/v1/models": {"get": {
                "operationId": "v1_models_list", "summary": "The models your tier may use, and your own.",
                "responses": {"200": {"description": "The models.", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["object", "data"],
                    "properties": {"object": {"type": "string", "enum": ["list"]},
                                   "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}}}}},
                              "401": _UNAUTHORIZED, "405": _NOT_ALLOWED}}},
            "/v1/models/{model}": {"get": {
                "operationId": "v1_models_retrieve", "parameters": [model_parameter],
                "responses": {"200": {"description": "The model.",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Model"}}}},
                              "401": _UNAUTHORIZED, "403": _error("Your tier may not use it (`tier_required`)."),
                              "404": _error("No such model (`model_not_found`)."), "405": _NOT_ALLOWED}}},
            "/v1/chat/completions": _post("v1_chat_completions", "ChatCompletionRequest", {
                "description": "The completion: JSON, or server-sent events with `stream: true`.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
                            "text/event-stream": {"schema": SSE_EVENT}}}),
            "/v1/completions": _post("v1_completions", "CompletionRequest", {
                "description": "A `text_completion`: JSON, or server-sent events with `stream: true`.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TextCompletion"}},
                            "text/event-stream": {"schema": SSE_EVENT}}}),
            "/v1/embeddings": _post("v1_embeddings", "EmbeddingsRequest", {
                "description": "The embeddings (floats, or base64 with `encoding_format: base64`).",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Embeddings"}}}}),
            "/v1/responses": _post("v1_responses", "ResponsesRequest", {
                "description": "The response: JSON, or Responses server-sent events with `stream: true`. A field the "
                               "model's API cannot express is a 400 (`unsupported_parameter`).",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Response"}},
                            "text/event-stream": {"schema": RESPONSES_SSE_EVENT}}}),
        },
        "components": {
            "securitySchemes": {"hubApiKey": {"type": "http", "scheme": "bearer",
                                              "description": "A hub API key: `Authorization: Bearer lh-…`."}},
            "schemas": {"ChatCompletionRequest": _with_chat_fields(CHAT_REQUEST),
                        "CompletionRequest": _with_chat_fields(COMPLETION_REQUEST, LEGACY_FIELDS), "Messages": messages_schema(),
                        "ChatCompletion": CHAT_COMPLETION, "TextCompletion": TEXT_COMPLETION,
                        "EmbeddingsRequest": EMBEDDINGS_REQUEST, "Embeddings": EMBEDDINGS,
                        "ResponsesRequest": RESPONSES_REQUEST, "Response": RESPONSE, "Model": MODEL,
                        "Error": ERROR},
        },
    }


# The legacy completion's own fields (OpenAI's), checked as chat's; its `logprobs` is another thing (refused).
LEGACY_FIELDS = ("model", "max_tokens", "stream", "stream_options", "temperature", "top_p", "presence_penalty",
                 "frequency_penalty", "n", "stop", "seed", "logit_bias", "user")


def _with_chat_fields(schema: dict[str, Any], names: tuple[str, ...] | None = None) -> dict[str, Any]:
    fields = chat_fields()
    if names is not None:
        fields = {name: fields[name] for name in names}
    return {**schema, "properties": {**fields, **schema["properties"]}}


@cache
def openapi_json() -> bytes:
    return orjson.dumps(openapi_document())
