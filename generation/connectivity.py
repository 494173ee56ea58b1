"""The connectivity test of one model: a few small real requests, each under a strict deadline.

In order, while the answers allow it:
1. `GET /models`: is the endpoint reachable, is the key accepted, is the model listed (None when the
   upstream has no model list);
2. a plain chat: the key and the model for certain, and the latency;
3. streaming, JSON mode and tool calling, each by a request that uses the feature.

A model served on the Responses API is asked the same on `/responses`, in that API's words (as the hub calls it).

A capability is True (it works), False (the upstream refused the request or ignored the feature) or None
(the check failed: timeout, 5xx, broken answer). Errors are generic words ("unreachable", "timeout",
"key rejected", "HTTP 404"): never an upstream body, never the key. The test stops once it is past
`budget` seconds; each request gets at most `check_timeout` of it.

What the requests use is metered (`CheckUsage`, filled as they answer, so a test cut short keeps what it used):
the tokens the upstream reports, else counted locally as the usage log counts them; generation/model_testing.py
records them as the test's usage row.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from generation import client
from generation import responses_bridge as bridge
from generation.adaptation import request_adapt
from generation.services import usage_from
from registry.selectors import ModelSpec
from registry.ssrf import ssrf_refusal
from usage.services import tokens_count_messages, tokens_count_text

KEY_REJECTED = "key rejected"
MODEL_NOT_FOUND = "model not found"
TIMEOUT = "timeout"

_PING = [{"role": "user", "content": "Reply with one word: pong."}]
_JSON_ASK = [
    {"role": "system", "content": "You answer with a JSON object only."},
    {"role": "user", "content": 'Return this JSON object: {"ok": true}'},
]
_TOOL = {"type": "function", "function": {"name": "report_ok", "description": "Report that the check worked.",
                                          "parameters": {"type": "object", "properties": {}}}}


@dataclass(slots=True)
class CheckResult:
    reachable: bool | None = None
    key_accepted: bool | None = None
    model_found: bool | None = None
    latency_ms: float | None = None
    capabilities: dict[str, bool | None] = field(default_factory=dict)
    error: str = ""

    @property
    def answered(self) -> bool:
        return self.capabilities.get("chat") is True or self.capabilities.get("embeddings") is True


@dataclass(slots=True)
class CheckUsage:
    """What a test's requests used: how many were sent, and the tokens of those answered."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False  # some were counted locally: the upstream reported none (or nonsense)

    def add(self, request: dict[str, Any], probe: client.Probe) -> None:
        """Adds the tokens of one answered chat request."""
        if "text/event-stream" in probe.content_type:
            events = [_json(line.strip().removeprefix(b"data:")) for line in probe.body.split(b"\n")
                      if line.startswith(b"data:")]
            reported = next((counts for event in events if (counts := _reported(event))), None)
            answer = "".join(_delta_text(event) for event in events)
        else:
            reported = _reported(_json(probe.body))
            answer = _message_text(_message(probe.body))
        if reported is None:
            # Chat requests carry `messages`; Responses and embeddings requests carry `input` (counted as text).
            prompt = tokens_count_messages(request["messages"]) if "messages" in request else tokens_count_text(
                orjson.dumps([request.get("instructions"), request.get("input")]).decode())
            reported = (prompt, tokens_count_text(answer))
            self.estimated = True
        self.input_tokens += reported[0]
        self.output_tokens += reported[1]


