"""A local OpenAI-compatible upstream for the demo, the tests and the benchmarks.

There is no internet here, so every gateway feature is exercised over real HTTP against this server. It is
the "direct upstream" baseline in benchmarks, hence a bare ASGI app on uvicorn + uvloop + httptools with
orjson, no framework, no per-request logging, and nothing precomputable done per request. It must not
import Django: the benchmark runs it as ``python -m generation.simulator``.

Replies are deterministic: "Simulated reply from <base model>: <last user message>", one token per
whitespace-separated word.

Faults are requested per call with a model suffix (``demo@latency=200,status=500``), an ``X-Sim-Fault``
header, or persistently per base model through ``POST /_sim/faults``; all three combine and, for the same
fault, the later one wins (table, then suffix, then header). Grammar: comma-separated tokens, each one of

    latency=MS       wait before the response headers (before the first chunk when streaming)
    chunk_delay=MS   wait between streamed chunks
    status=CODE      answer CODE (400-599) with an OpenAI error body
    429=SECONDS      rate limited, with ``Retry-After: SECONDS`` (alias ``ratelimit=SECONDS``)
    hang             never answer; the handler sleeps until the client disconnects
    drop=N           streaming: cut the connection after N content chunks; otherwise: no response at all
    malformed        200 with a body that is not valid JSON (a non-JSON event when streaming)
    html             200 with an HTML page
    huge=BYTES       200 with a valid body padded to about BYTES bytes
    usage=KIND       the reported usage is garbage: ``negative`` (prompt_tokens -50), ``text`` (completion_tokens
                     "n/a"), ``fraction`` (prompt_tokens 12.5), ``huge`` (prompt_tokens 10**12), ``absent`` (none)
    content=number   the answer's ``content`` is the number 5 (in every delta when streaming)
    after=N          the other faults spare the model's first N requests (as counted by ``/_sim/stats``)
    nostream, nojson, notools   the model lacks that feature: using it is a 400

``POST /v1/embeddings`` answers deterministic unit vectors (16 numbers, or ``dimensions``; floats or base64) for
any model. A malformed request gets OpenAI's 400 (its error shape, `param` naming the field), never a crash.

``POST /v1/responses`` is OpenAI's Responses API, served natively with the same replies and faults: a Response
object (with ``reasoning.effort`` set, a reasoning item and 2/4/8/16 reasoning tokens for minimal/low/medium/high),
or with ``stream: true`` its events (``response.created`` ... ``response.completed``).

Control endpoints (no auth): ``GET /_sim/stats``, ``GET /_sim/last`` (the last request body per base model),
``POST /_sim/faults {"model", "fault"}`` (an empty
fault clears that model), ``DELETE /_sim/faults``, ``POST /_sim/models {"models": [...]}``,
``POST /_sim/reset`` (faults and counters).
"""

import argparse
import asyncio
import base64
import hashlib
import itertools
import math
import os
import re
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import orjson
import uvicorn

DEFAULT_MODELS = ("demo", "demo-backup", "demo-pro", "demo-premium", "demo-translate", "demo-embed")
# Worker processes started by uvicorn cannot receive Python objects, so the model list travels by env.
MODELS_ENV = "LLMHUB_SIMULATOR_MODELS"
# Shared by run() and llmhub.testing so benchmarks and tests measure the same server.
UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "access_log": False,
    "log_level": "warning",
    "backlog": 2048,
    "lifespan": "off",
    "ws": "none",
}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = b"application/json"
_EVENT_STREAM_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
}
_DONE = b"data: [DONE]\n\n"
_MALFORMED_JSON = b'{"id": "chatcmpl-sim", "object": "chat.completion", "choices": [{"message": '
_MALFORMED_EVENT = b'data: {"id": "chatcmpl-sim", "choices": [\n\n'
_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1><p>The upstream proxy could not reach the model.</p></body></html>\n"
)
# One piece per word, trailing whitespace kept, so the streamed deltas concatenate to the exact content.
_PIECES = re.compile(r"\s*\S+\s*")


