"""Text generation: one pipeline for /v1, /api/generate and translation.

resolve model → authorise → reserve → call upstream (falling back on retryable errors) → settle → log.
Nothing here holds a thread or a database connection while an upstream answers.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import orjson
from django.conf import settings

from generation import client
from generation.routing import candidate_models, earliest_retry
from llmhub.errors import ApplicationError, NotFound
from registry.health import health_note, unhealthy_keys
from registry.selectors import ModelSpec, Registry, TierSpec, check_model_access, get_default_model, get_model_by_id
from usage.quotas import Reservation, quota_reserve, quota_settle
from usage.services import (
    UsageEntry,
    tokens_count_messages,
    tokens_count_text,
    tokens_encoding,
    tokens_estimate_messages,
    usage_cost,
    usage_record,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Models cooling down after an upstream 429: model id → monotonic time it may be tried again.
_cooled_until: dict[str, float] = {}


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: int | None
    api_key_id: int | None
    tier: TierSpec


@dataclass(slots=True)
class Attempt:
    model: str
    outcome: str
    latency_ms: float
    upstream_status: int | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "outcome": self.outcome, "latency_ms": round(self.latency_ms, 1),
                "upstream_status": self.upstream_status, "message": self.message}


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False


@dataclass(slots=True)
class ChatOutcome:
    request_id: str
    model: ModelSpec
    raw: bytes
    data: dict[str, Any]
    attempts: list[Attempt]
    usage: Usage
    cost: Decimal
    latency_ms: float

    @property
    def text(self) -> str:
        message = (self.data.get("choices") or [{}])[0].get("message") or {}
        return message.get("content") or ""


class GenerationFailed(ApplicationError):
    """Every candidate model failed (or the one that answered refused the request)."""

    def __init__(self, message: str, *, status: int, code: str, attempts: list[Attempt],
                 retry_after: float | None = None) -> None:
        super().__init__(message, status=status, code=code, extra={"attempts": [a.as_dict() for a in attempts]})
        self.attempts = attempts
        self.retry_after = retry_after


def _config(name: str) -> Any:
    return settings.LLMHUB[name]


def request_id_new() -> str:
    return "req_" + uuid.uuid4().hex


def model_resolve(*, caller: Caller, registry: Registry, model_id: str | None = None,
                  provider: str | None = None, preferred_id: str | None = None) -> ModelSpec:
    """The explicit model, else the legacy provider's model, else the user's preference, else the tier default.

    An explicit model above the caller's tier is refused (403) before any upstream is called.
    """
    if model_id:
        model = get_model_by_id(model_id, registry=registry, owner_id=caller.user_id)
        check_model_access(caller.tier, model)
        return model
    if provider:
        return _legacy_provider_model(caller=caller, registry=registry, provider=provider)
    if preferred_id:
        model = registry.own_models(caller.user_id).get(preferred_id) or registry.models.get(preferred_id)
        if model is not None and model.enabled and model.allows(caller.tier):
            return model
    model = get_default_model(caller.tier, registry=registry)
    if model is None:
        raise ApplicationError("No model is available to your tier.", status=503, code="no_model_available")
    return model


def _legacy_provider_model(*, caller: Caller, registry: Registry, provider: str) -> ModelSpec:
    """Old clients named a provider ("openai") instead of a model: its default or first model the tier may use."""
    default = get_default_model(caller.tier, registry=registry)
    if default is not None and default.provider == provider:
        return default
    for model in registry.models.values():
        if model.provider == provider and model.enabled and model.allows(caller.tier):
            return model
    raise NotFound(f"No model of provider '{provider}' is available to your tier.", code="model_not_found")


def usage_from(data: dict[str, Any] | None) -> tuple[int, int] | None:
    usage = (data or {}).get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        return usage["prompt_tokens"], int(usage.get("completion_tokens") or 0)
    return None


def estimated_input(body: dict[str, Any]) -> int:
    return tokens_count_messages(body.get("messages") or [])


def _note_failure(model: ModelSpec, error: client.UpstreamError) -> None:
    if isinstance(error, client.UpstreamRateLimited):
        seconds = error.retry_after if error.retry_after is not None else _config("DEFAULT_COOLDOWN_SECONDS")
        _cooled_until[model.key] = time.monotonic() + seconds
    elif error.retryable or isinstance(error, client.UpstreamMisconfigured):
        health_note(model, ok=False)


def _failure(attempts: list[Attempt], last: client.UpstreamError | None, candidates: list[str]) -> GenerationFailed:
    retry_after = earliest_retry(model_keys=candidates, cooled_until=_cooled_until, now=time.monotonic())
    if last is None:
        if retry_after is not None:
            return GenerationFailed("Every model for this request is rate limited.", status=429, code="rate_limited",
                                    attempts=attempts, retry_after=retry_after)
        return GenerationFailed("No model could be tried in time.", status=503, code="no_model_available",
                                attempts=attempts)
    if not last.retryable:
        return GenerationFailed(last.message, status=last.status, code=last.kind, attempts=attempts)
    if all(a.outcome == client.UpstreamRateLimited.kind for a in attempts):
        return GenerationFailed("Every model for this request is rate limited.", status=429, code="rate_limited",
                                attempts=attempts, retry_after=retry_after or last.retry_after)
    if isinstance(last, client.UpstreamTimeout):
        return GenerationFailed("Every model timed out.", status=504, code="upstream_timeout", attempts=attempts)
    return GenerationFailed("Every model failed.", status=502, code="upstream_failed", attempts=attempts)


@dataclass(slots=True)
class _Run:
    """One request's state, from resolution to the usage row."""

    caller: Caller
    endpoint: str
    requested: str
    primary: ModelSpec
    candidates: list[ModelSpec]
    request_id: str = field(default_factory=request_id_new)
    started: float = field(default_factory=time.perf_counter)
    deadline: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    reservation: Reservation | None = None
    cost: Decimal = Decimal(0)

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def tried_keys(self) -> list[str]:
        """The primary and its fallbacks, cooling down or not (for the Retry-After of a 429)."""
        return [self.primary.key, *self.primary.fallbacks]

    def record(self, *, model: ModelSpec | None, usage: Usage, status: str, http_status: int, error_type: str = "",
               streamed: bool = False, ttft_ms: float | None = None) -> Decimal:
        cost = Decimal(0) if model is None else usage_cost(
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            input_price_per_million=model.input_price_per_million,
            output_price_per_million=model.output_price_per_million)
        usage_record(UsageEntry(
            request_id=self.request_id, user_id=self.caller.user_id, api_key_id=self.caller.api_key_id,
            endpoint=self.endpoint, requested_model=self.requested, answered_model=model.id if model else "",
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, tokens_estimated=usage.estimated,
            cost=cost, latency_ms=(time.perf_counter() - self.started) * 1000, ttft_ms=ttft_ms, status=status,
            http_status=http_status, error_type=error_type, attempts=len(self.attempts), streamed=streamed,
            tier=self.caller.tier.slug,
        ))
        self.cost = cost
        return cost


