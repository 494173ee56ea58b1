"""The playground's answer as server-sent events, on generation's and translation's services.

The stream is the upstream's own OpenAI chunks (`data: {...}`), framed by two named events the page reads:
`meta` (the model that answered and every attempt, failed ones first) before the text, and `summary`
(tokens, cost, latency) after it. A translation is not streamed upstream: it arrives as one chunk.
"""

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson

from generation.services import Attempt, ChatStream, Usage
from registry.selectors import ModelSpec
from routing.policies import Route
from translation.services import Translation


def chat_body(params: dict[str, Any]) -> dict[str, Any]:
    """The chat request of the playground's validated input: its messages (or its prompt as one), its settings."""
    messages = params.get("messages") or [{"role": "user", "content": params["prompt"]}]
    return {"messages": messages, **{name: params[name] for name in ("temperature", "max_tokens") if name in params}}


def sse(event: str | None, data: Any) -> bytes:
    name = f"event: {event}\n".encode() if event else b""
    return name + b"data: " + orjson.dumps(data) + b"\n\n"


def _meta(model: ModelSpec, attempts: list[Attempt], route: Route | None) -> bytes:
    """The model that answered, every attempt, and how it was chosen (the routing explanation)."""
    return sse("meta", {"model": model.id, "display_name": model.display_name,
                        "attempts": [attempt.as_dict() for attempt in attempts],
                        "route": route.explanation() if route is not None else None})


def _summary(*, request_id: str, usage: Usage, cost: Any, latency_ms: float, ttft_ms: float | None = None) -> bytes:
    return sse("summary", {
        "request_id": request_id, "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
        "estimated": usage.estimated, "cost": f"{Decimal(cost).normalize():f}", "latency_ms": round(latency_ms, 1),
        "ttft_ms": round(ttft_ms, 1) if ttft_ms is not None else None,
    })


async def chat_events(stream: ChatStream) -> AsyncIterator[bytes]:
    """Settles and logs the request however it ends (`ChatStream.events` does), also when the page goes away."""
    yield _meta(stream.model, stream.attempts, stream.run.route)
    events = stream.events()
    try:
        async for chunk in events:
            yield chunk
    finally:
        await events.aclose()
    yield _summary(request_id=stream.request_id, usage=stream.usage or Usage(), cost=stream.run.cost,
                   latency_ms=(time.perf_counter() - stream.run.started) * 1000, ttft_ms=stream.ttft_ms)


async def translation_events(result: Translation) -> AsyncIterator[bytes]:
    yield _meta(result.model, result.attempts, result.route)
    yield sse(None, {"choices": [{"index": 0, "delta": {"content": result.text}}]})
    yield _summary(request_id=result.request_id, usage=result.usage, cost=result.cost, latency_ms=result.latency_ms)
