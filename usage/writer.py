"""The batched usage-log writer: requests hand their usage on, a background thread writes it.

`record` (called by `usage_record`) appends the entry to the spool when there is one (usage/spool.py: the embedded
mode, one `os.write` of a JSON line; the row then survives the process), else to an in-process queue, and returns. A
daemon thread, started on the first record, wakes every `LLMHUB["USAGE_FLUSH_INTERVAL_SECONDS"]` (0.25 s), or as soon
as `LLMHUB["USAGE_BATCH_SIZE"]` (500) rows are queued: it writes the queue (usage/rows.py), rolls the spool's segment,
and drains the spool unless another process holds its lock (`manage.py usage_consume`; then it tries again about
once a second). `request_id` is unique, so a row written twice (a retried flush, a duplicate record) exists once.
The guarantees below are the in-memory queue's; spooled rows are on disk and wait there for a drain (database down,
exit before one: the next drain, by any process, writes them).

What is guaranteed:
- Database down: a failed batch stays queued and is retried with backoff (up to 5 s apart) until the
  database is back. The queue holds at most 100,000 rows; past that, new rows are dropped, logged as errors
  with a running count (at most every 10 s).
- Normal exit or restart: an `atexit` handler writes everything still queued, retrying for up to 10 s if
  the database is failing.
- SIGTERM: uvicorn drains its connections, then restores the SIGTERM handler it found and raises the
  signal again, which by default kills the process without `atexit`. So `connect()` (at start-up) puts a
  handler over the default action that writes the queue and then dies of SIGTERM as before; that covers
  one uvicorn process and any script or command. uvicorn's `--workers N` processes load the app after
  setting their own handlers: there the ASGI app routes the lifespan protocol to `asgi_lifespan` (served
  with `--lifespan on`), which writes the queue at `lifespan.shutdown`, after the drain. Celery's forked
  worker processes, which skip `atexit`, write it on `worker_process_shutdown`.
- A row the database refuses for good (a string too long, a user deleted meanwhile) never blocks the
  queue: strings are cut to their column's length, counts out of their column's range (a negative token
  count) are brought into it with a warning, a deleted user or key becomes NULL (as `on_delete=SET_NULL`
  would have made it), and a row still refused is dropped with an error log naming its request_id (never
  silently: the one-by-one retry does not use SQLite's INSERT OR IGNORE, which hides CHECK failures).
- Not guaranteed: a process killed without running its exit handlers (SIGKILL, OOM kill, a power cut)
  loses the rows it had not written yet: at most one flush interval's worth (0.25 s by default), or
  everything queued during a database outage.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import signal
import threading
import time
from collections import deque
from types import FrameType
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError, connection

from llmhub.background import thread_priority_lower
from llmhub.db import connection_heal
from usage.entries import entry_encode
from usage.metrics import usage_metrics_observe
from usage.rows import rows_insert
from usage.spool import (
    SpoolSegments,
    spool_drain,
    spool_folder,
    spool_lock_open,
    spool_lock_release,
    spool_lock_try,
)

if TYPE_CHECKING:
    from usage.entries import BillingEventEntry, UsageEntry

logger = logging.getLogger(__name__)

MAX_PENDING = 100_000
MAX_BACKOFF_SECONDS = 5.0
DROPS_LOG_SECONDS = 10.0
EXIT_FLUSH_SECONDS = 10.0
SPOOL_LOCK_RETRY_SECONDS = 1.0  # while another process drains the spool (a consumer), how often to try its lock


class UsageWriter:
    def __init__(self) -> None:
        self._spool = SpoolSegments()
        self._spool_folder: str | None = None
        self._spool_lock: int | None = None
        self._reset()
        atexit.register(self.stop, timeout=EXIT_FLUSH_SECONDS)
        # A forked child (gunicorn, celery prefork) starts with its own empty queue and no thread: the rows
        # queued before the fork are the parent's to write.
        os.register_at_fork(after_in_child=self._reset)

    def options_load(self) -> None:
        # Read once, not per record: a settings lookup costs more than queuing the entry.
        self._interval = float(settings.LLMHUB.get("USAGE_FLUSH_INTERVAL_SECONDS", 0.25))
        self._batch_size = max(1, int(settings.LLMHUB.get("USAGE_BATCH_SIZE", 500)))
        folder = spool_folder()
        if folder != self._spool_folder:  # a test turning the spool on or off: the old segment is left to drains
            self._spool.close()
            self._spool_lock_close()
            self._spool_folder = folder

    def _reset(self) -> None:
        self._spool.after_fork()
        self._spool_lock_close()
        self._spooled: deque[UsageEntry] = deque()  # handed to the spool, not counted in the metrics yet
        self._spool_retry_at = 0.0
        self.options_load()
        self._pending: deque[UsageEntry] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._dropped = 0
        self._dropped_logged_at = -DROPS_LOG_SECONDS
        self._database = None
        self._observed = 0  # the entries at the queue's head already counted in the metrics

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, entry: UsageEntry | BillingEventEntry) -> None:
        try:
            if self._spool_folder is not None and self._spool_append(entry):
                if self._thread is None:
                    with self._lock:
                        self._thread_start()
                elif self._spool.rows == self._batch_size:  # a burst: the segment is rolled (and drained) at once
                    self._wake.set()
                return
            with self._lock:
                full = len(self._pending) >= MAX_PENDING
                if full:
                    self._dropped += 1
                    dropped = self._dropped
                else:
                    if not self._pending:
                        self._database = settings.DATABASES["default"]["NAME"]
                    self._pending.append(entry)
                    waiting = len(self._pending)
                self._thread_start()
            if full:
                # Loud, but at most every few seconds: the queue is full because something is badly wrong.
                if time.monotonic() - self._dropped_logged_at >= DROPS_LOG_SECONDS:
                    self._dropped_logged_at = time.monotonic()
                    logger.error("usage log queue full (%d rows waiting): %d usage rows dropped, the latest %s",
                                 MAX_PENDING, dropped, entry.request_id)
            elif waiting >= self._batch_size:
                self._wake.set()
        except Exception:
            logger.exception("usage row %s could not be queued", getattr(entry, "request_id", "?"))

    def _thread_start(self) -> None:
        """With `_lock` held."""
        if self._thread is None and self._interval > 0:
            self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
            self._thread.start()

    def _spool_append(self, entry: UsageEntry | BillingEventEntry) -> bool:
        """The entry handed to the kernel (usage/spool.py); False when the in-memory queue must take it."""
        try:
            appended = self._spool.append(entry_encode(entry), self._spool_folder)
        except OSError as error:
            logger.warning("usage row %s not taken by the spool (%s): queued in memory",
                           getattr(entry, "request_id", "?"), error)
            return False
        if appended:
            self._spooled.append(entry)
        return appended

    def flush(self, timeout: float = 5.0) -> int:
        """Write what this process recorded so far: the queue a batch at a time, and its spooled rows (drained
        here, or by the process holding the spool's lock, waited for up to `timeout`). Raises DatabaseError with
        the rows still queued or spooled."""
        deadline = time.monotonic() + timeout
        if not self._flush_lock.acquire(timeout=timeout):
            raise TimeoutError(f"another usage flush is still running after {timeout} s")
        try:
            written = self._queue_write()
            if self._spool_folder is not None:
                written += self._spool_write(deadline)
            return written
        finally:
            self._flush_lock.release()

    def _queue_write(self) -> int:
        """Writes the in-memory queue (with the flush lock held)."""
        database = settings.DATABASES["default"]["NAME"]
        if self._pending and database != self._database:
            # Only a test run does this: its test database is gone when the exit flush runs, and its
            # rows must not land in the database the settings name again.
            with self._lock:
                logger.warning("usage log: %d rows queued for database %s dropped: the process now uses %s",
                               len(self._pending), self._database, database)
                self._pending.clear()
                self._observed = 0
        # The metrics hook: rows are counted once, when a flush first sees them (even while the database is down).
        usage_metrics_observe(self._unobserved())
        target = self._observed  # the rows just counted or before: none appended since is written uncounted
        batch_size = self._batch_size
        written = 0
        while written < target:
            # Only this (locked) flush removes entries, and only from the left: a batch is taken off the
            # queue once the database has it.
            batch = list(itertools.islice(self._pending, min(batch_size, target - written)))
            if not batch:
                break
            rows_insert(batch)
            with self._lock:
                for _ in batch:
                    self._pending.popleft()
                self._observed -= len(batch)
            written += len(batch)
        return written

    def _spool_write(self, deadline: float) -> int:
        """This process's spooled rows reach the database: its segment rolled, then drained here, or by whoever
        holds the spool's lock (with the flush lock held)."""
        folder = self._spool_folder
        usage_metrics_observe(self._spooled_take())
        self._spool.roll(folder)
        written = 0
        while self._spool.closed(folder):
            if self._spool_lock_take(folder):
                try:
                    written += spool_drain(folder, batch_size=self._batch_size)
                finally:
                    spool_lock_release(self._spool_lock)
                continue
            if time.monotonic() >= deadline:
                raise TimeoutError(f"usage spool {folder}: this process's rows are still waiting for the process "
                                   "that holds the spool's lock")
            time.sleep(0.02)
        return written

    def _spool_serve(self) -> None:
        """The writer thread's tick: counts the spooled rows, rolls the segment, and drains the spool unless
        another process holds its lock (then tries again about once a second)."""
        folder = self._spool_folder
        with self._flush_lock:
            usage_metrics_observe(self._spooled_take())
            self._spool.roll(folder)
            if time.monotonic() < self._spool_retry_at:
                return
            if not self._spool_lock_take(folder):
                self._spool_retry_at = time.monotonic() + SPOOL_LOCK_RETRY_SECONDS
                return
            try:
                spool_drain(folder, batch_size=self._batch_size)
            finally:
                spool_lock_release(self._spool_lock)

    def _spool_lock_take(self, folder: str) -> bool:
        if self._spool_lock is None:
            self._spool_lock = spool_lock_open(folder)
        return spool_lock_try(self._spool_lock)

    def _spool_lock_close(self) -> None:
        # After a fork, the child's copy only: the lock stays the parent's while it holds it.
        if self._spool_lock is not None:
            with contextlib.suppress(OSError):
                os.close(self._spool_lock)
            self._spool_lock = None

    def _spooled_take(self) -> list[UsageEntry]:
        taken = []
        with contextlib.suppress(IndexError):
            while True:
                taken.append(self._spooled.popleft())
        return taken

    def _spool_waiting(self) -> bool:
        folder = self._spool_folder
        return folder is not None and bool(self._spool.rows or self._spool.closed(folder))

    def _unobserved(self) -> list[UsageEntry]:
        """The queued entries not counted in the metrics yet; they count from now on. Only a flush, holding the
        flush lock, calls it (and only a flush changes `_observed`)."""
        with self._lock:
            fresh = list(itertools.islice(self._pending, self._observed, None))
            self._observed = len(self._pending)
        return fresh

    def stop(self, timeout: float = EXIT_FLUSH_SECONDS) -> None:
        """Stop the background thread and write everything queued (retried until `timeout` on database errors)."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        backoff = 0.1
        while self._pending or self._spool_waiting():
            try:
                self.flush(timeout=max(0.0, deadline - time.monotonic()))
            except (DatabaseError, TimeoutError) as error:
                if time.monotonic() + backoff > deadline:
                    if self._pending:
                        logger.error("usage log: %d rows could not be written before exit and are lost: %s",
                                     len(self._pending), error)
                    if self._spool_waiting():
                        logger.warning("usage log: this process's spooled rows stay in %s for the next drain: %s",
                                       self._spool_folder, error)
                    break
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
        self._spool.close()  # its last segment: empty (removed), or left for the next drain
        with self._lock:
            self._thread = None
            self._stopping.clear()
            self._wake.clear()

    def _run(self) -> None:
        thread_priority_lower()
        backoff = 0.0
        try:
            while not self._stopping.is_set():
                interval = self._interval
                if backoff:
                    # While the database is failing, a full queue must not turn the backoff into a busy loop.
                    self._stopping.wait(backoff)
                else:
                    self._wake.wait(interval)
                self._wake.clear()
                spooling = self._spool_folder is not None
                if not (self._pending or spooling) or self._stopping.is_set():
                    continue
                try:
                    # As Django does before each request: with DEBUG on, this thread's connection would otherwise
                    # keep the SQL of its last 9,000 batches (megabytes nobody reads).
                    connection.queries_log.clear()
                    if spooling:
                        self._spool_serve()
                    if self._pending:
                        connection_heal()
                        if not self._flush_lock.acquire(timeout=MAX_BACKOFF_SECONDS):
                            raise TimeoutError("another usage flush is still running")
                        try:
                            self._queue_write()
                        finally:
                            self._flush_lock.release()
                    backoff = 0.0
                except Exception as error:
                    backoff = min(max(backoff * 2, interval, 0.05), MAX_BACKOFF_SECONDS)
                    logger.warning("usage log flush failed (%d rows kept, retry in %.2f s): %s",
                                   len(self._pending), backoff, error)
                    _connection_discard()
        finally:
            _connection_discard()


def _connection_discard() -> None:
    # django.db.connection is this thread's own: closing it makes the next flush reconnect.
    try:
        connection.close()
    except DatabaseError:
        logger.debug("closing the usage writer's database connection failed", exc_info=True)


writer = UsageWriter()


async def asgi_lifespan(scope: dict, receive, send) -> None:
    """The ASGI lifespan protocol, for the app to route `scope["type"] == "lifespan"` to. uvicorn sends
    `lifespan.shutdown` after it has drained every connection, in each worker process: the place to write
    what the last requests queued."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.to_thread(writer.stop)
            await send({"type": "lifespan.shutdown.complete"})
            return


def _flush_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # uvicorn, when it finds this handler installed, runs its graceful shutdown first, then puts this handler
    # back and raises the signal again: the flush then comes after the last request. The flush gets its own
    # thread, since this one may be running an event loop (no ORM call there).
    flusher = threading.Thread(target=writer.stop, name="usage-exit-flush")
    flusher.start()
    flusher.join()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _flush_before_worker_exit(**kwargs) -> None:
    writer.stop()


def _options_reload(*, setting: str, **kwargs) -> None:
    if setting == "LLMHUB":
        writer.options_load()


def connect() -> None:
    """Flush on the exits that skip `atexit` (SIGTERM left at its default; Celery's forked workers: llmhub.celery
    connects `worker_process_shutdown`, so a web process never imports Celery); follow settings changed by tests."""
    from django.core.signals import setting_changed

    setting_changed.connect(_options_reload, dispatch_uid="usage-writer-options")
    # Only over the default action (death): a handler someone installed on purpose stays theirs.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _flush_on_sigterm)
