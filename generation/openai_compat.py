"""The OpenAI-compatible API under /v1, as a bare ASGI app in front of Django (its routes: openai_app.py).

Django's ASGI handler costs about 0.8 ms a request (a thread per request for signals and close());
this path is the hot one, so it skips Django's request machinery and speaks ASGI directly. It uses the
same services, registry snapshot and API keys as the rest of the app; errors are rendered in OpenAI's
shape so the official SDK raises its matching exception classes.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from django.conf import settings

from generation import services
from generation.adaptation import params_dropped
from generation.embeddings import embeddings_body_validate, embeddings_create
from generation.legacy_completions import (
    chat_answer_to_completion,
    chat_events_to_completion,
    completion_request_to_chat,
)
from generation.openai_validation import FORBIDDEN_FIELDS, ROLES, chat_fields_validate, message_validate
from generation.services import Caller, GenerationFailed
from llmhub.errors import ApplicationError
from prompts.services import HEADER as PROMPT_HEADER
from prompts.services import VARIABLES_HEADER, PromptRequest, prompt_request_parse
from registry.authentication import Principal, aapi_key_authenticate, api_key_accept, aprincipal_tier
from registry.selectors import (
    ModelSpec,
    apreferences_get,
    check_model_access,
    get_available_models,
    get_model_by_id,
    registry_snapshot,
)
from routing.policies import Route
from routing.services import TASK_HEADER, task_resolve

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                404: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error"}


class BadRequest(ApplicationError):
    status = 400
    code = "invalid_request"


class MethodNotAllowed(ApplicationError):
    status = 405
    code = "method_not_allowed"


def error_payload(*, status: int, message: str, code: str, param: str | None = None,
                  attempts: list[dict[str, Any]] | None = None) -> bytes:
    """OpenAI's error shape; a gateway failure adds `attempts` (each model tried, its outcome and message)."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    error = {"message": message, "type": kind, "param": param, "code": code}
    if attempts is not None:
        error["attempts"] = attempts
    return orjson.dumps({"error": error})


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _encoded(headers: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in (headers or {}).items()]


async def _respond_error(send: Send, error: ApplicationError) -> None:
    headers = _encoded(getattr(error, "headers", None))  # a quota refusal's x-ratelimit-* headers
    retry_after = getattr(error, "retry_after", None)
    if error.status == 429 or retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(retry_after or 1))).encode()))
    if error.status == 405:
        headers.append((b"allow", error.extra["allow"].encode()))
    if error.status == 408:  # the rest of the body may never come: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await _respond(send, error.status, error_payload(status=error.status, message=error.message, code=error.code,
                                                     param=error.extra.get("param"),
                                                     attempts=error.extra.get("attempts")), headers)


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return b""