_tokenizer_loaded = False


async def tokenizer_load() -> None:
    """Builds tiktoken's vocabulary (about 0.7 s, once per process) in a thread: on the event loop it would
    stall every request in flight."""
    global _tokenizer_loaded
    if not _tokenizer_loaded:
        await asyncio.to_thread(tokens_encoding)
        _tokenizer_loaded = True


async def usage_counted(body: dict[str, Any], answer: str) -> Usage:
    """Counts a request's tokens locally, for an upstream that reported none."""
    await tokenizer_load()
    return Usage(estimated_input(body), tokens_count_text(answer), True)


async def start_run(*, caller: Caller, registry: Registry, body: dict[str, Any], endpoint: str,
                 model_id: str | None, provider: str | None, preferred_id: str | None) -> _Run:
    primary = model_resolve(caller=caller, registry=registry, model_id=model_id, provider=provider,
                            preferred_id=preferred_id)
    candidates = candidate_models(primary=primary, registry=registry, tier=caller.tier,
                                  cooled_until=_cooled_until, now=time.monotonic(), unhealthy=unhealthy_keys())
    run = _Run(caller=caller, endpoint=endpoint, requested=model_id or provider or primary.id, primary=primary,
               candidates=candidates)
    run.deadline = run.started + _config("GENERATION_DEADLINE_SECONDS")
    logger.info("request %s: model %s for user %s (tier %s), candidates %s", run.request_id, primary.id,
                caller.user_id, caller.tier.slug, [m.id for m in candidates])
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    run.reservation = await quota_reserve(user_id=caller.user_id, model_id=primary.id,
                                          tokens=tokens_estimate_messages(body.get("messages") or []) + int(max_tokens))
    return run


