"""The in-memory snapshots through outages: a failed rebuild serves the previous snapshot, and a shared cache that does
not answer costs a request nothing (the snapshot serves from memory, within a staleness bound)."""

import socket
import time
from collections.abc import Iterator

import pytest
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
