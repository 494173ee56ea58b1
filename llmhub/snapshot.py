"""Process-local snapshots of database state, invalidated through a version token every process sees
(llmhub.versions: the shared cache with Redis, files beside the SQLite database without).

The hot path must not query the database once warm: it reads an immutable snapshot kept in process
memory. A change bumps the token (signals call `invalidate`), which this process sees at once and
other processes see within `REGISTRY_CACHE_CHECK_SECONDS`.

Snapshots made with `immediate=True` (prompt templates, experiments) are seen by every process from its next request
on: their invalidation also bumps one shared epoch (llmhub.versions), which the request path reads once per request
(in production in the Redis round trip it already makes for the circuit breakers) and hands to `snapshots_epoch_seen`;
a new epoch makes those snapshots check their version before serving again.

Outages: a snapshot whose rebuild fails (the database is down) keeps serving the previous one, retried at
each check. While the shared cache (Redis) is unreachable the snapshots keep serving from memory, checked
again at most once a second; one older than `SNAPSHOT_MAX_STALE_SECONDS` is rebuilt from the database, so
changes made meanwhile are still seen within that bound. An invalidation that could not reach the cache is
sent once it answers again, and a process that lost the cache rebuilds its snapshots when it returns.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction

from llmhub.db import CONNECTION_ERRORS, db_read
from llmhub.versions import EPOCH_KEY, version_bump, version_get

logger = logging.getLogger(__name__)

T = TypeVar("T")
# While the shared cache does not answer, it is asked again at most this often (per snapshot and process).
UNREACHABLE_RETRY_SECONDS = 1.0

# How many different epochs this process has seen (llmhub.versions' EPOCH_KEY): an immediate snapshot checked under an
# older count checks its version again before serving.
_epochs_seen = 0
_epoch_last: object = object()


def snapshots_epoch_seen(epoch: object) -> None:
    """The shared epoch as this request read it: when it changed, the immediate snapshots check their version
    before they serve again. Costs a comparison when it did not."""
    global _epochs_seen, _epoch_last
    if epoch != _epoch_last:
        _epoch_last = epoch
        _epochs_seen += 1


class LocalSnapshot(Generic[T]):
    def __init__(self, name: str, build: Callable[[], T], *, immediate: bool = False) -> None:
        self._key = f"llmhub:snapshot:{name}"
        self._immediate = immediate  # its changes bump the shared epoch too: seen by the next request anywhere
        self._epochs = -1  # `_epochs_seen` when its version was last checked
        self._build = db_read(build)
        self._lock = threading.Lock()
        self._value: T | None = None
        self._version: str | None = None
        self._fresh_until = 0.0
        self._built_at = 0.0
        self._dropped = False  # invalidated here: rebuild before serving, the previous value only if that fails
        self._unreachable_since: float | None = None  # the shared cache stopped answering
        self._bump_pending = False  # an invalidation the shared cache did not get

    def _warm(self) -> T | None:
        value = self._value
        if value is not None and time.monotonic() < self._fresh_until and (
                not self._immediate or self._epochs == _epochs_seen):
            return value
        return None

    def peek(self) -> T | None:
        """The value while it is fresh, else None: never builds it (safe on the event loop)."""
        return self._warm()

    def get(self) -> T:
        value = self._warm()
        if value is not None:
            return value
        current = self._value
        must_check = current is None or self._dropped or (self._immediate and self._epochs != _epochs_seen)
        if not must_check and not self._lock.acquire(blocking=False):
            return current  # another thread is checking the version right now: no need to wait for it
        if must_check:
            self._lock.acquire()
        try:
            now = time.monotonic()
            # Counted before the version is read: an epoch seen after the read may announce a newer version.
            epochs = _epochs_seen
            try:
                if self._bump_pending:
                    self._bump()
                    self._bump_pending = False
                version = version_get(self._key)
            except Exception as error:  # whatever the cache's client raises when its server is away
                self._epochs = epochs
                return self._serve_unversioned(now, error)
            if self._unreachable_since is not None:
                logger.warning("snapshot %s: the shared cache answers again after %.1f s", self._key,
                               now - self._unreachable_since)
                self._unreachable_since = None
            if self._value is None or self._dropped or version != self._version:
                # The version is read before building, so a change committed meanwhile still
                # triggers a rebuild at the next check.
                self._rebuild(version, now)
            self._fresh_until = now + settings.LLMHUB["REGISTRY_CACHE_CHECK_SECONDS"]
            self._epochs = epochs
            return self._value
        finally:
            self._lock.release()

    def _rebuild(self, version: str | None, now: float) -> None:
        try:
            value = self._build()
        except CONNECTION_ERRORS as error:
            if self._value is None:
                raise
            # Its version stays the old one: the next check tries again.
            logger.warning("snapshot %s: rebuild failed (%s); serving the previous one, built %.1f s ago",
                           self._key, type(error).__name__, now - self._built_at)
            return
        self._value, self._version, self._built_at, self._dropped = value, version, now, False

    def _serve_unversioned(self, now: float, error: Exception) -> T:
        """The shared cache is unreachable: serve from memory, rebuilt from the database past the staleness bound."""
        if self._unreachable_since is None:
            self._unreachable_since = now
            logger.warning("snapshot %s: the shared cache is unreachable (%s); serving from memory, at most %.0f s "
                           "stale", self._key, type(error).__name__, settings.LLMHUB["SNAPSHOT_MAX_STALE_SECONDS"])
        # Whatever the version is when the cache answers again, this copy is rebuilt then.
        self._version = None
        if self._value is None or self._dropped or now - self._built_at >= settings.LLMHUB["SNAPSHOT_MAX_STALE_SECONDS"]:
            self._rebuild(None, now)
        self._fresh_until = now + max(UNREACHABLE_RETRY_SECONDS, settings.LLMHUB["REGISTRY_CACHE_CHECK_SECONDS"])
        return self._value

    async def aget(self) -> T:
        value = self._warm()
        if value is not None:
            return value
        return await sync_to_async(self.get, thread_sensitive=False)()

    def invalidate(self) -> None:
        """Drops the snapshot now and, inside a transaction, again after commit: a snapshot rebuilt by
        another thread before the commit saw the old rows."""
        self._drop()
        if transaction.get_connection().in_atomic_block:
            transaction.on_commit(self._drop)

    def _bump(self) -> None:
        version_bump(self._key)
        if self._immediate:  # after the version: a process that sees the new epoch then reads the new version
            version_bump(EPOCH_KEY)

    def _drop(self) -> None:
        try:
            self._bump()
        except Exception as error:  # the cache is away: other processes see the change past the staleness bound
            self._bump_pending = True
            logger.warning("snapshot %s: invalidation not shared (%s); sent when the cache answers again",
                           self._key, type(error).__name__)
        with self._lock:
            self._dropped = True
            self._fresh_until = 0.0
