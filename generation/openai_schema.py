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


_UNAUTHORIZED = _error("Missing, invalid or revoked hub API key (`invalid_api_key`), or an expired one "
                       "(`api_key_expired`).")
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
        },
        "components": {
            "securitySchemes": {"hubApiKey": {"type": "http", "scheme": "bearer",
                                              "description": "A hub API key: `Authorization: Bearer lh-…`."}},
            "schemas": {"ChatCompletionRequest": CHAT_REQUEST, "Messages": messages_schema(),
                        "ChatCompletion": CHAT_COMPLETION, "Model": MODEL, "Error": ERROR},
        },
    }


@cache
def openapi_json() -> bytes:
    return orjson.dumps(openapi_document())