async def _first_answer(run: _Run, call: Callable[[ModelSpec, float], Awaitable[T]], *,
                        latency_ms: Callable[[T], float]) -> tuple[ModelSpec, T]:
    """Walks the candidates, calling `call(model, seconds left)`, until one answers; raises GenerationFailed
    when none does. A final error (the request itself is wrong, or a model is misconfigured) stops the walk."""
    last: client.UpstreamError | None = None
    for model in run.candidates:
        remaining = run.remaining()
        if remaining <= 0:
            break
        attempt_started = time.perf_counter()
        try:
            answer = await call(model, remaining)
        except client.UpstreamError as error:
            last = error
            run.attempts.append(Attempt(model.id, error.kind, (time.perf_counter() - attempt_started) * 1000,
                                        error.upstream_status, error.message))
            logger.warning("request %s: model %s failed (%s)", run.request_id, model.id, error.kind)
            _note_failure(model, error)
            if not error.retryable:
                break
            continue
        run.attempts.append(Attempt(model.id, "ok", latency_ms(answer)))
        health_note(model, ok=True)
        return model, answer
    raise _failure(run.attempts, last, run.tried_keys())


async def complete(run: _Run, body: dict[str, Any]) -> tuple[ModelSpec, client.Completion]:
    """One non-streaming completion for the run, from the first candidate that answers."""

    def call(model: ModelSpec, remaining: float) -> Awaitable[client.Completion]:
        return client.chat_completion(model, body, timeout=min(model.timeout, remaining))

    return await _first_answer(run, call, latency_ms=lambda completion: completion.latency_ms)


async def chat(*, caller: Caller, registry: Registry, body: dict[str, Any], endpoint: str,
               model_id: str | None = None, provider: str | None = None, preferred_id: str | None = None) -> ChatOutcome:
    """One non-streaming chat completion request, with fallback, settled and logged exactly once."""
    run = await start_run(caller=caller, registry=registry, body=body, endpoint=endpoint, model_id=model_id,
                       provider=provider, preferred_id=preferred_id)
    usage, model, error = Usage(), None, None
    try:
        model, completion = await complete(run, body)
        counted = usage_from(completion.data)
        if counted is None:
            usage = await usage_counted(body, completion_text(completion.data))
        else:
            usage = Usage(*counted)
    except BaseException as failure:  # a cancelled request (client gone) is settled and logged too
        error = failure
        raise
    finally:
        await asyncio.shield(run_finish(run, model=model, usage=usage, error=error))  # even when cancelled
    return ChatOutcome(request_id=run.request_id, model=model, raw=completion.raw, data=completion.data,
                       attempts=run.attempts, usage=usage, cost=run.cost,
                       latency_ms=(time.perf_counter() - run.started) * 1000)


async def run_finish(run: _Run, *, model: ModelSpec | None, usage: Usage, error: BaseException | None,
                     status: str | None = None, error_type: str | None = None, streamed: bool = False,
                     ttft_ms: float | None = None) -> None:
    """Settles the reservation and writes the request's one usage row (even if settling fails).

    `status` and `error_type` default from `error`: "ok", or "error" with its HTTP status and code (a
    cancelled request, whose client went away, is logged as 499)."""
    try:
        await quota_settle(reservation=run.reservation, used_tokens=usage.input_tokens + usage.output_tokens)
    finally:
        if error_type is None:
            error_type = getattr(error, "code", type(error).__name__) if error else ""
        run.record(model=model, usage=usage, status=status or ("error" if error else "ok"),
                   http_status=getattr(error, "status", 499) if error else 200, error_type=error_type,
                   streamed=streamed, ttft_ms=ttft_ms)


def completion_text(data: dict[str, Any]) -> str:
    choices = data.get("choices") or []
    return "".join(((choice.get("message") or {}).get("content") or "") for choice in choices if isinstance(choice, dict))


