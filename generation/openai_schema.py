"""The OpenAPI document of the OpenAI-compatible surface (/v1), served at /v1/openapi.json.

Written by hand because /v1 is a bare ASGI app (no DRF to derive it from); `llmhub/tests/test_openapi.py` fuzzes
it against the live app with schemathesis, so it cannot drift from what `openai_compat.chat_body_validate` and the
routes do. Beyond the fields the hub checks, a chat request is the upstream's to judge (OpenAI's own parameters
pass through), so only the fields the hub checks are described, and others are allowed.
"""

from functools import cache
from typing import Any

import orjson
from django.conf import settings

from generation.openai_compat import FORBIDDEN_FIELDS, ROLES

MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["role"], "description": "A chat message, as OpenAI's Chat Completions API takes it.",
    "properties": {"role": {"type": "string", "enum": sorted(ROLES)},
                   "content": {"nullable": True, "oneOf": [{"type": "string"}, {"type": "array", "items": {}}]}},
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


_UNAUTHORIZED = _error("Missing or invalid hub API key (`invalid_api_key`).")
_NOT_ALLOWED = _error("Method not allowed (`method_not_allowed`); `Allow` names the one that is.")

CHAT_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "description": "OpenAI's chat completion request. The hub checks the fields below and refuses those that would "
                   "choose the upstream or its key; any other of OpenAI's parameters (`temperature`, `tools`, …) "
                   "goes to the upstream as given, for it to judge.",
    "properties": {
        "model": {"type": "string", "minLength": 1, "nullable": True,
                  "description": "A model id of /v1/models; your default when absent."},
        "messages": {"$ref": "#/components/schemas/Messages"},
        "max_tokens": _max_tokens(),
        "max_completion_tokens": _max_tokens(),
        "stream": {"type": "boolean", "description": "Answer as server-sent events."},
        "stream_options": {"type": "object", "nullable": True,
                           "properties": {"include_usage": {"type": "boolean"}}},
    },
    "not": {"anyOf": [{"required": [name]} for name in sorted(FORBIDDEN_FIELDS)]},
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
    "type": "object", "required": ["id", "object", "created", "owned_by"],
    "properties": {"id": {"type": "string"}, "object": {"type": "string", "enum": ["model"]},
                   "created": {"type": "integer"}, "owned_by": {"type": "string"}},
}

ERROR: dict[str, Any] = {
    "type": "object", "required": ["error"], "description": "OpenAI's error shape, so its SDKs raise their classes.",
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": "string", "nullable": True},
        "code": {"type": "string"}}}},
}


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
            "/v1/chat/completions": {"post": {
                "operationId": "v1_chat_completions",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}},
                "responses": {
                    "200": {"description": "The completion: JSON, or server-sent events with `stream: true`.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
                                        "text/event-stream": {"schema": SSE_EVENT}}},
                    "400": _error("Invalid request (`param` names the field), or the upstream refused it."),
                    "401": _UNAUTHORIZED,
                    "403": _error("Your tier may not use the model (`tier_required`)."),
                    "404": _error("No such model (`model_not_found`)."),
                    "405": _NOT_ALLOWED,
                    "413": _error("The request body is too large (`body_too_large`)."),
                    "429": _error("Rate limited or out of quota.", retry_after=True),
                    "502": _error("Every upstream model failed."),
                    "503": _error("A dependency or every model is unavailable: retry later.", retry_after=True),
                    "504": _error("Every upstream model timed out."),
                }}},
            "/v1/responses": {"post": {
                "operationId": "v1_responses",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ResponsesRequest"}}}},
                "responses": {
                    "200": {"description": "The response: JSON, or server-sent events with `stream: true`.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Response"}},
                                        "text/event-stream": {"schema": RESPONSES_SSE_EVENT}}},
                    "400": _error("Invalid request (`param` names the field), a field the model's API cannot "
                                  "express (`unsupported_parameter`), or the upstream refused it."),
                    "401": _UNAUTHORIZED,
                    "403": _error("Your tier may not use the model (`tier_required`)."),
                    "404": _error("No such model (`model_not_found`)."),
                    "405": _NOT_ALLOWED,
                    "413": _error("The request body is too large (`body_too_large`)."),
                    "429": _error("Rate limited or out of quota.", retry_after=True),
                    "502": _error("Every upstream model failed."),
                    "503": _error("A dependency or every model is unavailable: retry later.", retry_after=True),
                    "504": _error("Every upstream model timed out."),
                }}},
        },
        "components": {
            "securitySchemes": {"hubApiKey": {"type": "http", "scheme": "bearer",
                                              "description": "A hub API key: `Authorization: Bearer lh-…`."}},
            "schemas": {"ChatCompletionRequest": CHAT_REQUEST, "Messages": messages_schema(),
                        "ChatCompletion": CHAT_COMPLETION, "ResponsesRequest": RESPONSES_REQUEST,
                        "Response": RESPONSE, "Model": MODEL, "Error": ERROR},
        },
    }


@cache
def openapi_json() -> bytes:
    return orjson.dumps(openapi_document())
