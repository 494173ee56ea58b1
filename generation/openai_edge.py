"""What /v1 does around every request, whatever its route: a request id on every response (errors included),
HEAD answered as GET without a body, CORS for browser clients (LLMHUB_CORS_ORIGINS, preflight included), and a
JSON 404 naming the right base URL for the paths a misconfigured client tries (`/chat/completions`, `/models`,
`/v1`). ASGI only; no Django request machinery (this is the hot path)."""

from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

Send = Callable[[dict[str, Any]], Awaitable[None]]

# Paths an OpenAI client reaches when its base URL lacks `/v1` (or is `/v1` itself).
MISTAKEN_PATHS = frozenset({"/chat/completions", "/completions", "/embeddings", "/responses", "/models", "/v1"})
EXPOSED_HEADERS = (b"x-request-id, x-llmhub-model, x-llmhub-attempts, x-llmhub-dropped-params, x-llmhub-route, retry-after, "
                   b"x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
                   b"x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens")
ALLOWED_METHODS = b"GET, POST, HEAD, OPTIONS"
PREFLIGHT_MAX_AGE = b"600"


def header(scope: dict[str, Any], name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return b""


def is_mistaken_path(scope: dict[str, Any]) -> bool:
    """Whether a path outside /v1/ is one an OpenAI client sends when its base URL lacks `/v1`. `/models` is also a
    page of the site's (as `/models/`): a browser asking for HTML keeps getting it."""
    path = scope["path"].rstrip("/") or "/"
    if path == "/models" or path.startswith("/models/"):
        if header(scope, b"authorization")[:7].lower() == b"bearer ":
            return True
        return path == "/models" and b"text/html" not in header(scope, b"accept")
    return path in MISTAKEN_PATHS


def base_url(scope: dict[str, Any]) -> str:
    host = header(scope, b"host").decode("latin-1") or "<this host>"
    return f"{scope.get('scheme', 'http')}://{host}/v1"


def mistaken_path_message(scope: dict[str, Any]) -> str:
    url = base_url(scope)
    if scope["path"].rstrip("/") == "/v1":
        return f"{url} is the base URL of the OpenAI-compatible API, not an endpoint: try GET {url}/models."
    return (f"Unknown route: {scope['method']} {scope['path']}. The OpenAI-compatible API is at {url}: set your "
            f"client's base URL to {url}.")


def cors_origin(scope: dict[str, Any]) -> bytes | None:
    """The Access-Control-Allow-Origin value for this request, or None (CORS off, no Origin, origin not allowed)."""
    allowed = settings.LLMHUB["CORS_ORIGINS"]
    if not allowed:
        return None
    origin = header(scope, b"origin")
    if not origin:
        return None
    if "*" in allowed:
        return b"*"
    return origin if origin.decode("latin-1") in allowed else None


def is_preflight(scope: dict[str, Any]) -> bool:
    return scope["method"] == "OPTIONS" and bool(header(scope, b"access-control-request-method"))


async def preflight_answer(scope: dict[str, Any], send: Send, origin: bytes | None, request_id: str) -> None:
    """204 to a CORS preflight: the methods and the headers asked for are allowed (without an allowed origin, the
    browser refuses the call anyway)."""
    headers = [(b"x-request-id", request_id.encode()), (b"content-length", b"0")]
    if origin is not None:
        requested = header(scope, b"access-control-request-headers") or b"authorization, content-type"
        headers += [(b"access-control-allow-origin", origin), (b"access-control-allow-methods", ALLOWED_METHODS),
                    (b"access-control-allow-headers", requested), (b"access-control-max-age", PREFLIGHT_MAX_AGE),
                    (b"vary", b"Origin")]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def send_wrapped(send: Send, *, request_id: str, head: bool, origin: bytes | None) -> Send:
    """`send` adding x-request-id (unless the handler set it: a run's id), CORS headers, and for HEAD no body."""
    extra = [(b"x-request-id", request_id.encode())]
    cors = [] if origin is None else [(b"access-control-allow-origin", origin),
                                      (b"access-control-expose-headers", EXPOSED_HEADERS), (b"vary", b"Origin")]

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = message["headers"]
            has_id = any(name == b"x-request-id" for name, _ in headers)
            message = {**message, "headers": [*headers, *(() if has_id else extra), *cors]}
        elif head and message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return wrapped