class ChatStream:
    """A streaming request whose upstream has answered 2xx. Iterate `events()` for SSE bytes to send;
    it settles and logs exactly once, however the stream ends (done, upstream break, client gone).

    Events are passed on as they came, but each is checked: an event that is not JSON, or an upstream
    that stops before `data: [DONE]`, ends the stream with an error event rather than a silent truncation."""

    def __init__(self, run: _Run, model: ModelSpec, handle: client.StreamHandle, body: dict[str, Any],
                 client_wants_usage: bool) -> None:
        self.run, self.model, self.handle, self.body = run, model, handle, body
        self.client_wants_usage = client_wants_usage
        self.request_id = run.request_id
        self.attempts = run.attempts
        self.usage: Usage | None = None
        self.ttft_ms: float | None = None
        self._text: list[str] = []
        self._done = False
        self._broken: client.UpstreamError | None = None

    async def events(self) -> AsyncIterator[bytes]:
        status, error_type = "partial", "client_disconnected"
        buffer = b""
        chunks = self.handle.chunks()
        try:
            async for chunk in chunks:
                buffer += chunk
                if b"\r" in buffer:  # SSE allows CRLF line ends
                    buffer = buffer.replace(b"\r\n", b"\n")
                *events, buffer = buffer.split(b"\n\n")
                out = b"".join(self._pass(event) for event in events if event)
                if out:
                    if self.ttft_ms is None:
                        self.ttft_ms = (time.perf_counter() - self.run.started) * 1000
                    yield out
                if self._broken is not None:
                    raise self._broken
                if self._done:
                    break
            if not self._done:
                raise client.UpstreamBadResponse("The upstream stream ended before it was complete.")
            status, error_type = "ok", ""
        except client.UpstreamError as error:
            # Bytes already reached the client: no fallback (it would duplicate text). End with an error event.
            error_type = error.kind
            logger.warning("request %s: stream from %s broke (%s)", self.request_id, self.model.id, error.kind)
            yield b"data: " + orjson.dumps({"error": {
                "message": f"The upstream stream broke: {error.message}", "type": "server_error",
                "param": None, "code": error.kind}}) + b"\n\n"
        finally:
            # Shielded: a client that went away cancels this generator, but the upstream must still be
            # closed and the request settled and logged.
            await asyncio.shield(self._finish(chunks, status=status, error_type=error_type))

    async def _finish(self, chunks: AsyncIterator[bytes], *, status: str, error_type: str) -> None:
        try:
            await chunks.aclose()  # also when left early, after [DONE]
            await self.handle.close()  # in case the chunks were never started
        finally:
            self.usage = self.usage or await usage_counted(self.body, "".join(self._text))
            await run_finish(self.run, model=self.model, usage=self.usage, error=None, status=status,
                             error_type=error_type, streamed=True, ttft_ms=self.ttft_ms)

    def _pass(self, event: bytes) -> bytes:
        """The bytes to send on for one upstream event (nothing once the stream is done or broken)."""
        if self._done or self._broken is not None:
            return b""
        if not event.startswith(b"data:"):
            return event + b"\n\n"  # comments, event names
        payload = event[5:].strip()
        if payload == b"[DONE]":
            self._done = True
            return event + b"\n\n"
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._broken = client.UpstreamBadResponse("The upstream sent an event that is not JSON.")
            return b""
        if not isinstance(data, dict):
            self._broken = client.UpstreamBadResponse("The upstream sent an event of an unexpected shape.")
            return b""
        counted = usage_from(data)
        if counted is not None:
            self.usage = Usage(*counted)
            if not data.get("choices") and not self.client_wants_usage:
                return b""
        for choice in data.get("choices") or ():
            if isinstance(choice, dict):
                self._text.append((choice.get("delta") or {}).get("content") or "")
        return event + b"\n\n"



async def chat_stream(*, caller: Caller, registry: Registry, body: dict[str, Any], endpoint: str,
                      model_id: str | None = None, provider: str | None = None,
                      preferred_id: str | None = None) -> ChatStream:
    """Opens a streaming request, falling back while no byte has been sent. Raises GenerationFailed
    (logged) when every candidate fails before streaming."""
    run = await start_run(caller=caller, registry=registry, body=body, endpoint=endpoint, model_id=model_id,
                       provider=provider, preferred_id=preferred_id)
    client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    upstream = {**body, "stream": True, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}

    def open_stream(model: ModelSpec, remaining: float) -> Awaitable[client.StreamHandle]:
        first_byte, idle = client.default_timeouts(model)
        return client.chat_completion_stream(model, upstream, idle_timeout=idle,
                                             first_byte_timeout=min(first_byte, remaining))

    try:
        model, handle = await _first_answer(run, open_stream, latency_ms=lambda handle: handle.first_byte_ms)
        return ChatStream(run, model, handle, body, client_wants_usage)
    except BaseException as failure:  # every candidate failed, or the request was cancelled meanwhile
        await run_finish(run, model=None, usage=Usage(), error=failure, streamed=True)
        raise


async def generate(*, caller: Caller, registry: Registry, prompt: str | None = None,
                   messages: list[dict[str, Any]] | None = None, model_id: str | None = None,
                   provider: str | None = None, preferred_id: str | None = None, endpoint: str = "api.generate",
                   **params: Any) -> ChatOutcome:
    """Generates text from a prompt or messages. `provider` is the legacy way of choosing a model."""
    if messages is None:
        messages = [{"role": "user", "content": prompt or ""}]
    body = {"messages": messages, **{k: v for k, v in params.items() if v is not None}}
    return await chat(caller=caller, registry=registry, body=body, endpoint=endpoint, model_id=model_id,
                      provider=provider, preferred_id=preferred_id)


def cooldowns_reset() -> None:
    _cooled_until.clear()