def _reported(data: Any) -> tuple[int, int] | None:
    """The tokens an answer (or a stream event) reports, in Chat Completions' names or the Responses API's
    (`input_tokens` / `output_tokens`, on the response or a `response.completed` event's response)."""
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("response"), dict):
        data = data["response"]
    usage = data.get("usage")
    if isinstance(usage, dict) and "input_tokens" in usage:
        data = {"usage": {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")}}
    return usage_from(data)


def _delta_text(event: Any) -> str:
    try:
        content = event["choices"][0]["delta"].get("content")
    except (TypeError, KeyError, IndexError, AttributeError):
        return ""
    return content if isinstance(content, str) else ""


def _message_text(message: dict[str, Any] | None) -> str:
    """The text an answer's tokens went to: its content, or the tool calls it made (as compact JSON)."""
    if message is None:
        return ""
    content, calls = message.get("content"), message.get("tool_calls")
    text = content if isinstance(content, str) else ""
    return text + (orjson.dumps(calls).decode() if calls else "")


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _message(body: bytes) -> dict[str, Any] | None:
    data = _json(body)
    try:
        message = data["choices"][0]["message"]
    except (TypeError, KeyError, IndexError):
        return None
    return message if isinstance(message, dict) else None


def _listed(body: bytes, upstream_model: str) -> bool | None:
    data = _json(body)
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return None
    return any(isinstance(entry, dict) and entry.get("id") == upstream_model for entry in entries)


def _streams(probe: client.Probe) -> bool:
    """Whether the answer is an event stream with a chat chunk or a Responses text delta in it."""
    if "text/event-stream" not in probe.content_type:
        return False
    for event in probe.body.split(b"\n\n"):
        payload = bridge.event_parts(event.strip())[1]
        data = _json(payload) if payload else None
        if isinstance(data, dict) and (isinstance(data.get("choices"), list)
                                       or data.get("type") == "response.output_text.delta"):
            return True
    return False


def _answers_json(probe: client.Probe) -> bool:
    content = (_message(probe.body) or {}).get("content")
    return isinstance(content, str) and isinstance(_json(content.encode()), dict)


def _calls_tool(probe: client.Probe) -> bool:
    calls = (_message(probe.body) or {}).get("tool_calls")
    return isinstance(calls, list) and bool(calls)


# The feature checks: (capability, request body, does a 200 answer show the feature?)
FEATURES: tuple[tuple[str, dict[str, Any], Callable[[client.Probe], bool]], ...] = (
    ("streaming", {"messages": _PING, "max_completion_tokens": 16, "stream": True}, _streams),
    ("json_mode", {"messages": _JSON_ASK, "max_completion_tokens": 64, "response_format": {"type": "json_object"}},
     _answers_json),
    ("tools", {"messages": _PING, "max_completion_tokens": 64, "tools": [_TOOL],
               "tool_choice": {"type": "function", "function": {"name": "report_ok"}}}, _calls_tool),
)


def _chat_asked(model: ModelSpec, ask: Callable[[str, dict[str, Any]], client.Probe],
                body: dict[str, Any]) -> client.Probe:
    """A chat request to the model in its own API: a Responses answer is read as the chat completion it is."""
    if model.api != bridge.RESPONSES:
        return ask("/chat/completions", body)
    probe = ask("/responses", bridge.chat_request_to_responses(body))
    data = _json(probe.body) if probe.status == 200 and "text/event-stream" not in probe.content_type else None
    if isinstance(data, dict) and isinstance(data.get("output"), list):
        probe.body = orjson.dumps(bridge.response_to_chat(data))
    return probe


def chat_ask(model: ModelSpec, body: dict[str, Any], *, timeout: float, max_response_bytes: int,
             usage: CheckUsage) -> str:
    """One chat request to `model` (in its own API, adapted to it), metered into `usage` as it answers; returns the
    answer's text. Raises UpstreamError when no answer came (an error status included). Sync (Celery tasks)."""
    with client.probe_client(model, timeout=timeout, max_response_bytes=max_response_bytes) as sdk:

        def ask(path: str, request: dict[str, Any]) -> client.Probe:
            request = {**request, "model": model.upstream_model}
            usage.calls += 1
            answer = client.probe(sdk, path, body=request, deadline=time.monotonic() + timeout,
                                  max_response_bytes=max_response_bytes)
            if answer.status == 200:
                usage.add(request, answer)
            return answer

        answer = _chat_asked(model, ask, request_adapt(model, body))
    if answer.status != 200:
        raise client.map_status_error(answer.status)
    message = _message(answer.body)
    if message is None:
        raise client.UpstreamBadResponse("The upstream's answer was not a chat completion.")
    return _message_text(message)


def _failure(error: client.UpstreamError) -> str:
    if isinstance(error, client.UpstreamTimeout):
        return TIMEOUT
    if isinstance(error, client.UpstreamBadResponse):
        return "response too large"
    return "address not allowed" if ssrf_refusal(error) else "unreachable"


def model_check(model: ModelSpec, *, check_timeout: float, budget: float, max_response_bytes: int,
                usage: CheckUsage | None = None) -> CheckResult:
    """Runs the checks against `model`'s upstream; returns what they found (never raises for upstream faults).
    `usage`, when given, is filled with what the requests used as they answer."""
    result = CheckResult()
    usage = CheckUsage() if usage is None else usage
    test_deadline = time.monotonic() + budget

    with client.probe_client(model, timeout=check_timeout, max_response_bytes=max_response_bytes) as sdk:

        def ask(path: str, body: dict[str, Any] | None = None) -> client.Probe:
            deadline = min(time.monotonic() + check_timeout, test_deadline)
            if deadline <= time.monotonic():
                raise client.UpstreamTimeout("The test ran out of time.")
            request = None if body is None else {**body, "model": model.upstream_model}
            usage.calls += 1
            answer = client.probe(sdk, path, body=request, deadline=deadline, max_response_bytes=max_response_bytes)
            if request is not None and answer.status == 200:
                usage.add(request, answer)
            return answer

        try:
            listing = ask("/models")
        except client.UpstreamError as error:
            result.reachable, result.error = False, _failure(error)
            return result
        result.reachable = True
        if listing.status in (401, 403):
            result.key_accepted, result.error = False, KEY_REJECTED
            return result
        if listing.status == 200:
            result.model_found = _listed(listing.body, model.upstream_model)

        if model.kind == "embedding":
            return _embeddings_checked(ask, result)
        try:
            chat = _chat_asked(model, ask, {"messages": _PING, "max_completion_tokens": 16})
        except client.UpstreamError as error:
            result.capabilities["chat"], result.error = None, _failure(error)
            return result
        if chat.status in (401, 403):
            result.key_accepted, result.error = False, KEY_REJECTED
            return result
        if chat.status == 404:
            result.model_found, result.capabilities["chat"], result.error = False, False, MODEL_NOT_FOUND
            return result
        if chat.status != 200 or _message(chat.body) is None:
            result.capabilities["chat"] = None
            result.error = f"HTTP {chat.status}" if chat.status != 200 else "bad response"
            return result
        result.key_accepted, result.latency_ms, result.capabilities["chat"] = True, chat.latency_ms, True

        for name, body, shows_feature in FEATURES:
            try:
                answer = _chat_asked(model, ask, body)
            except client.UpstreamError as error:
                result.capabilities[name] = None
                result.error = result.error or f"{name}: {_failure(error)}"
                continue
            if answer.status == 200:
                result.capabilities[name] = shows_feature(answer)
            elif 400 <= answer.status < 500 and answer.status not in (401, 403, 408, 429):
                result.capabilities[name] = False  # the upstream refuses the feature
            else:
                result.capabilities[name] = None
                result.error = result.error or f"{name}: HTTP {answer.status}"
    return result


def _embeddings_checked(ask: Any, result: CheckResult) -> CheckResult:
    """An embedding model answers one embedding (it serves no chat, so no chat feature is tried)."""
    try:
        answer = ask("/embeddings", {"input": "ping"})
    except client.UpstreamError as error:
        result.capabilities["embeddings"], result.error = None, _failure(error)
        return result
    if answer.status in (401, 403):
        result.key_accepted, result.error = False, KEY_REJECTED
    elif answer.status == 404:
        result.model_found, result.capabilities["embeddings"], result.error = False, False, MODEL_NOT_FOUND
    elif answer.status != 200 or not isinstance((_json(answer.body) or {}).get("data"), list):
        result.capabilities["embeddings"] = None
        result.error = f"HTTP {answer.status}" if answer.status != 200 else "bad response"
    else:
        result.key_accepted, result.latency_ms, result.capabilities["embeddings"] = True, answer.latency_ms, True
    return result
@dataclass(slots=True)
class EndpointModels:
    """What an endpoint's `GET /models` lists: model ids, or the generic reason it could not be read."""

    ids: list[str] = field(default_factory=list)
    error: str = ""


def endpoint_models(*, base_url: str, api_key: str, owner_id: int, check_timeout: float,
                    max_response_bytes: int) -> EndpointModels:
    """The model ids a user's endpoint offers (for a form's "fetch models"), through the same SSRF-safe client and
    limits as a connectivity test. Errors are the test's generic words, never an upstream body."""
    spec = ModelSpec(id="endpoint-models", pk=0, display_name="", upstream_model="", provider="user",
                     provider_name="", base_url=base_url.rstrip("/"), api_key=api_key, timeout=check_timeout,
                     connect_timeout=min(5.0, check_timeout), headers={}, allowed_tiers=(), required_tier=None,
                     enabled=True, capabilities=frozenset(), context_window=1, input_price_per_million=0,
                     output_price_per_million=0, fallbacks=(), owner_id=owner_id)
    try:
        with client.probe_client(spec, timeout=check_timeout, max_response_bytes=max_response_bytes) as sdk:
            listing = client.probe(sdk, "/models", deadline=time.monotonic() + check_timeout,
                                   max_response_bytes=max_response_bytes)
    except client.UpstreamMisconfigured:
        return EndpointModels(error="key or headers invalid")
    except client.UpstreamError as error:
        return EndpointModels(error=_failure(error))
    if listing.status in (401, 403):
        return EndpointModels(error=KEY_REJECTED)
    if listing.status != 200:
        return EndpointModels(error=f"HTTP {listing.status}")
    data = _json(listing.body)
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return EndpointModels(error="bad response")
    return EndpointModels(ids=sorted({entry["id"] for entry in entries
                                      if isinstance(entry, dict) and isinstance(entry.get("id"), str)}))