def request_task(scope: Scope, body: dict[str, Any], *, endpoint: str) -> str:
    """The task type of a /v1 request: the `x-llmhub-task` header, else `metadata.task`, else the endpoint's."""
    hint = _header(scope, TASK_HEADER.encode()).decode("latin-1") or (body.get("metadata") or {}).get("task")
    return task_resolve(endpoint=endpoint, hint=hint)


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    """The whole body, refused (413) past DATA_UPLOAD_MAX_MEMORY_SIZE, and (408) when it does not arrive within
    BODY_TIMEOUT_SECONDS: a client sending fewer bytes than it declared must not hold the request open."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    declared = _header(scope, b"content-length")
    if declared.isdigit() and int(declared) > limit:
        raise ApplicationError(f"The request body is larger than {limit} bytes.", status=413, code="body_too_large")
    seconds = settings.LLMHUB["BODY_TIMEOUT_SECONDS"]
    try:
        async with asyncio.timeout(seconds):
            return await _receive_body(receive, limit)
    except TimeoutError:
        raise ApplicationError(f"The request body was not received within {seconds:g} seconds.", status=408,
                               code="request_timeout") from None


async def _receive_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApplicationError(f"The request body is larger than {limit} bytes.", status=413, code="body_too_large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _authenticate(scope: Scope) -> Principal:
    header = _header(scope, b"authorization")
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        raise ApplicationError("Missing API key: send 'Authorization: Bearer <key>'.", status=401,
                               code="invalid_api_key")
    return api_key_accept(await aapi_key_authenticate(raw_key=token.strip().decode("latin-1")))


def body_envelope_validate(data: Any) -> dict[str, Any]:
    """What every /v1 generation body must be, whatever its API: a JSON object naming no field that would choose the
    upstream or its key, with a `model` that is a non-empty string when given."""
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    forbidden = sorted(FORBIDDEN_FIELDS.intersection(data))
    if forbidden:
        raise BadRequest(f"The field '{forbidden[0]}' is not accepted: the hub chooses the upstream and its key.",
                         code="forbidden_field", extra={"param": forbidden[0]})
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise BadRequest("'model' must be a non-empty string.", extra={"param": "model"})
    return data


def chat_body_validate(data: Any) -> dict[str, Any]:
    """Checks what the hub relies on and what could hurt; everything else is the upstream's to judge."""
    data = body_envelope_validate(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list.", extra={"param": "messages"})
    if len(messages) > settings.LLMHUB["MAX_MESSAGES"]:
        raise BadRequest(f"At most {settings.LLMHUB['MAX_MESSAGES']} messages are accepted.", extra={"param": "messages"})
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in ROLES:  # a dict or list role is unhashable: never a 500
            raise BadRequest(f"messages[{index}] must be an object with a valid 'role'.",
                             extra={"param": f"messages[{index}]"})
        if not isinstance(message.get("content"), str | list | None):
            raise BadRequest(f"messages[{index}].content must be a string or a list of parts.",
                             extra={"param": f"messages[{index}].content"})
        message_validate(index, message)
    for name in ("max_tokens", "max_completion_tokens"):
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"'{name}' must be a positive integer.", extra={"param": name})
        if value > settings.LLMHUB["MAX_OUTPUT_TOKENS"]:
            raise BadRequest(f"'{name}' may be at most {settings.LLMHUB['MAX_OUTPUT_TOKENS']}.", extra={"param": name})
    if data.get("stream") is not None and not isinstance(data["stream"], bool):
        raise BadRequest("'stream' must be a boolean.", extra={"param": "stream"})
    chat_fields_validate(data)  # OpenAI's types and ranges of the other fields the hub knows
    return data


async def _caller(principal: Principal, registry) -> Caller:
    return Caller(user_id=principal.user.pk, api_key_id=principal.api_key_id, tier=await aprincipal_tier(principal, registry))


def _meta_headers(request_id: str, model: ModelSpec, attempts: int, quota,
                  body: dict[str, Any] | None = None, prompt=None,
                  route: Route | None = None) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-request-id", request_id.encode()), (b"x-llmhub-model", model.id.encode()),
               (b"x-llmhub-attempts", str(attempts).encode()), *(quota.header_bytes() if quota else ()),
               *(prompt.header_bytes() if prompt else ())]
    if route is not None:  # how the model was chosen (the whole explanation is on the usage row)
        headers.append((b"x-llmhub-route", route.header().encode()))
    if body is not None and (dropped := params_dropped(model, body)):  # what the model does not accept
        headers.append((b"x-llmhub-dropped-params", ",".join(dropped).encode()))
    return headers


def prompt_requested(scope: Scope, body: dict[str, Any]) -> PromptRequest | None:
    """The prompt template the request names: `metadata.prompt` (+ `metadata.variables`), else the headers."""
    return prompt_request_parse(metadata=body.get("metadata"), header=_header(scope, PROMPT_HEADER.encode()),
                                variables_header=_header(scope, VARIABLES_HEADER.encode()))


async def _json_body(scope: Scope, receive: Receive) -> Any:
    try:
        return orjson.loads(await _read_body(scope, receive))
    except orjson.JSONDecodeError:
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None


