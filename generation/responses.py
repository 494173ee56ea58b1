"""The Responses API (`/v1/responses`) on generation's pipeline: resolve → authorise → reserve → call (falling
back) → settle → log, as for chat.

Each candidate is asked in its own API: a model served on `/responses` gets the request as it came (so
`previous_response_id` and `store` work there), a chat model gets it translated (`responses_bridge`) and its
answer, streamed or not, translated back into a Response object or Responses events.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

import orjson

from generation import client, services
from generation import responses_bridge as bridge
from generation.services import Caller, ChatOutcome, ChatStream, Usage
from prompts.services import PromptRequest
from registry.selectors import ModelSpec, Registry

logger = logging.getLogger(__name__)


class _Forms:
    """The request in each API's words: as it came, and translated for chat models at most once."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.counted = {"messages": services.request_messages(body, api=bridge.RESPONSES)}  # for local counts
        self._chat: dict[str, Any] | None = None

    def chat(self, **extra: Any) -> dict[str, Any]:
        if self._chat is None:
            self._chat = bridge.responses_request_to_chat(self.body)
        return {**self._chat, **extra}


def response_usage(data: dict[str, Any]) -> tuple[int, int] | None:
    """The (input, output) tokens a Response object reports, or None when none or nonsense."""
    return services.usage_from({"usage": bridge.usage_responses_to_chat(data.get("usage"))})


async def _native_usage(run: Any, model: ModelSpec, forms: _Forms, completion: client.Completion) -> Usage:
    counted = response_usage(completion.data)
    if counted is not None:
        return Usage(*counted)
    usage = await services.usage_counted(forms.counted, bridge.output_text(completion.data))
    if completion.data.get("usage") is not None:
        logger.warning("request %s: model %s reported an unusable usage; counted locally", run.request_id, model.id)
        completion.data["usage"] = bridge.usage_chat_to_responses(
            {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens})
        completion.raw = orjson.dumps(completion.data)
    return usage


async def respond(*, caller: Caller, registry: Registry, body: dict[str, Any], endpoint: str = "v1.responses",
                  model_id: str | None = None, preferred_ids: Sequence[str] = (),
                  prompt: PromptRequest | None = None) -> ChatOutcome:
    """One non-streaming Responses request, with fallback, settled and logged exactly once."""
    run = await services.start_run(caller=caller, registry=registry, body=body, endpoint=endpoint, model_id=model_id,
                                   provider=None, preferred_ids=preferred_ids, api=bridge.RESPONSES, prompt=prompt)
    forms = _Forms(body)

    def call(model: ModelSpec, remaining: float) -> Awaitable[client.Completion]:
        timeout = min(model.timeout, remaining)
        if model.api == bridge.RESPONSES:
            return client.responses_create(model, body, timeout=timeout)
        return client.chat_completion(model, forms.chat(), timeout=timeout)

    usage, model, error = Usage(), None, None
    try:
        model, completion = await services._first_answer(run, call, latency_ms=lambda answer: answer.latency_ms)
        if model.api == bridge.RESPONSES:
            usage = await _native_usage(run, model, forms, completion)
        else:
            usage = await services.completion_usage(run, model, forms.counted, completion)
            completion.data = bridge.chat_to_response(completion.data, body)
            completion.raw = orjson.dumps(completion.data)
    except BaseException as failure:  # a cancelled request (client gone) is settled and logged too
        error = failure
        raise
    finally:
        await asyncio.shield(services.run_finish(run, model=model, usage=usage, error=error))
    return ChatOutcome(request_id=run.request_id, model=model, raw=completion.raw, data=completion.data,
                       attempts=run.attempts, usage=usage, cost=run.cost,
                       latency_ms=(time.perf_counter() - run.started) * 1000, quota=run.reservation, prompt=run.prompt,
                       route=run.route)


