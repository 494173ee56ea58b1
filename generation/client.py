"""The LLM client: the only module that imports openai.

Every upstream is called through the openai SDK's async client on its aiohttp transport (plain httpx's
pool collapses at hundreds of requests in flight). The hub passes bytes through: it asks the SDK for
the raw HTTP response, reads at most `MAX_RESPONSE_BYTES`, and parses only what it must (usage).
Clients are pooled per event loop and upstream, never built per request. Failures are mapped onto a
small typed set: retryable ones let the caller fall back to another model, final ones do not. A model served on
the Responses API (`model.api`) is called on `/responses`: chat requests to it are translated both ways
(`responses_bridge`), Responses requests pass through.
"""

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import orjson
from django.conf import settings

from generation import responses_bridge as bridge
from registry.selectors import ModelSpec

MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# Idle connections are dropped after 4 s: servers commonly close them after 5 s (uvicorn's default), and a
# request sent on a connection the server is closing fails as "unreachable" with no byte answered.
_LIMITS = httpx2.Limits(max_connections=2048, max_keepalive_connections=512, keepalive_expiry=4)


class UpstreamError(Exception):
    """An upstream failure. `message` is generic: never the upstream's body, never a key."""

    retryable = True
    kind = "upstream_error"
    status = 502

    def __init__(self, message: str, *, upstream_status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.upstream_status = upstream_status
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    kind = "timeout"
    status = 504


class UpstreamUnavailable(UpstreamError):
    kind = "unavailable"
    status = 502


class UpstreamRateLimited(UpstreamError):
    kind = "rate_limited"
    status = 429


class UpstreamBadResponse(UpstreamError):
    kind = "bad_response"
    status = 502


class UpstreamRejected(UpstreamError):
    """400/422 from the upstream: the request itself is wrong; another model would refuse it too. Carries the
    upstream's own message, param and code (scrubbed and capped, see `upstream_error_details`), so the client can
    fix its request."""

    retryable = False
    kind = "bad_request"
    status = 400

    def __init__(self, message: str, *, upstream_status: int | None = None, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, upstream_status=upstream_status)
        self.param = param
        self.code = code
        if upstream_status == 422:
            self.status = 422


class UpstreamMisconfigured(UpstreamError):
    """401/403/404 from the upstream: the model's key, URL or name is wrong. An operator must act."""

    retryable = False
    kind = "misconfigured"
    status = 502


@dataclass(slots=True)
class Completion:
    raw: bytes
    data: dict[str, Any]
    latency_ms: float


@dataclass(slots=True)
class StreamHandle:
    """An upstream stream whose status is known to be 2xx; iterate `chunks()` for its raw bytes."""

    response: Any
    first_byte_ms: float
    idle_timeout: float
    max_bytes: int = MAX_RESPONSE_BYTES
    received: int = field(default=0)

    async def chunks(self) -> AsyncIterator[bytes]:
        iterator = self.response.aiter_bytes().__aiter__()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise UpstreamTimeout("The upstream stopped sending.") from None
                except (httpx2.HTTPError, openai.APIError, OSError) as error:
                    raise UpstreamUnavailable("The upstream connection broke.") from error
                self.received += len(chunk)
                if self.received > self.max_bytes:
                    raise UpstreamBadResponse("The upstream response was too large.")
                yield chunk
        finally:
            await self.close()

    async def close(self) -> None:
        await self.response.aclose()


@dataclass(slots=True)
class _Upstream:
    """One upstream's pooled SDK client, its HTTP client (the SDK's aiohttp transport), and what every
    request to it shares, prepared once."""

    sdk: openai.AsyncOpenAI
    http: httpx2.AsyncClient
    url: httpx2.URL | str  # parsed once (a request given a string parses it again: about 30 µs)
    responses_url: httpx2.URL | str
    headers: dict[str, str]
    extensions: dict[str, Any]


_upstreams: dict[tuple, _Upstream] = {}
# The upstream of each model object of the snapshots, per event loop: (model, loop, upstream) by id(model). A model
# object never changes (a registry change builds new ones), so its `_client_key` need not be computed again.
_upstream_of: dict[int, tuple[ModelSpec, asyncio.AbstractEventLoop, _Upstream]] = {}
_UPSTREAM_OF_MAX = 4096  # model objects of snapshots that are gone are forgotten when it fills up


def _parsed(url: str) -> httpx2.URL | str:
    """`url` parsed once for every request to it; as it is when it does not parse (the request then fails as
    before, on the request path)."""
    try:
        return httpx2.URL(url)
    except Exception:  # any failure: left to the request, which raises the same error there
        return url


def header_value_valid(value: str) -> bool:
    """Whether HTTP can carry `value` in a header as it is: printable ASCII (no CR, LF or other control
    characters, which would also let a value inject headers)."""
    return value.isascii() and value.isprintable()


def _headers_checked(model: ModelSpec, headers: dict[str, str]) -> None:
    # Keys and headers are checked when saved; one stored before (or through another path) must fail as the
    # model's misconfiguration, not as an error of ours.
    if not all(header_value_valid(value) for value in headers.values()):
        raise UpstreamMisconfigured("The model's key or headers contain characters HTTP headers cannot carry.")


def _client_key(model: ModelSpec, loop: asyncio.AbstractEventLoop) -> tuple:
    key_digest = hashlib.sha256(model.api_key.encode()).hexdigest()
    # The timeouts are the client's too (its transport's read timeout): a changed one needs a new client.
    return (id(loop), model.base_url, key_digest, tuple(sorted(model.headers.items())), model.owner_id is not None,
            model.timeout, model.connect_timeout)


def _upstream_for(model: ModelSpec) -> _Upstream:
    loop = asyncio.get_running_loop()
    known = _upstream_of.get(id(model))
    if known is not None and known[0] is model and known[1] is loop:
        return known[2]
    upstream = _upstream_pooled(model, loop)
    if len(_upstream_of) >= _UPSTREAM_OF_MAX:
        _upstream_of.clear()
    _upstream_of[id(model)] = (model, loop, upstream)
    return upstream


def _upstream_pooled(model: ModelSpec, loop: asyncio.AbstractEventLoop) -> _Upstream:
    key = _client_key(model, loop)
    upstream = _upstreams.get(key)
    if upstream is None:
        http = _http_client(model)
        api_key = model.api_key or "missing-key"
        sdk = openai.AsyncOpenAI(base_url=model.base_url, api_key=api_key, max_retries=0,
                                 default_headers=dict(model.headers), http_client=http)
        headers = {**model.headers, "Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        _headers_checked(model, headers)  # once per pooled upstream, not per request
        timeout = httpx2.Timeout(model.timeout, connect=model.connect_timeout)
        upstream = _Upstream(sdk=sdk, http=http, url=_parsed(model.base_url + "/chat/completions"),
                             responses_url=_parsed(model.base_url + "/responses"), headers=headers,
                             extensions={"timeout": timeout.as_dict()})
        _upstreams[key] = upstream
    return upstream


def client_for(model: ModelSpec) -> openai.AsyncOpenAI:
    """The pooled SDK client for the model's upstream on the running loop."""
    return _upstream_for(model).sdk


def _http_client(model: ModelSpec) -> httpx2.AsyncClient:
    timeout = httpx2.Timeout(model.timeout, connect=model.connect_timeout)
    if model.owner_id is not None:
        # A user's own endpoint: connect-time SSRF checks, no redirects.
        from registry.ssrf import safe_openai_http_client

        return safe_openai_http_client(timeout=timeout, max_response_bytes=MAX_RESPONSE_BYTES)
    return openai.DefaultAioHttpClient(timeout=timeout, limits=_LIMITS, follow_redirects=False)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def map_status_error(status: int, headers: Any = None) -> UpstreamError:
    if status == 429:
        return UpstreamRateLimited("The upstream is rate limiting.", upstream_status=status,
                                   retry_after=_retry_after(headers))
    if status in (401, 403):
        return UpstreamMisconfigured("The upstream rejected the model's credentials.", upstream_status=status)
    if status == 404:
        return UpstreamMisconfigured("The upstream does not know this model.", upstream_status=status)
    if status in (400, 413, 422):
        return UpstreamRejected("The upstream rejected the request.", upstream_status=status)
    if status == 408:
        return UpstreamTimeout("The upstream timed out.", upstream_status=status)
    return UpstreamUnavailable(f"The upstream failed (HTTP {status}).", upstream_status=status)


UPSTREAM_ERROR_READ_BYTES = 64 * 1024
UPSTREAM_MESSAGE_MAX = 500
_CREDENTIALED_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@]+@")
_SECRET_QUERY = re.compile(r"(?i)\b((?:api[_-]?key|key|token|access_token|secret|password|sig|signature)=)[^\s&\"']+")
_SECRET_TOKEN = re.compile(r"(?i)\b(?:bearer\s+\S+|(?:sk|lh|pk|rk|ak)-[a-z0-9_\-]{6,}|[a-z0-9_\-+/=]{32,})")
_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def upstream_text_scrub(text: str, *, secrets: tuple[str, ...] = (), limit: int = UPSTREAM_MESSAGE_MAX) -> str:
    """`text` fit to show a client: the model's own key and anything that looks like a key or a credentialed URL
    replaced by `[redacted]`, control characters dropped, at most `limit` characters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _CREDENTIALED_URL.sub(r"\1[redacted]@", text)
    text = _SECRET_QUERY.sub(r"\1[redacted]", text)
    text = _SECRET_TOKEN.sub("[redacted]", text)
    text = "".join(char if char.isprintable() else " " for char in text).strip()
    return text if len(text) <= limit else text[:limit - 1] + "…"


def upstream_error_details(raw: bytes, *, secrets: tuple[str, ...] = ()) -> tuple[str, str | None, str | None]:
    """(message, param, code) of an upstream's OpenAI-shaped error body, scrubbed; a generic message when it
    gives none."""
    try:
        error = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if isinstance(error, str):
        error = {"message": error}
    if not isinstance(error, dict) or not isinstance(error.get("message"), str) or not error["message"].strip():
        return "The upstream rejected the request.", None, None
    message = "The upstream rejected the request: " + upstream_text_scrub(error["message"], secrets=secrets)
    param = error.get("param")
    param = upstream_text_scrub(param, secrets=secrets, limit=100) or None if isinstance(param, str) else None
    code = error.get("code")
    code = code if isinstance(code, str) and _CODE.fullmatch(code) and "[redacted]" not in \
        upstream_text_scrub(code, secrets=secrets) else None
    return message, param, code


async def _rejection(model: ModelSpec, response: Any) -> UpstreamRejected:
    """The upstream's 400/422 with its reason: its body read (at most UPSTREAM_ERROR_READ_BYTES, within 2 s)."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(2):
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= UPSTREAM_ERROR_READ_BYTES:
                    break
    except (TimeoutError, httpx2.HTTPError, openai.APIError, OSError):
        pass
    finally:
        await response.aclose()
    secrets = (model.api_key, *model.headers.values())
    message, param, code = upstream_error_details(b"".join(chunks)[:UPSTREAM_ERROR_READ_BYTES], secrets=secrets)
    return UpstreamRejected(message, upstream_status=response.status_code, param=param, code=code)


def map_exception(error: BaseException) -> UpstreamError:
    if isinstance(error, UpstreamError):
        return error
    if isinstance(error, openai.APIStatusError):
        return map_status_error(error.status_code, error.response.headers)
    # The transport's own error decides, not the SDK's wrapping of it: the aiohttp transport reports a
    # dropped connection (ServerDisconnectedError) as httpx's ConnectTimeout, which is no timeout at all.
    cause = error
    while isinstance(cause, openai.APIError | httpx2.TransportError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, TimeoutError | openai.APITimeoutError | httpx2.TimeoutException):
        return UpstreamTimeout("The upstream did not answer in time.")
    return UpstreamUnavailable("The upstream could not be reached.")


def upstream_body(model: ModelSpec, body: dict[str, Any]) -> bytes:
    body = {**body, "model": model.upstream_model}
    try:
        return orjson.dumps(body)
    except TypeError:  # an integer beyond 64 bits (valid JSON): the upstream judges it, as any other value
        return json.dumps(body, ensure_ascii=False).encode()


async def _open(model: ModelSpec, body: dict[str, Any], *, first_byte_timeout: float, api: str = bridge.CHAT,
                path: str | None = None) -> Any:
    """Sends the request and waits for the response headers (the first byte).

    The request goes out through the SDK client's own HTTP client, prepared once per upstream: the SDK's
    per-request layer (options, URL merging, pydantic) cost about 1.1 ms of CPU a request, a third of
    the hub's time (py-spy, `make bench`), and does nothing a pass-through needs.
    """
    upstream = _upstream_for(model)
    url = upstream.responses_url if api == bridge.RESPONSES else upstream.url
    if path is not None:
        url = model.base_url + path
    request = httpx2.Request("POST", url, headers=upstream.headers, content=upstream_body(model, body),
                             extensions=upstream.extensions)
    async with asyncio.timeout(first_byte_timeout):
        response = await upstream.http.send(request, stream=True)
    if response.status_code in (400, 422):
        raise await _rejection(model, response)
    if response.status_code >= 300:
        await response.aclose()
        raise map_status_error(response.status_code, response.headers)
    return response


async def _read_capped(response: Any, *, timeout: float) -> bytes:
    """The whole body, at most MAX_RESPONSE_BYTES: one read when the upstream declared a length."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit():
        if int(declared) > MAX_RESPONSE_BYTES:
            await response.aclose()
            raise UpstreamBadResponse("The upstream response was too large.")
        try:
            return await response.aread()
        finally:
            await response.aclose()
    handle = StreamHandle(response=response, first_byte_ms=0.0, idle_timeout=timeout)
    return b"".join([chunk async for chunk in handle.chunks()])


async def _post(model: ModelSpec, body: dict[str, Any], *, timeout: float, api: str = bridge.CHAT,
                path: str | None = None) -> tuple[dict[str, Any], bytes, float]:
    """POSTs a non-streaming request to the model's `api` (or to `path` under its base URL): its JSON object, its
    bytes and when it started; `timeout` bounds the whole call."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            response = await _open(model, body, first_byte_timeout=timeout, api=api, path=path)
            raw = await _read_capped(response, timeout=timeout)
    except (openai.APIError, httpx2.HTTPError, OSError, TimeoutError) as error:
        raise map_exception(error) from error
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponse("The upstream answered with something that is not JSON.") from None
    if not isinstance(data, dict):
        raise UpstreamBadResponse("The upstream answered with an unexpected JSON shape.")
    return data, raw, started


async def chat_completion(model: ModelSpec, body: dict[str, Any], *, timeout: float) -> Completion:
    """A non-streaming chat completion; `timeout` bounds the whole call. A model served on the Responses API
    is asked in its words and its answer translated back (`responses_bridge`)."""
    if model.api == bridge.RESPONSES:
        response = await responses_create(model, bridge.chat_request_to_responses(body), timeout=timeout)
        data = bridge.response_to_chat(response.data)
        return Completion(raw=orjson.dumps(data), data=data, latency_ms=response.latency_ms)
    data, raw, started = await _post(model, body, timeout=timeout, api=bridge.CHAT)
    if not isinstance(data.get("choices"), list) or not all(_choice_valid(choice) for choice in data["choices"]):
        raise UpstreamBadResponse("The upstream answered with an unexpected JSON shape.")
    return Completion(raw=raw, data=data, latency_ms=(time.perf_counter() - started) * 1000)


async def responses_create(model: ModelSpec, body: dict[str, Any], *, timeout: float) -> Completion:
    """A non-streaming Responses request to a model served on that API (its answer passed on as it is)."""
    data, raw, started = await _post(model, body, timeout=timeout, api=bridge.RESPONSES)
    output = data.get("output")
    if not isinstance(output, list) or not all(isinstance(item, dict) for item in output):
        raise UpstreamBadResponse("The upstream answered with an unexpected JSON shape.")
    if data.get("status") == "failed":
        raise UpstreamUnavailable("The upstream failed to answer.")
    if not all(isinstance(part, dict) and isinstance(part.get("text", ""), str) for item in output
               if item.get("type") == "message" for part in item.get("content") or ()):
        raise UpstreamBadResponse("The upstream answered with content that is not text.")
    return Completion(raw=raw, data=data, latency_ms=(time.perf_counter() - started) * 1000)


async def embeddings(model: ModelSpec, body: dict[str, Any], *, timeout: float) -> Completion:
    """An embeddings call (`POST /embeddings`); `timeout` bounds the whole call. The answer must be a list of
    embeddings."""
    data, raw, started = await _post(model, body, timeout=timeout, path="/embeddings")
    if not isinstance(data.get("data"), list) or not all(
            isinstance(item, dict) and isinstance(item.get("embedding"), list | str) for item in data["data"]):
        raise UpstreamBadResponse("The upstream answered with an unexpected JSON shape.")
    return Completion(raw=raw, data=data, latency_ms=(time.perf_counter() - started) * 1000)


def _choice_valid(choice: Any) -> bool:
    """A choice whose message, if any, is an object whose content, if any, is text."""
    if not isinstance(choice, dict):
        return False
    message = choice.get("message")
    if message is None:
        return True
    return isinstance(message, dict) and isinstance(message.get("content"), str | None)


async def _open_stream(model: ModelSpec, body: dict[str, Any], *, first_byte_timeout: float, idle_timeout: float,
                       api: str) -> StreamHandle:
    started = time.perf_counter()
    try:
        response = await _open(model, body, first_byte_timeout=first_byte_timeout, api=api)
    except (openai.APIError, httpx2.HTTPError, OSError, TimeoutError) as error:
        raise map_exception(error) from error
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" not in content_type:
        await response.aclose()
        raise UpstreamBadResponse("The upstream did not answer with an event stream.")
    return StreamHandle(response=response, first_byte_ms=(time.perf_counter() - started) * 1000,
                        idle_timeout=idle_timeout)


async def chat_completion_stream(model: ModelSpec, body: dict[str, Any], *, first_byte_timeout: float,
                                 idle_timeout: float) -> StreamHandle:
    """Opens a streaming chat completion; raises before any byte is handed on if the upstream fails. A model
    served on the Responses API is asked in its words: its handle yields Responses events, which
    `services.ChatFromResponsesStream` turns into chat chunks."""
    if model.api == bridge.RESPONSES:
        return await responses_stream(model, bridge.chat_request_to_responses(body),
                                      first_byte_timeout=first_byte_timeout, idle_timeout=idle_timeout)
    return await _open_stream(model, body, first_byte_timeout=first_byte_timeout, idle_timeout=idle_timeout,
                              api=bridge.CHAT)


async def responses_stream(model: ModelSpec, body: dict[str, Any], *, first_byte_timeout: float,
                           idle_timeout: float) -> StreamHandle:
    """Opens a streaming Responses request to a model served on that API."""
    return await _open_stream(model, {**body, "stream": True}, first_byte_timeout=first_byte_timeout,
                              idle_timeout=idle_timeout, api=bridge.RESPONSES)


def default_timeouts(model: ModelSpec) -> tuple[float, float]:
    """(first byte, idle between chunks) for a model."""
    config = settings.LLMHUB
    return (min(model.timeout, config.get("FIRST_BYTE_TIMEOUT_SECONDS", model.timeout)),
            config.get("STREAM_IDLE_TIMEOUT_SECONDS", model.timeout))


async def clients_close() -> None:
    loop = asyncio.get_running_loop()
    for model_id in [model_id for model_id, (_, known, _) in _upstream_of.items() if known is loop]:
        del _upstream_of[model_id]
    for key in [key for key in _upstreams if key[0] == id(loop)]:
        await _upstreams.pop(key).sdk.close()


# --- Connectivity checks (sync: they run in Celery tasks) -------------------------------------------------

@dataclass(slots=True)
class Probe:
    """The upstream's answer to one check request. `body` is kept for a 2xx only (capped): an error body is
    dropped unread, so no upstream message can travel further."""

    status: int
    body: bytes
    content_type: str
    latency_ms: float


def _error_body_dropped(response: httpx2.Response) -> None:
    # The SDK reads an error body to build its exception; give it an empty one and release the connection.
    if response.status_code >= 300:
        original = response.stream
        response.stream = httpx2.ByteStream(b"")
        original.close()


def probe_client(model: ModelSpec, *, timeout: float, max_response_bytes: int) -> openai.OpenAI:
    """A one-off sync SDK client for connectivity checks (use it as a context manager): no retries, no
    redirects; a user's endpoint goes through the SSRF-safe client (connect-time address checks, size cap).
    Raises UpstreamMisconfigured for a key or header HTTP cannot carry."""
    _headers_checked(model, {**model.headers, "Authorization": f"Bearer {model.api_key or 'missing-key'}"})
    http_timeout = httpx2.Timeout(timeout, connect=min(model.connect_timeout, timeout))
    if model.owner_id is not None:
        from registry.ssrf import safe_sync_http_client

        http_client = safe_sync_http_client(timeout=http_timeout, max_response_bytes=max_response_bytes)
    else:
        http_client = httpx2.Client(timeout=http_timeout, follow_redirects=False)
    http_client.event_hooks = {**http_client.event_hooks,
                               "response": [*http_client.event_hooks["response"], _error_body_dropped]}
    return openai.OpenAI(base_url=model.base_url, api_key=model.api_key or "missing-key", max_retries=0,
                         default_headers=dict(model.headers), http_client=http_client)


def probe(sdk: openai.OpenAI, path: str, *, body: dict[str, Any] | None = None, deadline: float,
          max_response_bytes: int) -> Probe:
    """GET `path` (or POST `body` to it) and read the answer before `deadline` (a time.monotonic() value).

    An HTTP error status is an answer, not an exception. Raises UpstreamTimeout, UpstreamUnavailable (the
    cause chain tells an SSRF refusal) or UpstreamBadResponse (body over `max_response_bytes`) otherwise."""
    started = time.monotonic()
    options: Any = {"timeout": max(0.001, deadline - started)}
    try:
        if body is None:
            response = sdk.get(path, cast_to=httpx2.Response, options=options, stream=True, stream_cls=None)
        else:
            response = sdk.post(path, cast_to=httpx2.Response, body=body, options=options, stream=True, stream_cls=None)
    except openai.APIStatusError as error:
        return Probe(error.status_code, b"", "", (time.monotonic() - started) * 1000)
    except (openai.APITimeoutError, httpx2.TimeoutException) as error:
        # The sync transport's timeouts are real ones (unlike the aiohttp adapter's, see map_exception).
        raise UpstreamTimeout("The upstream did not answer in time.") from error
    except (openai.APIError, httpx2.HTTPError, OSError, TimeoutError) as error:
        raise map_exception(error) from error
    chunks, received = [], 0
    try:
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received > max_response_bytes:
                raise UpstreamBadResponse("The upstream response was too large.")
            if time.monotonic() > deadline:
                raise UpstreamTimeout("The upstream did not answer in time.")
            chunks.append(chunk)
    except httpx2.TimeoutException as error:
        raise UpstreamTimeout("The upstream did not answer in time.") from error
    except (httpx2.HTTPError, OSError) as error:
        from registry.ssrf import ResponseTooLarge

        if isinstance(error, ResponseTooLarge):
            raise UpstreamBadResponse("The upstream response was too large.") from error
        raise map_exception(error) from error
    finally:
        response.close()
    return Probe(response.status_code, b"".join(chunks), response.headers.get("content-type", ""),
                 (time.monotonic() - started) * 1000)
