"""The in-memory snapshots through outages: a failed rebuild serves the previous snapshot, and a shared cache that does
not answer costs a request nothing (the snapshot serves from memory, within a staleness bound)."""

import asyncio
import contextvars
import gc
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import OperationalError
from redis.backoff import NoBackoff
from redis.retry import Retry

from llmhub.snapshot import UNREACHABLE_RETRY_SECONDS, LocalSnapshot

pytestmark = pytest.mark.django_db

MAX_STALE_SECONDS = 2.0


class Source:
    """What a snapshot is built from: numbered builds, or a database that has gone away."""

    def __init__(self) -> None:
        self.builds = 0
        self.down = False

    def build(self) -> int:
        if self.down:
            raise OperationalError("the connection is closed")
        self.builds += 1
        return self.builds


@pytest.fixture
def checked_every_time(settings) -> None:
    # The version tokens in the shared cache, as in production (embedded, they are files: llmhub/versions.py).
    settings.LLMHUB = {**settings.LLMHUB, "REGISTRY_CACHE_CHECK_SECONDS": 0, "SNAPSHOT_VERSIONS": "cache",
                       "SNAPSHOT_MAX_STALE_SECONDS": MAX_STALE_SECONDS}


@pytest.fixture
def silent_redis() -> Iterator[dict]:
    """A cache configuration whose Redis accepts connections and never answers (the worst kind of down)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield {"BACKEND": "django.core.cache.backends.redis.RedisCache",
           "LOCATION": f"redis://127.0.0.1:{server.getsockname()[1]}/0",
           "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2, "retry": Retry(NoBackoff(), 0)}}
    server.close()


def test_it_serves_the_previous_snapshot_when_a_rebuild_fails(checked_every_time, caplog):
    source = Source()
    snapshot = LocalSnapshot("test-rebuild", source.build)
    assert snapshot.get() == 1

    source.down = True
    snapshot.invalidate()

    assert snapshot.get() == 1
    assert "snapshot llmhub:snapshot:test-rebuild: rebuild failed (OperationalError); serving the previous one, built" \
        in caplog.text
    source.down = False
    assert snapshot.get() == 2


def test_it_raises_the_database_error_when_there_is_no_previous_snapshot(checked_every_time):
    source = Source()
    source.down = True
    snapshot = LocalSnapshot("test-cold", source.build)

    with pytest.raises(OperationalError):
        snapshot.get()
    assert source.builds == 0


def test_it_serves_from_memory_while_the_cache_does_not_answer_and_resumes_after(
    checked_every_time, silent_redis, settings, caplog
):
    source = Source()
    snapshot = LocalSnapshot("test-unreachable", source.build)
    assert snapshot.get() == 1
    working_cache = settings.CACHES["default"]

    settings.CACHES = {"default": silent_redis}
    assert snapshot.get() == 1
    assert "the shared cache is unreachable (TimeoutError); serving from memory" in caplog.text
    started = time.monotonic()
    assert all(snapshot.get() == 1 for _ in range(50))
    assert time.monotonic() - started < 0.1, "within the back-off the cache is not asked"

    # Past the staleness bound the snapshot is rebuilt from its source.
    time.sleep(MAX_STALE_SECONDS + 0.1)
    assert snapshot.get() == 2

    settings.CACHES = {"default": working_cache}
    time.sleep(UNREACHABLE_RETRY_SECONDS + 0.1)
    assert snapshot.get() == 3, "a process that lost the cache rebuilds once when it answers again"
    assert "the shared cache answers again" in caplog.text
    assert snapshot.get() == 3


def test_it_sends_an_invalidation_the_cache_missed_once_it_answers(checked_every_time, silent_redis, settings, caplog):
    source = Source()
    snapshot = LocalSnapshot("test-missed", source.build)
    assert snapshot.get() == 1
    version = cache.get("llmhub:snapshot:test-missed")
    working_cache = settings.CACHES["default"]

    settings.CACHES = {"default": silent_redis}
    snapshot.invalidate()  # another process would not hear of it now

    assert "snapshot llmhub:snapshot:test-missed: invalidation not shared (TimeoutError)" in caplog.text
    settings.CACHES = {"default": working_cache}
    assert snapshot.get() == 2
    assert cache.get("llmhub:snapshot:test-missed") not in (None, version)


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


@pytest.mark.services
def test_it_checks_versions_over_a_bounded_number_of_redis_connections(settings_llmhub_checks_always) -> None:
    # Under ASGI each request is its own asyncio task, and Django's `cache` is one client per task: a version check
    # per request used to open a Redis connection per request, closed only by the garbage collector.
    snapshot = LocalSnapshot("test-connections", dict)
    redis_port = urlsplit(django_settings.REDIS_URL).port or 6379

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
    settings.LLMHUB = {**settings.LLMHUB, "REGISTRY_CACHE_CHECK_SECONDS": 0, "SNAPSHOT_VERSIONS": "cache"}


@pytest.mark.parametrize("breakers_where", ["beside the epoch", "in process memory"])
def test_an_immediate_snapshot_checks_its_version_at_the_next_epoch_read(settings, breakers_where) -> None:
    # Another process's change (its version and then the epoch bumped) is served at the next request here, however
    # long the check interval; a snapshot that is not immediate keeps the interval. With Redis the epoch is read with
    # the breakers, or on its own when they live elsewhere; embedded, from its file.
    from generation.services import breakers_and_epoch_read
    from llmhub.versions import EPOCH_KEY, version_bump

    settings.LLMHUB = {**settings.LLMHUB, "REGISTRY_CACHE_CHECK_SECONDS": 3600}
    if breakers_where == "in process memory":
        settings.LLMHUB = {**settings.LLMHUB, "HEALTH_REDIS_URL": ""}
    immediate, interval = Source(), Source()
    snapshots = (LocalSnapshot("test-immediate", immediate.build, immediate=True),
                 LocalSnapshot("test-interval", interval.build))
    asyncio.run(breakers_and_epoch_read())
    assert [snapshot.get() for snapshot in snapshots] == [1, 1]

    for snapshot in snapshots:  # what another process's invalidation does
        version_bump(snapshot._key)
    version_bump(EPOCH_KEY)
    assert [snapshot.get() for snapshot in snapshots] == [1, 1]  # no request has read the epoch yet

    asyncio.run(breakers_and_epoch_read())
    assert [snapshot.get() for snapshot in snapshots] == [2, 1]
    asyncio.run(breakers_and_epoch_read())  # the same epoch again: no new check
    assert [snapshot.get() for snapshot in snapshots] == [2, 1] and immediate.builds == 2


def test_the_request_paths_epoch_sees_every_bump_and_a_file_made_anew(settings, tmp_path, monkeypatch) -> None:
    # Embedded, a request reads the epoch from the file mapped into memory: a bump (written in place) shows at once;
    # a file removed and made again (its folder deleted) is mapped anew within the check interval.
    from llmhub import versions

    settings.LLMHUB = {**settings.LLMHUB, "SNAPSHOT_VERSIONS": "files", "SNAPSHOT_VERSIONS_DIR": str(tmp_path / "v")}
    first = versions.epoch_get()
    assert first == versions.version_get(versions.EPOCH_KEY)
    versions.version_bump(versions.EPOCH_KEY)
    bumped = versions.epoch_get()
    assert bumped != first and bumped == versions.version_get(versions.EPOCH_KEY)

    for name in os.listdir(tmp_path / "v"):
        os.remove(tmp_path / "v" / name)
    os.rmdir(tmp_path / "v")
    versions.version_bump(versions.EPOCH_KEY)  # a new file
    remade = versions.version_get(versions.EPOCH_KEY)
    monkeypatch.setattr(versions, "_MAPPING_CHECK_SECONDS", 0.0)
    assert versions.epoch_get() == remade
    versions.version_bump(versions.EPOCH_KEY)
    monkeypatch.setattr(versions, "_MAPPING_CHECK_SECONDS", 3600.0)
    assert versions.epoch_get() == versions.version_get(versions.EPOCH_KEY)  # the new file is the one mapped