async def _chat_completions(scope: Scope, receive: Receive, send: Send, *, legacy: bool = False) -> None:
    """/v1/chat/completions; with `legacy`, /v1/completions bridged onto it (a prompt in, a text_completion out)."""
    principal = await _authenticate(scope)
    data = await _json_body(scope, receive)
    body = chat_body_validate(completion_request_to_chat(data) if legacy else data)
    endpoint = "v1.completions" if legacy else "v1.chat_completions"
    registry = await registry_snapshot.aget()
    caller = await _caller(principal, registry)
    model_id = body.pop("model", None)
    prompt = prompt_requested(scope, body)
    task = request_task(scope, body, endpoint=endpoint)
    preferred_ids = () if model_id else (await apreferences_get(caller.user_id)).preferred_order(task)
    if not body.get("stream"):
        outcome = await services.chat(caller=caller, registry=registry, body=body, endpoint=endpoint,
                                      model_id=model_id, preferred_ids=preferred_ids, prompt=prompt,
                                      task=task, finish_after_response=True)
        await _respond(send, 200, chat_answer_to_completion(outcome.data) if legacy else outcome.raw,
                       _meta_headers(outcome.request_id, outcome.model, len(outcome.attempts), outcome.quota, body,
                                     outcome.prompt, outcome.route))
        return
    stream = await services.chat_stream(caller=caller, registry=registry, body=body, endpoint=endpoint,
                                        model_id=model_id, preferred_ids=preferred_ids, prompt=prompt,
                                        task=task)
    await _send_stream(stream, receive, send, body=body, legacy=legacy)


async def _embeddings(scope: Scope, receive: Receive, send: Send) -> None:
    principal = await _authenticate(scope)
    body, texts = embeddings_body_validate(await _json_body(scope, receive), forbidden=FORBIDDEN_FIELDS)
    registry = await registry_snapshot.aget()
    caller = await _caller(principal, registry)
    outcome = await embeddings_create(caller=caller, registry=registry, body=body, texts=texts)
    await _respond(send, 200, outcome.raw,
                   _meta_headers(outcome.request_id, outcome.model, len(outcome.attempts), outcome.quota, body))


async def _send_stream(stream: services.ChatStream, receive: Receive, send: Send, *,
                       body: dict[str, Any] | None = None, legacy: bool = False) -> None:
    """Streams SSE to the client; a client that goes away cancels the upstream call at once."""

    async def pump() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"), *_meta_headers(stream.request_id, stream.model, len(stream.attempts),
                                               stream.run.reservation, body, stream.run.prompt, stream.run.route)]})
        events = chat_events_to_completion(stream.events()) if legacy else stream.events()
        try:
            async for chunk in events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await events.aclose()
        await send({"type": "http.response.body", "body": b""})

    async def watch_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    pump_task = asyncio.ensure_future(pump())
    watch_task = asyncio.ensure_future(watch_disconnect())
    try:
        await asyncio.wait({pump_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (watch_task, pump_task):
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await pump_task


def _model_object(model: ModelSpec) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": 0, "owned_by": model.provider, "kind": model.kind}


async def _models(scope: Scope, receive: Receive, send: Send) -> None:
    principal = await _authenticate(scope)
    registry = await registry_snapshot.aget()
    tier = await aprincipal_tier(principal, registry)
    models = get_available_models(tier, registry=registry, owner_id=principal.user.pk)
    body = orjson.dumps({"object": "list", "data": [_model_object(model) for model in models]})
    await _respond(send, 200, body)


async def _model_detail(scope: Scope, receive: Receive, send: Send, model_id: str) -> None:
    principal = await _authenticate(scope)
    registry = await registry_snapshot.aget()
    model = get_model_by_id(model_id, registry=registry, owner_id=principal.user.pk)
    check_model_access(await aprincipal_tier(principal, registry), model)
    await _respond(send, 200, orjson.dumps(_model_object(model)))


__all__ = ["GenerationFailed"]