class NativeResponsesStream(ChatStream):
    """A Responses event stream from a model served on that API, passed on as it came; each event is checked
    (JSON, text deltas that are text), its usage read from `response.completed` (or `response.incomplete`), and
    a stream that ends before either, or fails, ends with an `error` event."""

    _sequence = -1

    def _error_event(self, *, code: str, message: str) -> bytes:
        payload = {"type": "error", "code": code, "message": message, "param": None,
                   "sequence_number": self._sequence + 1}
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _pass(self, event: bytes) -> bytes:
        if self._done or self._broken is not None:
            return b""
        payload = bridge.event_data(event)
        if payload is None:
            return event + b"\n\n"  # comments
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._broken = client.UpstreamBadResponse("The upstream sent an event that is not JSON.")
            return b""
        if not isinstance(data, dict):
            self._broken = client.UpstreamBadResponse("The upstream sent an event of an unexpected shape.")
            return b""
        if type(data.get("sequence_number")) is int:
            self._sequence = data["sequence_number"]
        kind = data.get("type")
        if kind == "response.output_text.delta":
            if not isinstance(data.get("delta"), str):
                self._broken = client.UpstreamBadResponse("The upstream sent content that is not text.")
                return b""
            self._text.append(data["delta"])
        elif kind in ("error", "response.failed"):
            self._broken = client.UpstreamUnavailable("The upstream failed the response.")
            return b""
        elif kind in ("response.completed", "response.incomplete"):
            self._done = True
            response = data.get("response") if isinstance(data.get("response"), dict) else {}
            counted = response_usage(response)
            if counted is not None:
                self.usage = Usage(*counted)
            elif response.get("usage") is not None:  # nonsense: counted locally at the end, and not passed on
                logger.warning("request %s: model %s streamed an unusable usage; counted locally",
                               self.request_id, self.model.id)
                response["usage"] = None
                return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        return event + b"\n\n"


class ResponsesFromChatStream(ChatStream):
    """A chat model's stream, checked and metered as any chat stream, sent on as Responses events."""

    def __init__(self, run: Any, model: ModelSpec, handle: client.StreamHandle, forms: _Forms) -> None:
        super().__init__(run, model, handle, forms.counted, client_wants_usage=True)
        self.converter = bridge.ResponsesFromChatEvents(forms.body, model=None)

    async def events(self) -> AsyncIterator[bytes]:
        yield self.converter.start()
        chat_events = ChatStream.events(self)
        buffer = b""
        try:
            async for chunk in chat_events:
                complete, buffer = bridge.events_split(buffer + chunk)
                out = b""
                for event in complete:
                    out += await self._translated(bridge.event_data(event))
                if out:
                    yield out
        finally:
            await chat_events.aclose()

    async def _translated(self, payload: bytes | None) -> bytes:
        if payload is None:
            return b""
        if payload == b"[DONE]":
            if self.usage is None:  # the upstream reported none: counted now, for `response.completed`
                self.usage = await services.usage_counted(self.body, "".join(self._text))
            return self.converter.finish({"prompt_tokens": self.usage.input_tokens,
                                          "completion_tokens": self.usage.output_tokens})
        data = orjson.loads(payload)  # ChatStream passes on only JSON it parsed
        if "error" in data:
            return self.converter.fail(data["error"].get("code") or "upstream_failed", data["error"].get("message"))
        return self.converter.chunk(data)


async def respond_stream(*, caller: Caller, registry: Registry, body: dict[str, Any], endpoint: str = "v1.responses",
                         model_id: str | None = None, preferred_ids: Sequence[str] = (),
                         prompt: PromptRequest | None = None) -> ChatStream:
    """Opens a streaming Responses request, falling back while no byte has been sent. Raises GenerationFailed
    (logged) when every candidate fails before streaming."""
    run = await services.start_run(caller=caller, registry=registry, body=body, endpoint=endpoint, model_id=model_id,
                                   provider=None, preferred_ids=preferred_ids, api=bridge.RESPONSES, prompt=prompt)
    forms = _Forms(body)

    def open_stream(model: ModelSpec, remaining: float) -> Awaitable[client.StreamHandle]:
        first_byte, idle = client.default_timeouts(model)
        first_byte = min(first_byte, remaining)
        if model.api == bridge.RESPONSES:
            return client.responses_stream(model, body, first_byte_timeout=first_byte, idle_timeout=idle)
        return client.chat_completion_stream(model, forms.chat(stream=True, stream_options={"include_usage": True}),
                                             first_byte_timeout=first_byte, idle_timeout=idle)

    try:
        model, handle = await services._first_answer(run, open_stream, latency_ms=lambda answer: answer.first_byte_ms)
    except BaseException as failure:  # every candidate failed, or the request was cancelled meanwhile
        await services.run_finish(run, model=None, usage=Usage(), error=failure, streamed=True)
        raise
    if model.api == bridge.RESPONSES:
        return NativeResponsesStream(run, model, handle, forms.counted, client_wants_usage=True)
    return ResponsesFromChatStream(run, model, handle, forms)

