"""Micro-benchmark of what issue 9 added to each /v1 chat request, in CPU microseconds per request.

    .venv/bin/python -m bench.validation

No database, no server: the pieces are pure functions over a body and a model, timed in-process in CPU time of the
thread (the best of 60 runs of 2,000 calls, so that a busy machine disturbs the figure as little as it can). Bodies:
the benchmark's own (one user message, `max_tokens` 64, as `make bench` sends) and a heavy one (20 messages with
content parts, two tools, `tool_choice`, `response_format` json_schema, sampling fields, `stop`, `logit_bias`, metadata).

- validate, before: `chat_body_validate` without the new checks (what it did before: forbidden fields, model,
  messages' roles and content types, max_tokens, stream).
- validate, now: with the strict checks of every known field and of content parts.
- routing: skipping models whose window is too small or that refuse a parameter, and adapting the body (a model
  without declarations, as `demo`, and one with declarations, as `gpt-5-pro`).
- edge: the request id bound to the run, the send wrapper adding it (and CORS when configured) to the response.
"""

import contextlib
import os
import time
import timeit
from unittest import mock

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmhub.settings")

RUNS, CALLS = 60, 2_000  # many short runs: the best one is the least disturbed on a busy machine


def _bodies() -> dict[str, dict]:
    parts = [{"type": "text", "text": "Describe this picture in a few words, please."},
             {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}]
    messages = [{"role": "system", "content": "You are terse."}]
    for turn in range(19):
        messages.append({"role": "user" if turn % 2 == 0 else "assistant",
                         "content": parts if turn % 2 == 0 else "A cat on a mat."})
    tools = [{"type": "function", "function": {"name": f"tool_{index}", "description": "Looks things up.",
                                               "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
             for index in range(2)]
    return {
        "bench body": {"model": "demo", "messages": [{"role": "user", "content": "hello from the benchmark"}],
                       "max_tokens": 64},
        "heavy body": {"model": "demo", "messages": messages, "max_tokens": 256, "temperature": 0.7, "top_p": 0.9,
                       "n": 1, "stop": ["\n\n", "END"], "seed": 42, "presence_penalty": 0.1, "tools": tools,
                       "tool_choice": {"type": "function", "function": {"name": "tool_0"}},
                       "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
                           "type": "object"}, "strict": True}}, "logit_bias": {"50256": -100},
                       "metadata": {"team": "bench"}, "user": "bench-user", "stream": False},
    }


def _microseconds(function) -> float:
    # CPU time of this thread: time the process spent preempted by others' work is not counted.
    return min(timeit.repeat(function, number=CALLS, repeat=RUNS, timer=time.thread_time)) / CALLS * 1e6


def main() -> None:
    import django

    django.setup()
    from generation import openai_compat
    from generation.adaptation import params_dropped, request_adapt
    from generation.openai_edge import cors_origin, send_wrapped
    from generation.services import candidates_admitted, request_id_bind, request_id_new, request_id_take
    from registry.params import request_params_parse
    from registry.selectors import ModelSpec
    from usage.services import tokens_estimate_messages

    def model(**params) -> ModelSpec:
        return ModelSpec(id="m", pk=1, display_name="M", upstream_model="m", provider="p", provider_name="P",
                         base_url="http://x", api_key="", timeout=1, connect_timeout=1, headers={}, allowed_tiers=(),
                         required_tier=None, enabled=True, capabilities=frozenset(), context_window=128_000,
                         input_price_per_million=0, output_price_per_million=0, fallbacks=(),
                         request_params=request_params_parse(params))

    plain = model()
    declared = model(unsupported=["temperature", "top_p", "presence_penalty", "frequency_penalty", "logprobs",
                                  "top_logprobs", "logit_bias"], renamed={"max_tokens": "max_completion_tokens"})
    scope = {"headers": [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer lh-x"),
                         (b"content-type", b"application/json")]}

    async def sink(message):
        return None

    request_id = request_id_new()  # made per request before too (by the run): not part of the added cost

    def edge() -> None:
        request_id_bind(request_id)
        request_id_take()
        send = send_wrapped(sink, request_id=request_id, head=False, origin=cors_origin(scope))
        for message in ({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"json")]},
                        {"type": "http.response.body", "body": b"{}"}):
            with contextlib.suppress(StopIteration):  # the coroutine finishes at once
                send(message).send(None)

    print(f"{'body':<11} {'piece':<46} µs/request")
    for name, body in _bodies().items():
        def validate(body=body) -> None:
            openai_compat.chat_body_validate(dict(body))

        with mock.patch.object(openai_compat, "chat_fields_validate", lambda data: None), \
                mock.patch.object(openai_compat, "message_validate", lambda index, message: None):
            before = _microseconds(validate)
        now = _microseconds(validate)
        estimate = tokens_estimate_messages(body["messages"]) + body["max_tokens"]
        rows = [
            ("validate, before (old checks only)", before),
            ("validate, now (strict known fields)", now),
            ("validate: added", now - before),
            ("routing + adaptation, model without declarations", _microseconds(lambda body=body, needed=estimate: (
                candidates_admitted(plain, [plain], body, needed_tokens=needed), request_adapt(plain, body),
                params_dropped(plain, body)))),
            ("routing + adaptation, model with declarations", _microseconds(lambda body=body, needed=estimate: (
                candidates_admitted(declared, [declared], body, needed_tokens=needed),
                request_adapt(declared, body), params_dropped(declared, body)))),
        ]
        for piece, value in rows:
            print(f"{name:<11} {piece:<46} {value:6.2f}")
    print(f"{'any':<11} {'edge: request id + send wrapper (CORS off)':<46} {_microseconds(edge):6.2f}")


if __name__ == "__main__":
    main()
