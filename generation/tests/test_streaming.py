"""Streaming through /v1 over real HTTP against the simulated upstream: fallback only before the first byte,
breaks and timeouts end with an error event, usage is settled however a stream ends."""

import asyncio
import time

import httpx2
import openai
import orjson
import pytest

from conftest import usage_rows

MESSAGES = [{"role": "user", "content": "hello hub"}]
REPLY = "Simulated reply from {}: hello hub"


@pytest.fixture
def api_key(free_user, api_key_for):
    return api_key_for(free_user)


@pytest.fixture
def sdk(live_hub, api_key):
    return openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key, max_retries=0, timeout=10)


def set_llmhub(settings, **values) -> None:
    settings.LLMHUB = {**settings.LLMHUB, **values}


def stream_text(sdk, model: str = "demo", received: list | None = None) -> str:
    received = [] if received is None else received
    for chunk in sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True):
        received.extend(choice.delta.content or "" for choice in chunk.choices)
    return "".join(received)


def test_it_falls_back_before_the_first_byte(sdk, simulated_upstream):
    simulated_upstream.set_fault("demo", "status=500")

    raw = sdk.chat.completions.with_raw_response.create(model="demo", messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)

    assert raw.headers["x-llmhub-model"] == "demo-backup"
    assert text == REPLY.format("demo-backup")
    [row] = usage_rows(1)
    assert (row.answered_model, row.attempts, row.status, row.streamed) == ("demo-backup", 2, "ok", True)


@pytest.mark.parametrize("fault", ["html", "hang"])
def test_it_falls_back_when_the_first_answer_is_no_event_stream_or_never_comes(sdk, settings, simulated_upstream,
                                                                              fault):
    set_llmhub(settings, FIRST_BYTE_TIMEOUT_SECONDS=1)
    simulated_upstream.set_fault("demo", fault)

    assert stream_text(sdk) == REPLY.format("demo-backup")


def test_it_does_not_fall_back_after_the_stream_started_and_ends_with_an_error_event(sdk, simulated_upstream):
    simulated_upstream.set_fault("demo", "drop=2")
    received = []

    with pytest.raises(openai.APIError) as error:
        stream_text(sdk, received=received)

    assert "".join(received) == "Simulated reply "  # the two chunks sent, not duplicated by a fallback
    assert error.value.body["code"] == "unavailable"
    assert simulated_upstream.stats() == {"demo": 1}
    [row] = usage_rows(1)
    assert (row.status, row.answered_model, row.error_type, row.streamed) == ("partial", "demo", "unavailable", True)
    assert row.output_tokens > 0 and row.tokens_estimated


