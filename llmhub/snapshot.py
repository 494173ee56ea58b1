"""Process-local snapshots of database state, invalidated through a version token in the shared cache.

The hot path must not query the database once warm: it reads an immutable snapshot kept in process
memory. A change bumps the token (signals call `invalidate`), which this process sees at once and
other processes see within `REGISTRY_CACHE_CHECK_SECONDS`.
"""

import threading
import time
import uuid
from collections.abc import Callable
from typing import Generic, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction

from llmhub.cache import cache

T = TypeVar("T")


class LocalSnapshot(Generic[T]):
    def __init__(self, name: str, build: Callable[[], T]) -> None:
        self._key = f"llmhub:snapshot:{name}"
        self._build = build
        self._lock = threading.Lock()
        self._value: T | None = None
        self._version: str | None = None
        self._fresh_until = 0.0

    def _warm(self) -> T | None:
        value = self._value
        if value is not None and time.monotonic() < self._fresh_until:
            return value
        return None

    def get(self) -> T:
        value = self._warm()
        if value is not None:
            return value
        with self._lock:
            version = cache.get(self._key)
            if version is None:
                cache.add(self._key, uuid.uuid4().hex, timeout=None)
                version = cache.get(self._key)
            if self._value is None or version != self._version:
                # The version is read before building, so a change committed meanwhile still
                # triggers a rebuild at the next check.
                self._value = self._build()
                self._version = version
            self._fresh_until = time.monotonic() + settings.LLMHUB["REGISTRY_CACHE_CHECK_SECONDS"]
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

    def _drop(self) -> None:
        cache.set(self._key, uuid.uuid4().hex, timeout=None)
        with self._lock:
            self._value = None
