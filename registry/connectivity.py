"""The connectivity test of one model: a few small real requests, each under a strict deadline.

In order, while the answers allow it:
1. `GET /models`: is the endpoint reachable, is the key accepted, is the model listed (None when the
   upstream has no model list);
2. a plain chat: the key and the model for certain, and the latency;
3. streaming, JSON mode and tool calling, each by a request that uses the feature.

A capability is True (it works), False (the upstream refused the request or ignored the feature) or None
(the check failed: timeout, 5xx, broken answer). Errors are generic words ("unreachable", "timeout",
"key rejected", "HTTP 404"): never an upstream body, never the key. The test stops once it is past
`budget` seconds; each request gets at most `check_timeout` of it.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from generation import client
from registry.selectors import ModelSpec
from registry.ssrf import ssrf_refusal

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
        return self.capabilities.get("chat") is True


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
    if "text/event-stream" not in probe.content_type:
        return False
    for event in probe.body.split(b"\n\n"):
        data = _json(event.strip().removeprefix(b"data:").strip()) if event.strip().startswith(b"data:") else None
        if isinstance(data, dict) and isinstance(data.get("choices"), list):
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


def _failure(error: client.UpstreamError) -> str:
    if isinstance(error, client.UpstreamTimeout):
        return TIMEOUT
    if isinstance(error, client.UpstreamBadResponse):
        return "response too large"
    return "address not allowed" if ssrf_refusal(error) else "unreachable"


def model_check(model: ModelSpec, *, check_timeout: float, budget: float, max_response_bytes: int) -> CheckResult:
    """Runs the checks against `model`'s upstream; returns what they found (never raises for upstream faults)."""
    result = CheckResult()
    test_deadline = time.monotonic() + budget

    with client.probe_client(model, timeout=check_timeout, max_response_bytes=max_response_bytes) as sdk:

        def ask(path: str, body: dict[str, Any] | None = None) -> client.Probe:
            deadline = min(time.monotonic() + check_timeout, test_deadline)
            if deadline <= time.monotonic():
                raise client.UpstreamTimeout("The test ran out of time.")
            request = None if body is None else {**body, "model": model.upstream_model}
            return client.probe(sdk, path, body=request, deadline=deadline, max_response_bytes=max_response_bytes)

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

        try:
            chat = ask("/chat/completions", {"messages": _PING, "max_completion_tokens": 16})
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
                answer = ask("/chat/completions", body)
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
