"""/v1 as an ASGI app: a path's route to its handler (chat, completions, embeddings and models in openai_compat,
Responses in openai_responses, the schema in openai_schema), and the errors of them all in OpenAI's shape."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from generation.arms import experiment_bind
from generation.openai_compat import (
    MethodNotAllowed,
    Receive,
    Scope,
    Send,
    _chat_completions,
    _embeddings,
    _header,
    _model_detail,
    _models,
    _respond,
    _respond_error,
    error_payload,
)
from generation.openai_edge import cors_origin, is_preflight, preflight_answer, send_wrapped
from generation.openai_responses import v1_responses
from generation.openai_schema import openapi_json
from generation.services import request_id_bind, request_id_new
from llmhub.errors import ApplicationError, unavailable_error

logger = logging.getLogger(__name__)


async def _openapi(scope: Scope, receive: Receive, send: Send) -> None:
    await _respond(send, 200, openapi_json())


def _route(path: str) -> tuple[str, Callable[..., Awaitable[None]]] | None:
    """The method a /v1 path takes and its handler (trailing slashes ignored), or None for an unknown path."""
    if path == "/v1/chat/completions":
        return "POST", _chat_completions
    if path == "/v1/embeddings":
        return "POST", _embeddings
    if path == "/v1/completions":
        return "POST", lambda scope, receive, send: _chat_completions(scope, receive, send, legacy=True)
    if path == "/v1/models":
        return "GET", _models
    if path.startswith("/v1/models/"):
        model_id = path.removeprefix("/v1/models/")
        return "GET", lambda scope, receive, send: _model_detail(scope, receive, send, model_id)
    if path == "/v1/openapi.json":
        return "GET", _openapi
    if path == "/v1/responses":
        return "POST", v1_responses
    return None


async def application(scope: Scope, receive: Receive, send: Send, *, mistaken: str | None = None) -> None:
    """/v1. `mistaken`: the message of a path outside /v1 that a misconfigured client tried (a JSON 404)."""
    path, method = scope["path"].rstrip("/"), scope["method"]
    request_id = request_id_new()
    request_id_bind(request_id)  # the run takes it: the usage row, the headers and any error carry one id
    experiment_bind(_header(scope, b"x-llmhub-experiment").decode("latin-1"))
    origin = cors_origin(scope)
    if method == "OPTIONS" and is_preflight(scope):
        await preflight_answer(scope, send, origin, request_id)
        return
    send = send_wrapped(send, request_id=request_id, head=method == "HEAD", origin=origin)
    try:
        route = None if mistaken else _route(path)
        if route is None:
            raise ApplicationError(mistaken or f"Unknown route: {method} {scope['path']}", status=404,
                                   code="unknown_route")
        allowed, handler = route
        if method != allowed and not (method == "HEAD" and allowed == "GET"):
            raise MethodNotAllowed(f"Use {allowed}.", extra={"allow": allowed})
        await handler(scope, receive, send)
    except ApplicationError as error:
        await _respond_error(send, error)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        unavailable = unavailable_error(error)
        if unavailable is not None:
            await _respond_error(send, unavailable)
            return
        logger.exception("unexpected error on %s %s", method, path)
        await _respond(send, 500, error_payload(status=500, message="Internal error.", code="internal_error"))
