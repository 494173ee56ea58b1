import asyncio
import contextvars
import gc
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from llmhub.snapshot import LocalSnapshot

pytestmark = [pytest.mark.services]


def _sockets_to(port: int) -> int:
    """This process's TCP connections to `port` (from /proc: no client-side bookkeeping to trust)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def test_it_checks_versions_over_a_bounded_number_of_redis_connections(settings_llmhub_checks_always) -> None:
    # Under ASGI each request is its own asyncio task, and Django's `cache` is one client per task: a version check
    # per request used to open a Redis connection per request, closed only by the garbage collector.
    snapshot = LocalSnapshot("test-connections", dict)
    redis_port = urlsplit(settings.REDIS_URL).port or 6379

    async def requests() -> None:
        for _ in range(30):
            await asyncio.get_running_loop().create_task(snapshot.aget())

    gc.disable()
    try:
        before = _sockets_to(redis_port)
        # A fresh context, as a server's: the test's own has a cache client already (the autouse fixtures').
        contextvars.Context().run(asyncio.run, requests())
        opened = _sockets_to(redis_port) - before
    finally:
        gc.enable()
    assert opened <= 2


@pytest.fixture
def settings_llmhub_checks_always(settings) -> None:
    settings.LLMHUB = {**settings.LLMHUB, "REGISTRY_CACHE_CHECK_SECONDS": 0}