def test_it_sends_the_error_event_on_the_wire_before_the_stream_ends(live_hub, api_key, simulated_upstream):
    simulated_upstream.set_fault("demo", "drop=1")

    response = httpx2.post(f"{live_hub}/v1/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                           json={"model": "demo", "messages": MESSAGES, "stream": True})

    events = [event for event in response.text.split("\n\n") if event]
    assert b"[DONE]" not in response.content
    last = orjson.loads(events[-1].removeprefix("data: "))
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert "Simulated" not in last["error"]["message"]


@pytest.mark.parametrize("fault", ["malformed", "drop=99"])
def test_it_never_truncates_a_stream_silently(sdk, simulated_upstream, fault):
    # "malformed" sends an event that is not JSON and ends the response; "drop=99" cuts after the last
    # content chunk, before the finish and [DONE]. Both must end with an error, never look complete.
    simulated_upstream.set_fault("demo", fault)

    with pytest.raises(openai.APIError):
        stream_text(sdk)

    [row] = usage_rows(1)
    assert row.status == "partial"
    assert simulated_upstream.stats() == {"demo": 1}


def test_it_never_cuts_a_slow_but_healthy_stream(sdk, settings, simulated_upstream):
    set_llmhub(settings, FIRST_BYTE_TIMEOUT_SECONDS=1, STREAM_IDLE_TIMEOUT_SECONDS=1)
    simulated_upstream.set_fault("demo", "chunk_delay=300")

    started = time.monotonic()
    assert stream_text(sdk) == REPLY.format("demo")

    assert time.monotonic() - started > 1.5  # longer than both timeouts, in all
    [row] = usage_rows(1)
    assert (row.status, row.output_tokens, row.tokens_estimated) == ("ok", 6, False)


def test_it_ends_a_stream_that_goes_silent_with_an_error_event(sdk, settings, simulated_upstream):
    set_llmhub(settings, FIRST_BYTE_TIMEOUT_SECONDS=1, STREAM_IDLE_TIMEOUT_SECONDS=1)
    simulated_upstream.set_fault("demo", "chunk_delay=2000")

    started = time.monotonic()
    with pytest.raises(openai.APIError) as error:
        stream_text(sdk)

    assert time.monotonic() - started < 4  # cut at the first 2 s gap; the whole stream takes 16 s
    assert error.value.body["code"] == "timeout"
    [row] = usage_rows(1)
    assert (row.status, row.error_type) == ("partial", "timeout")
    assert simulated_upstream.stats() == {"demo": 1}


def test_it_cancels_the_upstream_when_the_client_goes_away(sdk, live_hub, api_key, simulated_upstream):
    simulated_upstream.set_fault("demo", "chunk_delay=800")  # a whole stream would take about 6 s

    with httpx2.Client(timeout=10) as client, client.stream(
            "POST", f"{live_hub}/v1/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
            json={"model": "demo", "messages": MESSAGES, "stream": True}) as response:
        assert response.status_code == 200
        next(response.iter_raw())
    left = time.monotonic()

    [row] = usage_rows(1, timeout=2)
    assert time.monotonic() - left < 2  # settled at once, not when the upstream would have finished
    assert (row.status, row.error_type, row.streamed) == ("partial", "client_disconnected", True)
    assert row.latency_ms < 2000
    simulated_upstream.set_fault("demo", "")
    assert stream_text(sdk) == REPLY.format("demo")  # the hub keeps serving


def test_it_meters_30_concurrent_streams_once_each(live_hub, api_key):
    client = openai.AsyncOpenAI(base_url=f"{live_hub}/v1", api_key=api_key, max_retries=0, timeout=20)

    async def one(index: int) -> str:
        stream = await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": f"stream {index}"}], stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def run() -> list[str]:
        try:
            return await asyncio.gather(*(one(index) for index in range(30)))
        finally:
            await client.close()

    texts = asyncio.run(run())

    assert texts == [f"Simulated reply from demo: stream {index}" for index in range(30)]
    rows = usage_rows(30)
    assert len(rows) == 30
    assert len({row.request_id for row in rows}) == 30
    assert {(row.status, row.streamed) for row in rows} == {("ok", True)}


def test_it_applies_a_changed_provider_timeout_to_the_pooled_client(sdk, settings, simulated_upstream):
    from llmhub.crypto import secret_encrypt
    from registry.models import Provider

    provider = Provider.objects.get(slug="local")
    provider.api_key_encrypted = secret_encrypt("sk-local-timeout-test")  # a pool entry of this test's own
    provider.timeout_seconds = 1
    provider.save()
    assert stream_text(sdk) == REPLY.format("demo")  # pools a client built with a 1 s read timeout
    provider.timeout_seconds = 5
    provider.save()
    set_llmhub(settings, STREAM_IDLE_TIMEOUT_SECONDS=5)
    simulated_upstream.set_fault("demo", "chunk_delay=1200")

    stream = sdk.chat.completions.create(model="demo", messages=MESSAGES, stream=True, max_tokens=1)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Simulated"  # 1.2 s gaps: fine


# --- What an upstream streams is checked (issue 16, item 14) -------------------------------------------------

def stream_events(live_hub: str, api_key: str, model: str, **body) -> list[bytes]:
    response = httpx2.post(f"{live_hub}/v1/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                           json={"model": model, "messages": MESSAGES, "stream": True, **body}, timeout=10)
    assert response.status_code == 200, response.text
    return [event for event in response.content.split(b"\n\n") if event]


@pytest.mark.parametrize("kind", ["negative", "text", "fraction", "huge", "absent"])
def test_it_counts_a_stream_locally_when_the_upstream_reports_garbage_usage(live_hub, api_key, simulated_upstream,
                                                                            kind):
    simulated_upstream.set_fault("demo", f"usage={kind}")

    events = stream_events(live_hub, api_key, "demo", stream_options={"include_usage": True})

    assert events[-1] == b"data: [DONE]"
    payloads = [orjson.loads(event.removeprefix(b"data: ")) for event in events[:-1]]
    assert "".join(choice["delta"].get("content") or "" for payload in payloads
                   for choice in payload["choices"]) == REPLY.format("demo")
    assert all("error" not in payload for payload in payloads)
    assert all(usage["prompt_tokens"] >= 0 and isinstance(usage["completion_tokens"], int) for usage in
               (payload["usage"] for payload in payloads if payload.get("usage")))  # no garbage passed on
    [row] = usage_rows(1)
    assert (row.status, row.error_type, row.tokens_estimated) == ("ok", "", True)
    assert 0 < row.input_tokens < 100 and 0 < row.output_tokens < 100 and row.cost > 0


def test_it_ends_a_stream_whose_content_is_not_text_with_an_error_event(live_hub, api_key, simulated_upstream):
    simulated_upstream.set_fault("demo", "content=number")

    events = stream_events(live_hub, api_key, "demo")

    assert b'"content":5' not in b"".join(events)  # never passed on
    last = orjson.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "bad_response"
    [row] = usage_rows(1)
    assert (row.status, row.error_type, row.streamed) == ("partial", "bad_response", True)
