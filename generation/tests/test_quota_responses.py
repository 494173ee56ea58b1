"""Quotas as clients see them, over real HTTP: 429 in OpenAI's shape on /v1 and the one error shape on /api, OpenAI's
x-ratelimit-* headers on refusals and successes, exact admission under concurrency (also across two uvicorn
processes), settlement of cut streams, and failing closed while Redis is down.

The embedded run uses the database back end (SQLite); the services run Redis and PostgreSQL."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import httpx2
import openai
import pytest
from django.conf import settings as django_settings
from django.db import connection

from conftest import usage_rows
from llmhub.testing import PrivateRedis
from registry.models import QuotaLimit, Tier
from usage.models import UsageLog
from usage.quotas import quota_settles_drain, quota_status

MESSAGES = [{"role": "user", "content": "hello hub"}]  # estimated at 10 prompt tokens


@pytest.fixture
def user(free_user):
    return free_user


@pytest.fixture
def key(user, api_key_for) -> str:
    return api_key_for(user)


def tier_limit(metric: str = "requests", period: str = "day", value: str = "50", model: str = "") -> None:
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric=metric, period=period, limit=Decimal(value),
                              model=model)


def status(user) -> dict[str, dict]:
    return {row["metric"]: row for row in asyncio.run(quota_status(user_id=user.pk, api_key_id=None, tier_slug="free"))}


def burst(urls: list[str], key: str, count: int, payload: dict) -> list[httpx2.Response]:
    """`count` concurrent POSTs, spread over `urls` in turn."""

    async def run() -> list[httpx2.Response]:
        limits = httpx2.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx2.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.gather(*(
                client.post(urls[index % len(urls)], json=payload, headers={"Authorization": f"Bearer {key}"})
                for index in range(count)))

    return asyncio.run(run())


def assert_rate_headers(response: httpx2.Response, *, limit: int, remaining: int | None = None) -> None:
    assert response.headers["x-ratelimit-limit-requests"] == str(limit)
    if remaining is not None:
        assert response.headers["x-ratelimit-remaining-requests"] == str(remaining)
    assert response.headers["x-ratelimit-reset-requests"].endswith("s")


def assert_exactly_50_of_200(responses: list[httpx2.Response]) -> None:
    statuses = [response.status_code for response in responses]
    assert (statuses.count(200), statuses.count(429)) == (50, 150), statuses
    for response in responses:
        assert_rate_headers(response, limit=50)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["x-ratelimit-remaining-requests"] == "0"
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("rate_limit_error", "requests_per_day")


def test_it_answers_exactly_50_of_200_concurrent_requests_against_50_a_day(live_hub, user, key, simulated_upstream):
    tier_limit(value="50")

    responses = burst([f"{live_hub}/v1/chat/completions"], key, 200, {"model": "demo", "messages": MESSAGES})

    assert_exactly_50_of_200(responses)
    assert len(usage_rows(50)) == 50
    time.sleep(0.3)
    assert len(usage_rows(51, timeout=0.3)) == 50  # refusals leave no usage row...
    assert status(user)["requests"].items() >= {"used": 50, "held": 0, "holds": 0, "refused": 150}.items()  # ...but are counted
    assert sum(simulated_upstream.stats().values()) == 50


def test_it_raises_the_sdks_rate_limit_error_with_the_limit_and_its_headers(live_hub, user, key, simulated_upstream):
    tier_limit(value="1", period="minute")
    sdk = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=key, max_retries=0, timeout=10)

    ok = sdk.chat.completions.with_raw_response.create(model="demo", messages=MESSAGES)
    assert_rate_headers(ok, limit=1, remaining=0)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="demo", messages=MESSAGES)

    assert refused.value.code == "requests_per_minute"
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    assert_rate_headers(refused.value.response, limit=1, remaining=0)
    assert simulated_upstream.stats() == {"demo": 1}


def test_it_puts_the_headers_on_streams_and_token_limits_too(live_hub, user, key):
    tier_limit(value="10")
    tier_limit(metric="tokens", value="5000")
    payload = {"model": "demo", "messages": MESSAGES, "max_tokens": 90, "stream": True}

    with httpx2.stream("POST", f"{live_hub}/v1/chat/completions", json=payload, timeout=10,
                       headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        assert_rate_headers(response, limit=10, remaining=9)
        assert response.headers["x-ratelimit-limit-tokens"] == "5000"
        assert response.headers["x-ratelimit-remaining-tokens"] == str(5000 - 100)
        response.read()
    [row] = usage_rows(1)
    assert status(user)["tokens"]["used"] == row.input_tokens + row.output_tokens


@pytest.mark.parametrize(("path", "payload"), [
    ("/api/generate/", {"prompt": "hello hub", "model": "demo"}),
    ("/api/translate/", {"text": "hello hub", "target_language": "fr", "model": "demo"}),
])
def test_it_refuses_api_endpoints_in_the_one_error_shape(live_hub, user, key, simulated_upstream, path, payload):
    tier_limit(value="1", period="hour")
    headers = {"Authorization": f"Bearer {key}"}

    ok = httpx2.post(f"{live_hub}{path}", json=payload, headers=headers, timeout=10)
    refused = httpx2.post(f"{live_hub}{path}", json=payload, headers=headers, timeout=10)

    assert ok.status_code == 200, ok.text
    assert_rate_headers(ok, limit=1, remaining=0)
    assert refused.status_code == 429
    assert_rate_headers(refused, limit=1, remaining=0)
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
    error = refused.json()["error"]
    assert error["code"] == "requests_per_hour"
    assert error["limit"] == {"metric": "requests", "period": "hour", "limit": 1, "model": None, "scope": "user"}
    assert error["retry_after"] == int(refused.headers["retry-after"])
    assert len(usage_rows(2, timeout=0.5)) == 1
    assert sum(simulated_upstream.stats().values()) == 1


def test_it_never_admits_more_tokens_than_the_limit_and_settles_to_the_usage_log(live_hub, user, key,
                                                                                  simulated_upstream):
    tier_limit(metric="tokens", value="10000")
    # Slow answers keep the first requests in flight while the rest arrive: only reservations decide.
    simulated_upstream.set_fault("demo", "latency=2000")

    responses = burst([f"{live_hub}/v1/chat/completions"], key, 100,
                      {"model": "demo", "messages": MESSAGES, "max_tokens": 1090})  # 10 + 1,090 = 1,100 each

    statuses = [response.status_code for response in responses]
    assert statuses.count(200) + statuses.count(429) == 100
    assert statuses.count(200) <= 9  # 9 x 1,100 = 9,900
    rows = usage_rows(statuses.count(200))
    assert len(rows) == statuses.count(200)
    tokens = status(user)["tokens"]
    assert tokens["used"] == sum(row.input_tokens + row.output_tokens for row in rows) <= 10000
    assert (tokens["held"], tokens["holds"]) == (0, 0)  # no reservation left


def test_it_settles_a_stream_the_client_cut(live_hub, user, key, simulated_upstream):
    tier_limit(value="10")
    tier_limit(metric="tokens", value="100000")
    simulated_upstream.set_fault("demo", "chunk_delay=500")

    with httpx2.Client(timeout=10) as client, client.stream(
            "POST", f"{live_hub}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
            json={"model": "demo", "messages": MESSAGES, "stream": True, "max_tokens": 500}) as response:
        assert response.status_code == 200
        next(response.iter_raw())

    [row] = usage_rows(1)
    assert (row.status, row.error_type) == ("partial", "client_disconnected")
    counted = status(user)
    # Streaming policy: a cut stream is settled with the prompt plus the tokens already streamed.
    assert counted["tokens"]["used"] == row.input_tokens + row.output_tokens < 500
    assert counted["requests"]["used"] == 1
    assert all((limit["held"], limit["holds"]) == (0, 0) for limit in counted.values())


def test_it_fails_closed_while_redis_is_down_and_resumes_when_it_returns(live_hub, user, key, settings, tmp_path,
                                                                          simulated_upstream):
    redis_server = PrivateRedis(str(tmp_path)).start()
    try:
        settings.LLMHUB = {**settings.LLMHUB, "QUOTA_REDIS_URL": redis_server.url}
        tier_limit(value="50")
        url, headers = f"{live_hub}/v1/chat/completions", {"Authorization": f"Bearer {key}"}
        payload = {"model": "demo", "messages": MESSAGES}
        assert httpx2.post(url, json=payload, headers=headers, timeout=10).status_code == 200

        redis_server.stop()
        started = time.monotonic()
        down = httpx2.post(url, json=payload, headers=headers, timeout=10)
        assert time.monotonic() - started < 1
        assert (down.status_code, down.headers["retry-after"]) == (503, "1")
        assert down.json()["error"]["code"] == "quota_unavailable"

        redis_server.start()  # same port, empty: the app was not restarted
        back = httpx2.post(url, json=payload, headers=headers, timeout=10)
        assert back.status_code == 200, back.text
        assert_rate_headers(back, limit=50, remaining=49)
        assert len(usage_rows(2)) == 2  # the refused request left none
        assert simulated_upstream.stats() == {"demo": 2}
    finally:
        redis_server.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(port: int, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "uvicorn", "llmhub.asgi:application", "--host", "127.0.0.1", "--port", str(port),
               "--lifespan", "on", "--no-access-log"]
    return subprocess.Popen(command, cwd=django_settings.BASE_DIR, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _wait_serving(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 401:
                return
        except httpx2.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"the app on port {port} did not start")


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_it_answers_exactly_50_of_200_across_two_uvicorn_processes(registry, user, key, simulated_upstream):
    assert connection.vendor == "postgresql" and os.environ.get("REDIS_URL")
    tier_limit(value="50")
    database = urlsplit(os.environ["DATABASE_URL"])._replace(path="/" + connection.settings_dict["NAME"])
    env = {**os.environ, "DATABASE_URL": urlunsplit(database), "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
           "DJANGO_SECURE_SSL_REDIRECT": "false", "LLMHUB_USAGE_FLUSH_INTERVAL_SECONDS": "0.05"}
    ports = [_free_port(), _free_port()]
    servers = [_serve(port, env) for port in ports]
    try:
        for port in ports:
            _wait_serving(port)
        responses = burst([f"http://127.0.0.1:{port}/v1/chat/completions" for port in ports], key, 200,
                          {"model": "demo", "messages": MESSAGES})

        # Each process decided half of the requests against the one counter in Redis (every answer, 200 or 429,
        # carries the headers of its decision); which process got the 50 places is a matter of timing.
        assert_exactly_50_of_200(responses)
        assert sorted(response.url.port for response in responses) == sorted(ports * 100)
        deadline = time.monotonic() + 10
        while UsageLog.objects.count() < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    assert UsageLog.objects.count() == 50
    assert status(user)["requests"].items() >= {"used": 50, "held": 0, "holds": 0, "refused": 150}.items()


@pytest.mark.services
def test_a_breaker_the_pipelined_read_finds_reroutes_the_request_and_gives_its_reservation_back(
        live_hub, user, key, registry, simulated_upstream, monkeypatch):
    """With Redis, a plain request reads the breakers and reserves in one round trip, routed on the breakers as this
    process last saw them. Another process cooled `demo` meanwhile: the read finds it, the request is routed again
    (demo-backup answers) and the reservation made for the first route is given back, counting nothing."""
    from health import breakers

    tier_limit(value="50")
    sdk = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=key, max_retries=0, timeout=10)
    # The first request opens the connections (its reservation goes out by a task of its own); the second's is
    # queued as it is made (`quota_reserve_sent`).
    sdk.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=8)
    asyncio.run(breakers.breaker_cool(registry.models["demo"], seconds=60))  # as another process: in Redis only
    monkeypatch.setattr(breakers, "_latest", breakers.EMPTY_VIEW)  # this process has not seen it yet

    sdk.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=8)

    assert [row.answered_model for row in usage_rows(2)] == ["demo", "demo-backup"]
    requests = status(user)["requests"]
    assert (requests["used"], requests["held"], requests["holds"]) == (2, 0, 0)


@pytest.mark.django_db(transaction=True)
def test_v1_answers_before_it_settles_and_logs_and_every_other_caller_after(registry, user, simulated_upstream):
    """/v1 (`finish_after_response`) settles the reservation and writes the usage row on the event loop's next
    turn, once its response is written: the client does not wait for the bookkeeping. Its cost is known at once
    all the same, and the request is settled and logged exactly once. Every other caller of `chat` (the API
    views, the pages) finishes before it gets the outcome."""
    from generation.services import Caller, chat

    tier_limit(value="50")
    caller = Caller(user_id=user.pk, api_key_id=None, tier=registry.tiers["free"])

    async def answered(**options) -> tuple[bool, bool, object]:
        outcome = await chat(caller=caller, registry=registry, body={"messages": MESSAGES, "max_tokens": 8},
                             endpoint="v1.chat_completions", model_id="demo", **options)
        settled_when_returned = outcome.quota.settled
        await asyncio.sleep(0)  # the loop's next turn
        settled_next_turn = outcome.quota.settled
        await quota_settles_drain()  # (with Redis, before this loop closes: as the server's shutdown does)
        return settled_when_returned, settled_next_turn, outcome

    returned, next_turn, outcome = asyncio.run(answered(finish_after_response=True))
    assert (returned, next_turn) == (False, True)
    assert outcome.cost > 0 and outcome.cost == usage_rows(1)[0].cost
    returned, _, _ = asyncio.run(answered())
    assert returned is True
    assert len(usage_rows(2)) == 2
    requests = status(user)["requests"]
    assert (requests["used"], requests["held"], requests["holds"]) == (2, 0, 0)
