"""When a hub API key was last used, without a database write per request.

Authentication calls `api_key_used` on every request: a dictionary lookup, no I/O. A process notes a key at most
once per `API_KEY_LAST_USED_SECONDS` (60 s); a background thread then writes it with one conditional UPDATE that
changes the row only when the stored time is older than that interval, so however many processes see a key, its
row is written at most about once a minute, and never by a request. `last_used_at` is therefore accurate to that
interval. A time noted but not yet written when a process is killed is lost (the next use notes it again).

The UPDATE sends no signal: it must not invalidate the key snapshot that every process serves requests from.
"""

import contextlib
import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Q

from llmhub.db import connection_heal
from registry.models import ApiKey

logger = logging.getLogger(__name__)

_NOTED_LIMIT = 50_000


class _LastUsedWriter:
    def __init__(self) -> None:
        self._interval = settings.LLMHUB["API_KEY_LAST_USED_SECONDS"]  # read once: a settings lookup costs more
        self._noted: dict[int, float] = {}  # key id → monotonic time this process last noted it
        self._pending: dict[int, float] = {}  # key id → wall-clock time of a use not written yet
        self._busy = False
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def used(self, api_key_id: int) -> None:
        now = time.monotonic()
        noted = self._noted.get(api_key_id)
        if noted is not None and now - noted < self._interval:
            return
        with self._condition:
            if len(self._noted) >= _NOTED_LIMIT:
                self._noted.clear()
            self._noted[api_key_id] = now
            self._pending[api_key_id] = time.time()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="api-key-last-used", daemon=True)
                self._thread.start()
            self._condition.notify()

    def wait_idle(self, timeout: float) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: not (self._pending or self._busy), timeout)

    def forget(self) -> None:
        with self._condition:
            self._noted.clear()
            self._interval = settings.LLMHUB["API_KEY_LAST_USED_SECONDS"]

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending)
                pending, self._pending, self._busy = self._pending, {}, True
            try:
                connection_heal()
                _write(pending)
            except Exception as error:  # the database may be down: the key is noted again at its next use
                with self._condition:
                    for api_key_id in pending:
                        self._noted.pop(api_key_id, None)
                logger.warning("API keys' last use not saved: %s", type(error).__name__)
            finally:
                with contextlib.suppress(DatabaseError):
                    connection.close()  # at most one write a minute per key: hold no connection between them
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()


def _write(pending: dict[int, float]) -> None:
    interval = timedelta(seconds=settings.LLMHUB["API_KEY_LAST_USED_SECONDS"])
    for api_key_id, used_at in pending.items():
        moment = datetime.fromtimestamp(used_at, tz=UTC)
        ApiKey.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=moment - interval),
                              pk=api_key_id).update(last_used_at=moment)


_writer = _LastUsedWriter()


def _after_fork() -> None:
    # A forked child has none of the parent's threads, and maybe a held lock.
    global _writer
    _writer = _LastUsedWriter()


os.register_at_fork(after_in_child=_after_fork)


def api_key_used(api_key_id: int) -> None:
    """Notes a use of the key (no I/O); its `last_used_at` is written off the request path."""
    _writer.used(api_key_id)


def api_key_last_used_flush(timeout: float = 5.0) -> bool:
    """Waits until every use noted so far is written (tests, shutdown)."""
    return _writer.wait_idle(timeout)


def api_key_last_used_forget() -> None:
    """Forgets which keys this process noted, and reads the interval again (tests)."""
    _writer.forget()