class SimulatedError(Exception):
    """An answer in OpenAI's error shape; raised anywhere before the response has started."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        kind: str | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers
        self.body = orjson.dumps(
            {
                "error": {
                    "message": message,
                    "type": kind or ("server_error" if status >= 500 else "invalid_request_error"),
                    "param": param,
                    "code": code,
                }
            }
        )


@dataclass(frozen=True, slots=True)
class Faults:
    latency: int = 0  # milliseconds
    chunk_delay: int = 0  # milliseconds
    status: int = 0
    ratelimit: int | None = None  # Retry-After seconds
    hang: bool = False
    drop: int | None = None
    malformed: bool = False
    html: bool = False
    huge: int = 0
    nostream: bool = False
    nojson: bool = False
    notools: bool = False
    usage: str = ""
    content: str = ""
    after: int = 0


NO_FAULTS = Faults()
_VALUED_FAULTS = {"latency", "chunk_delay", "status", "ratelimit", "drop", "huge", "after"}
_FLAG_FAULTS = {"hang", "malformed", "html", "nostream", "nojson", "notools"}
# Garbage an upstream may report, by fault value: what replaces the reply's usage (None: no usage at all).
_BAD_USAGE: dict[str, Callable[[dict[str, int]], dict[str, Any] | None]] = {
    "negative": lambda usage: {**usage, "prompt_tokens": -50},
    "text": lambda usage: {**usage, "completion_tokens": "n/a"},
    "fraction": lambda usage: {**usage, "prompt_tokens": 12.5},
    "huge": lambda usage: {**usage, "prompt_tokens": 10**12},
    "absent": lambda usage: None,
}
_WORD_FAULTS = {"usage": set(_BAD_USAGE), "content": {"number"}}
_FAULT_GRAMMAR = (
    "latency=MS, chunk_delay=MS, status=CODE, 429=SECONDS, drop=N, huge=BYTES, hang, malformed, html, nostream, nojson, "
    f"notools, usage={'|'.join(_BAD_USAGE)}, content=number, after=N"
)


@lru_cache(maxsize=1024)
def parse_faults(specs: tuple[str, ...]) -> Faults:
    """Merge fault specs in order (later wins); cached because benchmarks repeat the same few specs."""
    fields: dict[str, int | bool | str] = {}
    for token in ",".join(specs).split(","):
        name, has_value, value = token.strip().partition("=")
        name = "ratelimit" if name == "429" else name
        if name in _FLAG_FAULTS and not has_value:
            fields[name] = True
        elif name in _VALUED_FAULTS and value.isdigit():
            fields[name] = int(value)
        elif value in _WORD_FAULTS.get(name, ()):
            fields[name] = value
        elif name:
            raise SimulatedError(400, f"Unknown simulator fault {token.strip()!r}; expected {_FAULT_GRAMMAR}.")
    if not 400 <= fields.get("status", 400) <= 599:
        raise SimulatedError(400, "Simulator fault status=CODE needs a CODE from 400 to 599.")
    return Faults(**fields)


class Reply(NamedTuple):
    content: Any
    tool_call: dict[str, Any] | None
    finish_reason: str
    usage: dict[str, Any] | None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _json_mode(request: dict[str, Any]) -> bool:
    return (request.get("response_format") or {}).get("type") in ("json_object", "json_schema")


def _reply(request: dict[str, Any], base_model: str, call_number: int, padding: int) -> Reply:
    messages = request.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise SimulatedError(400, "`messages` must be a list of message objects.", param="messages")
    prompt_tokens, last_user_text = 0, ""
    for message in messages:
        text = _text(message.get("content"))
        prompt_tokens += len(text.split())
        if message.get("role") == "user":
            last_user_text = text
    prompt_tokens = max(prompt_tokens, 1)

    tools = request.get("tools")
    if tools and request.get("tool_choice") != "none":
        forced = request.get("tool_choice")
        chosen = forced if isinstance(forced, dict) and forced.get("type") in ("function", "custom") else tools[0]
        try:  # a function tool, or a custom one (OpenAI's two kinds)
            name = (chosen.get("function") or chosen.get("custom"))["name"]
        except (KeyError, TypeError, AttributeError):
            raise SimulatedError(400, "Each tool needs `function.name`.", param="tools") from None
        call = {"id": f"call_sim_{call_number}", "type": "function", "function": {"name": name, "arguments": "{}"}}
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1}
        return Reply(None, call, "tool_calls", usage)

    content = f"Simulated reply from {base_model}: {last_user_text}"
    finish_reason = "stop"
    limit = request.get("max_completion_tokens")
    if limit is None:
        limit = request.get("max_tokens")
    if isinstance(limit, int) and len(words := content.split()) > limit:
        content, finish_reason = " ".join(words[:limit]), "length"
    if padding > len(content):
        # One long word: the body gets big while the stream stays a handful of chunks.
        content += " " + "x" * (padding - len(content) - 1)
    if _json_mode(request):
        content = orjson.dumps({"reply": content}).decode()
    completion_tokens = len(content.split())
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return Reply(content, None, finish_reason, usage)


# OpenAI's types of the chat fields the simulator reads: a request that breaks them gets OpenAI's 400.
_CHAT_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "response_format": (dict,), "stream_options": (dict,), "tools": (list,), "tool_choice": (str, dict),
    "stream": (bool,), "max_tokens": (int,), "max_completion_tokens": (int,),
}


def _chat_request_check(request: dict[str, Any]) -> None:
    for name, types in _CHAT_FIELD_TYPES.items():
        value = request.get(name)
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise SimulatedError(400, f"Invalid type for '{name}'.", code="invalid_type", param=name)
    if isinstance(request.get("response_format"), dict) and request["response_format"].get("type") not in (
            "text", "json_object", "json_schema"):
        raise SimulatedError(400, "Invalid value for 'response_format.type'.", code="invalid_value",
                             param="response_format.type")


EMBEDDING_DIMENSIONS = 16  # the simulated model's native size; `dimensions` asks for another (up to 3072)


def _embedding_inputs(value: Any) -> list[str]:
    """Each input as text (token arrays as their numbers), as OpenAI accepts them: a string, strings, a token
    array or token arrays, none empty."""
    if isinstance(value, str) or (isinstance(value, list) and value and all(type(item) is int for item in value)):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > 2048:
        raise SimulatedError(400, "'input' must be a string, an array of strings or of token arrays (at most 2048).",
                             param="input")
    texts = []
    for item in value:
        if isinstance(item, list) and item and all(type(token) is int for token in item):
            texts.append(" ".join(map(str, item)))
        elif isinstance(item, str) and item:
            texts.append(item)
        else:
            raise SimulatedError(400, "Each input must be a non-empty string or token array.", param="input")
    return texts


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `text`: the same text always gives the same vector."""
    raw = b"".join(hashlib.sha256(f"{index}:{text}".encode()).digest() for index in range(-(-dimensions // 8)))
    values = [(number / 2**31) - 1.0 for number in struct.unpack(f"<{len(raw) // 4}I", raw)[:dimensions]]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return [value / norm for value in values]


def embeddings_answer(request: dict[str, Any], model: str) -> dict[str, Any]:
    texts = _embedding_inputs(request.get("input"))
    dimensions = request.get("dimensions") or EMBEDDING_DIMENSIONS  # null is absent, as at OpenAI
    if type(dimensions) is not int or not 1 <= dimensions <= 3072:
        raise SimulatedError(400, "'dimensions' must be an integer from 1 to 3072.", param="dimensions")
    encoding = request.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise SimulatedError(400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    data = []
    for index, text in enumerate(texts):
        vector: Any = embedding_vector(text, dimensions)
        if encoding == "base64":
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(max(1, len(text.split())) for text in texts)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _garbled(reply: Reply, faults: Faults) -> Reply:
    """The reply with the garbage the `usage=` and `content=` faults ask for."""
    if faults.usage:
        reply = reply._replace(usage=_BAD_USAGE[faults.usage](reply.usage))
    if faults.content == "number" and reply.content is not None:
        reply = reply._replace(content=5)
    return reply


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body"):
        message = await receive()
        body += message.get("body", b"")
    return body


async def _read_json(receive: Receive) -> dict[str, Any]:
    try:
        payload = orjson.loads(await _read_body(receive))
    except orjson.JSONDecodeError:
        raise SimulatedError(400, "The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise SimulatedError(400, "The request body must be a JSON object.")
    return payload


async def _send_body(
    send: Send, status: int, body: bytes, content_type: bytes = _JSON, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    start_headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _cut_connection(send: Send, receive: Receive) -> None:
    # ASGI has no "abort" message: raising would make uvicorn answer 500 (or log a traceback), so close the
    # transport of uvicorn's request cycle, which `send` is bound to, and return once uvicorn has noticed.
    send.__self__.transport.close()  # type: ignore[attr-defined]
    await _wait_for_disconnect(receive)


async def _sleep_ms(milliseconds: int) -> None:
    if milliseconds:
        await asyncio.sleep(milliseconds / 1000)


def _check_auth(authorization: bytes | None) -> None:
    # Messages never echo the key: the gateway must not leak it, so neither may its test double.
    if not authorization or authorization[:7].lower() != b"bearer " or not authorization[7:].strip():
        raise SimulatedError(401, "You didn't provide an API key (Authorization: Bearer <key>).")
    key = authorization[7:].lower()
    if b"invalid" in key or b"rejected" in key:
        raise SimulatedError(401, "Incorrect API key provided.", code="invalid_api_key")


def _fault_rejection(faults: Faults, request: dict[str, Any], base_model: str) -> SimulatedError | None:
    if faults.status:
        return SimulatedError(faults.status, "Simulated upstream error.")
    if faults.ratelimit is not None:
        return SimulatedError(
            429,
            "Rate limit reached (simulated).",
            kind="rate_limit_exceeded",
            code="rate_limit_exceeded",
            headers=[(b"retry-after", str(faults.ratelimit).encode())],
        )
    missing = (
        (faults.nostream and request.get("stream") is True, "streaming", "stream"),
        (faults.nojson and _json_mode(request), "response_format", "response_format"),
        (faults.notools and bool(request.get("tools")), "tools", "tools"),
    )
    for used, feature, param in missing:
        if used:
            message = f"The model `{base_model}` does not support {feature}."
            return SimulatedError(400, message, code="unsupported_parameter", param=param)
    return None


class Simulator:
    """The ASGI app. State (models, fault table, counters) lives here, one instance per server."""

    def __init__(self, models: Sequence[str] | None = None) -> None:
        self._routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("GET", "/v1/models"): self._list_models,
            ("POST", "/v1/chat/completions"): self._chat_completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("GET", "/_sim/last"): self._last,
            ("POST", "/v1/responses"): self._responses,
            ("GET", "/_sim/stats"): self._stats,
            ("POST", "/_sim/faults"): self._set_fault,
            ("DELETE", "/_sim/faults"): self._clear_faults,
            ("POST", "/_sim/models"): self._add_models,
            ("POST", "/_sim/reset"): self._reset,
        }
        self._models: dict[str, None] = {}  # a dict keeps insertion order for /v1/models
        self._models_body = b""
        self._fault_table: dict[str, str] = {}
        self._requests: dict[str, int] = {}
        self._last_requests: dict[str, dict[str, Any]] = {}  # the last request body per base model
        self._responses_requests: dict[str, int] = {}  # those of `_requests` that came to /v1/responses
        self._call_numbers = itertools.count(1)
        self._register_models(models or DEFAULT_MODELS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get((scope["method"], scope["path"]))
        try:
            if route is None:
                raise SimulatedError(404, f"Unknown simulator route {scope['method']} {scope['path']}.")
            await route(scope, receive, send)
        except SimulatedError as error:
            await _send_body(send, error.status, error.body, headers=error.headers)
        except (TypeError, KeyError, AttributeError, ValueError, IndexError) as error:
            # A request shape nobody foresaw: OpenAI answers such a request with a 400, never a crash.
            failure = SimulatedError(400, f"Invalid request: {type(error).__name__}.")
            await _send_body(send, failure.status, failure.body)

    def _register_models(self, names: Sequence[str]) -> None:
        self._models.update(dict.fromkeys(names))
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "simulator"} for name in self._models]
        self._models_body = orjson.dumps({"object": "list", "data": data})

    async def _list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        _check_auth(next((value for name, value in scope["headers"] if name == b"authorization"), None))
        await _send_body(send, 200, self._models_body)

    def _accept(self, scope: Scope, request: dict[str, Any]) -> tuple[str, str, Faults]:
        """(model, base model, faults) of a request to a model route, after its key and model are checked."""
        model = request.get("model")
        if not isinstance(model, str):
            raise SimulatedError(400, "`model` is required.", param="model")
        base_model, _, suffix = model.partition("@")
        self._requests[base_model] = self._requests.get(base_model, 0) + 1
        self._last_requests[base_model] = request

        authorization = fault_header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"x-sim-fault":
                fault_header = value.decode("latin-1")
        _check_auth(authorization)
        if base_model not in self._models:
            message = f"The model `{base_model}` does not exist"
            raise SimulatedError(404, message, code="model_not_found", param="model")
        specs = tuple(spec for spec in (self._fault_table.get(base_model), suffix, fault_header) if spec)
        faults = parse_faults(specs) if specs else NO_FAULTS
        if faults.after >= self._requests[base_model]:
            faults = NO_FAULTS
        return model, base_model, faults

    async def _chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await _read_json(receive)
        model, base_model, faults = self._accept(scope, request)
        _chat_request_check(request)
        if faults.hang:
            return await _wait_for_disconnect(receive)
        rejection = _fault_rejection(faults, request, base_model)
        streaming = request.get("stream") is True and rejection is None and not faults.html
        if not streaming:
            await _sleep_ms(faults.latency)
        if rejection is not None:
            raise rejection
        if faults.html:
            return await _send_body(send, 200, _HTML_PAGE, b"text/html; charset=utf-8")
        if streaming:
            return await self._stream(request, model, base_model, faults, send, receive)
        if faults.malformed:
            return await _send_body(send, 200, _MALFORMED_JSON)
        if faults.drop is not None:
            return await _cut_connection(send, receive)

        call_number = next(self._call_numbers)
        reply = _garbled(_reply(request, base_model, call_number, faults.huge), faults)
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_call:
            message["tool_calls"] = [reply.tool_call]
        completion = {
            "id": f"chatcmpl-sim-{call_number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
        }
        if reply.usage is not None:
            completion["usage"] = reply.usage
        await _send_body(send, 200, orjson.dumps(completion))

    async def _stream(
        self, request: dict[str, Any], model: str, base_model: str, faults: Faults, send: Send, receive: Receive
    ) -> None:
        call_number = next(self._call_numbers)
        reply = _garbled(_reply(request, base_model, call_number, faults.huge), faults)
        envelope = {
            "id": f"chatcmpl-sim-{call_number}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return b"data: " + orjson.dumps({**envelope, "choices": [choice]}) + b"\n\n"

        if reply.tool_call:
            deltas = [{"role": "assistant", "content": None}, {"tool_calls": [{"index": 0, **reply.tool_call}]}]
        else:
            deltas = [{"role": "assistant", "content": ""}]
            pieces = _PIECES.findall(reply.content or "") if isinstance(reply.content, str) else [reply.content]
            deltas += [{"content": piece} for piece in pieces]

        await send(_EVENT_STREAM_START)
        await _sleep_ms(faults.latency)
        if faults.malformed:
            return await send({"type": "http.response.body", "body": _MALFORMED_EVENT})
        for index, delta in enumerate(deltas):
            if faults.drop is not None and index > faults.drop:
                return await _cut_connection(send, receive)
            if index:
                await _sleep_ms(faults.chunk_delay)
            await send({"type": "http.response.body", "body": chunk(delta), "more_body": True})
        if faults.drop is not None:  # drop=N with N >= the content chunks still cuts before the finish
            return await _cut_connection(send, receive)
        await _sleep_ms(faults.chunk_delay)
        tail = chunk({}, reply.finish_reason)
        if (request.get("stream_options") or {}).get("include_usage") and reply.usage is not None:
            tail += b"data: " + orjson.dumps({**envelope, "choices": [], "usage": reply.usage}) + b"\n\n"
        await send({"type": "http.response.body", "body": tail + _DONE})

    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await _read_json(receive)
        model, base_model, faults = self._accept(scope, request)
        if faults.hang:
            return await _wait_for_disconnect(receive)
        await _sleep_ms(faults.latency)
        rejection = _fault_rejection(faults, {}, base_model)
        if rejection is not None:
            raise rejection
        if faults.html:
            return await _send_body(send, 200, _HTML_PAGE, b"text/html; charset=utf-8")
        if faults.malformed:
            return await _send_body(send, 200, _MALFORMED_JSON)
        if faults.drop is not None:
            return await _cut_connection(send, receive)
        await _send_body(send, 200, orjson.dumps(embeddings_answer(request, model)))

    async def _responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        """OpenAI's Responses API, natively: the same replies and faults as chat, in Response objects and events."""
        request = await _read_json(receive)
        model, base_model, faults = self._accept(scope, request)
        self._responses_requests[base_model] = self._responses_requests.get(base_model, 0) + 1
        if faults.hang:
            return await _wait_for_disconnect(receive)
        as_chat = _responses_as_chat(request)
        rejection = _fault_rejection(faults, as_chat, base_model)
        streaming = request.get("stream") is True and rejection is None and not faults.html
        if not streaming:
            await _sleep_ms(faults.latency)
        if rejection is not None:
            raise rejection
        if faults.html:
            return await _send_body(send, 200, _HTML_PAGE, b"text/html; charset=utf-8")
        call_number = next(self._call_numbers)
        reply = _garbled(_reply(as_chat, base_model, call_number, faults.huge), faults)
        response = _response_object(request, model, call_number, reply)
        if streaming:
            return await _responses_stream(response, reply, faults, send, receive)
        if faults.malformed:
            return await _send_body(send, 200, _MALFORMED_JSON)
        if faults.drop is not None:
            return await _cut_connection(send, receive)
        await _send_body(send, 200, orjson.dumps(response))

    async def _last(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_body(send, 200, orjson.dumps(self._last_requests))

    async def _stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        payload = {"requests": self._requests, "total": sum(self._requests.values()),
                   "responses_requests": self._responses_requests}
        await _send_body(send, 200, orjson.dumps(payload))

    async def _set_fault(self, scope: Scope, receive: Receive, send: Send) -> None:
        payload = await _read_json(receive)
        model, fault = payload.get("model"), payload.get("fault") or ""
        if model not in self._models or not isinstance(fault, str):
            raise SimulatedError(400, 'Expected {"model": <known model>, "fault": <fault spec>}.')
        if fault:
            parse_faults((fault,))  # reject a bad spec now rather than on every later request
            self._fault_table[model] = fault
        else:
            self._fault_table.pop(model, None)
        await _send_body(send, 200, orjson.dumps({"faults": self._fault_table}))

    async def _clear_faults(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._fault_table.clear()
        await _send_body(send, 200, orjson.dumps({"faults": self._fault_table}))

    async def _add_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        names = (await _read_json(receive)).get("models")
        if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
            raise SimulatedError(400, 'Expected {"models": [<name>, ...]}.')
        self._register_models(names)
        await _send_body(send, 200, self._models_body)

    async def _reset(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._fault_table.clear()
        self._requests.clear()
        self._last_requests.clear()
        self._responses_requests.clear()
        await _send_body(send, 200, orjson.dumps({"faults": {}, "requests": {}}))


_REASONING_TOKENS = {"minimal": 2, "low": 4, "medium": 8, "high": 16}


def _responses_as_chat(request: dict[str, Any]) -> dict[str, Any]:
    """A Responses request read as the chat request `_reply` answers (instructions first, as a system message)."""
    items = request.get("input")
    if items is None and request.get("previous_response_id"):
        items = ""
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise SimulatedError(400, "`input` must be a string or a list of items.", param="input")
    messages = [{"role": "system", "content": request["instructions"]}] if request.get("instructions") else []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                content = [{"type": "text", "text": part.get("text", "")} for part in content
                           if isinstance(part, dict) and part.get("type") in ("input_text", "output_text")]
            messages.append({"role": item.get("role"), "content": content})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": item.get("output") if isinstance(item.get("output"), str) else ""})
    tools = request.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise SimulatedError(400, "`tools` must be a list.", param="tools")
    choice = request.get("tool_choice")
    text_format = (request.get("text") or {}).get("format") if isinstance(request.get("text"), dict) else None
    return {
        "messages": messages,
        "tools": [{"type": "function", "function": {"name": tool.get("name")}} for tool in tools or ()
                  if isinstance(tool, dict) and tool.get("type") == "function"],
        "tool_choice": {"function": {"name": choice.get("name")}} if isinstance(choice, dict) else choice,
        "response_format": text_format if isinstance(text_format, dict) else None,
        "max_tokens": request.get("max_output_tokens"),
        "stream": request.get("stream"),
    }


def _response_object(request: dict[str, Any], model: str, call_number: int, reply: Reply) -> dict[str, Any]:
    reasoning = request.get("reasoning") if isinstance(request.get("reasoning"), dict) else {}
    reasoning_tokens = _REASONING_TOKENS.get(reasoning.get("effort"), 0)
    output: list[dict[str, Any]] = []
    if reasoning_tokens:
        output.append({"id": f"rs_sim_{call_number}", "type": "reasoning", "summary": []})
    if reply.tool_call:
        function = reply.tool_call["function"]
        output.append({"id": f"fc_sim_{call_number}", "type": "function_call", "status": "completed",
                       "call_id": reply.tool_call["id"], "name": function["name"], "arguments": function["arguments"]})
    else:
        output.append({"id": f"msg_sim_{call_number}", "type": "message", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": reply.content, "annotations": [], "logprobs": []}]})
    usage = None
    if reply.usage is not None:
        prompt, completion = reply.usage.get("prompt_tokens"), reply.usage.get("completion_tokens")
        if isinstance(completion, int) and reasoning_tokens:
            completion += reasoning_tokens
        usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": completion,
                 "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
                 "total_tokens": prompt + completion if isinstance(prompt, int) and isinstance(completion, int) else None}
    incomplete = reply.finish_reason == "length"
    return {
        "id": f"resp_sim_{call_number}", "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed", "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": request.get("instructions"), "max_output_tokens": request.get("max_output_tokens"),
        "model": model, "output": output, "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"), "store": request.get("store", True),
        "reasoning": {"effort": reasoning.get("effort"), "summary": None}, "temperature": request.get("temperature"),
        "text": request.get("text") or {"format": {"type": "text"}}, "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [], "top_p": request.get("top_p"), "truncation": "disabled",
        "usage": usage, "metadata": request.get("metadata") or {},
    }


async def _responses_stream(response: dict[str, Any], reply: Reply, faults: Faults, send: Send,
                            receive: Receive) -> None:
    """The Responses events of `response`: created, the output items with their deltas, then the final state."""
    sequence = itertools.count()

    def event(kind: str, **fields: Any) -> bytes:
        payload = orjson.dumps({"type": kind, "sequence_number": next(sequence), **fields})
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"

    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    head = event("response.created", response=opening) + event("response.in_progress", response=opening)
    pieces: list[bytes] = []  # content chunks, which drop=N counts
    tail = b""
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            part = item["content"][0]
            text = part["text"]
            deltas = _PIECES.findall(text) if isinstance(text, str) else [text]
            head += event("response.output_item.added", output_index=index,
                          item={**item, "status": "in_progress", "content": []})
            head += event("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                          part={**part, "text": ""})
            pieces += [event("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0,
                             delta=delta, logprobs=[]) for delta in deltas]
            tail += event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                          text=text, logprobs=[])
            tail += event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                          part=part)
        elif item["type"] == "function_call":
            head += event("response.output_item.added", output_index=index,
                          item={**item, "status": "in_progress", "arguments": ""})
            pieces.append(event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                delta=item["arguments"]))
            tail += event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                          name=item["name"], arguments=item["arguments"])
        else:
            head += event("response.output_item.added", output_index=index, item=item)
        tail += event("response.output_item.done", output_index=index, item=item)
    tail += event(f"response.{response['status']}", response=response)

    await send(_EVENT_STREAM_START)
    await _sleep_ms(faults.latency)
    if faults.malformed:
        return await send({"type": "http.response.body", "body": _MALFORMED_EVENT})
    await send({"type": "http.response.body", "body": head, "more_body": True})
    for index, piece in enumerate(pieces):
        if faults.drop is not None and index >= faults.drop:
            return await _cut_connection(send, receive)
        await _sleep_ms(faults.chunk_delay)
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    if faults.drop is not None:
        return await _cut_connection(send, receive)
    await _sleep_ms(faults.chunk_delay)
    await send({"type": "http.response.body", "body": tail})


def create_app() -> Simulator:
    """uvicorn factory, so every worker process builds its own app from the environment."""
    names = [name for name in os.environ.get(MODELS_ENV, "").split(",") if name]
    return Simulator(names or None)


def _model_list(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Shared by the CLI below and `manage.py simulate_upstream`."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--models", type=_model_list, default=None, help=f"comma-separated (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--workers", type=int, default=1, help="more than 1: counters and faults are per worker")


def run(host: str = "127.0.0.1", port: int = 9100, models: Sequence[str] | None = None, workers: int = 1) -> None:
    if models:
        os.environ[MODELS_ENV] = ",".join(models)
    uvicorn.run("generation.simulator:create_app", factory=True, host=host, port=port, workers=workers, **UVICORN_OPTIONS)


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m generation.simulator", description=__doc__.splitlines()[0])
    add_arguments(cli)
    arguments = cli.parse_args()
    run(host=arguments.host, port=arguments.port, models=arguments.models, workers=arguments.workers)
