"""usage/stream.py: production hands usage rows to a Redis stream and `usage_consume` writes them, exactly once each,
and an app process killed with SIGKILL right after answering loses no row of an answered request."""

import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit, urlunsplit

import httpx2
import pytest
from django.conf import settings as django_settings
from django.db import connection

from llmhub.testing import free_port
from usage.models import UsageLog
from usage.stream import STREAM, stream_append, stream_consume
from usage.writer import writer

pytestmark = pytest.mark.django_db(transaction=True)

REQUESTS = 60


def _database_url() -> str:
    database = urlsplit(os.environ["DATABASE_URL"])._replace(path="/" + connection.settings_dict["NAME"])
    return urlunsplit(database)


@pytest.fixture
def stream_url(private_redis, settings) -> str:
    import redis

    redis.Redis.from_url(private_redis.url).delete(STREAM)
    settings.LLMHUB = {**settings.LLMHUB, "USAGE_STREAM_URL": private_redis.url}
    return private_redis.url


def test_it_writes_each_streamed_row_once_even_when_read_twice(stream_url, make_entry) -> None:
    import asyncio

    import redis

    entries = [make_entry() for _ in range(300)]

    async def append_all() -> list[bool]:
        sent = []
        for entry in entries:
            while not (appended := stream_append(entry)):  # the first call opens the connection
                await asyncio.sleep(0.01)
            sent.append(appended)
        await asyncio.sleep(0.2)
        return sent

    assert all(asyncio.run(append_all()))
    client = redis.Redis.from_url(stream_url)
    assert client.xlen(STREAM) == 300
    duplicates = client.xrange(STREAM, count=50)  # as if a consumer had died after writing, before acknowledging
    for _, fields in duplicates:
        client.xadd(STREAM, fields)

    assert stream_consume(url=stream_url, batch_size=100, once=True) == 350
    assert UsageLog.objects.count() == 300
    assert set(UsageLog.objects.values_list("request_id", flat=True)) == {entry.request_id for entry in entries}
    assert client.xlen(STREAM) == 0
    assert writer.pending == 0  # nothing went through the in-process writer


@pytest.mark.services
def test_it_loses_no_answered_row_when_the_app_is_killed(stream_url, registry, free_user, api_key_for,
                                                         simulated_upstream) -> None:
    key = api_key_for(free_user)
    port = free_port()
    # The in-process writer would write only every 10 minutes: every row must come through the stream.
    env = {**os.environ, "DATABASE_URL": _database_url(), "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
           "DJANGO_SECURE_SSL_REDIRECT": "false", "LLMHUB_USAGE_STREAM_URL": stream_url,
           "LLMHUB_USAGE_FLUSH_INTERVAL_SECONDS": "600"}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "llmhub.asgi:application", "--host", "127.0.0.1",
                               "--port", str(port), "--lifespan", "on", "--no-access-log"],
                              cwd=django_settings.BASE_DIR, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}
        headers = {"Authorization": f"Bearer {key}"}
        deadline = time.monotonic() + 60
        while True:  # started (the first answers may still go through the in-process writer: not counted)
            try:
                if httpx2.post(url, json=body, headers=headers, timeout=10).status_code == 200:
                    break
            except httpx2.HTTPError:
                assert time.monotonic() < deadline, "the app did not start"
                time.sleep(0.2)
        time.sleep(0.5)  # its connection to the stream is open
        answered = []
        with httpx2.Client(timeout=10) as client:
            for _ in range(REQUESTS):
                response = client.post(url, json=body, headers=headers)
                assert response.status_code == 200
                answered.append(response.headers["x-request-id"])
        server.send_signal(signal.SIGKILL)  # no exit handler runs
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    stream_consume(url=stream_url, once=True)
    logged = set(UsageLog.objects.values_list("request_id", flat=True))
    assert len(answered) == REQUESTS
    assert [request_id for request_id in answered if request_id not in logged] == []
