"""The batched usage-log writer: requests queue their usage in memory, a background thread writes it.

`usage_record` appends to an in-process queue and returns; a daemon thread, started on the first record,
writes the queue with `bulk_create(ignore_conflicts=True)` every `LLMHUB["USAGE_FLUSH_INTERVAL_SECONDS"]`
(0.25 s), or as soon as `LLMHUB["USAGE_BATCH_SIZE"]` (500) rows are waiting. `request_id` is unique, so a
row written twice (a retried flush, a duplicate record) exists once.

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
import functools
import itertools
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from decimal import Decimal
from types import FrameType
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, DatabaseError, DataError, IntegrityError, connection, connections, transaction

from llmhub.background import thread_priority_lower
from llmhub.db import connection_heal
from usage.entries import entry_encode, route_explained
from usage.metrics import usage_metrics_observe
from usage.spool import (
    SpoolSegments,
    spool_drain,
    spool_folder,
    spool_lock_open,
    spool_lock_release,
    spool_lock_try,
    spool_segments,
)

if TYPE_CHECKING:
    from usage.billing import BillingEventEntry
    from usage.entries import UsageEntry

logger = logging.getLogger(__name__)

MAX_PENDING = 100_000
# Errors that come back however often a batch is retried: a value the database or its field refuses.
REFUSED = (IntegrityError, DataError, ValidationError, ValueError, TypeError)
MAX_BACKOFF_SECONDS = 5.0
DROPS_LOG_SECONDS = 10.0
EXIT_FLUSH_SECONDS = 10.0
COPY_FROM_ROWS = 50  # PostgreSQL: batches at least this large go through COPY
SPOOL_LOCK_RETRY_SECONDS = 1.0  # while another process drains the spool (a consumer), how often to try its lock


def rows_insert(entries: Sequence[UsageEntry | BillingEventEntry]) -> None:
    """Write one batch; a row whose request_id is already in the log is skipped by the database. Billing events
    queued among the rows (usage/billing.py: thresholds crossed on the Redis quota back end) are written in the
    same transaction, an event whose dedupe key is taken already skipped."""
    from usage.billing import BillingEventEntry, billing_events_insert
    from usage.models import UsageLog

    events = [entry for entry in entries if type(entry) is BillingEventEntry]
    if events:
        entries = [entry for entry in entries if type(entry) is not BillingEventEntry]
    columns, sql = _insert_statement()
    try:
        # Its own atomic block: a refused batch must not break a transaction the caller may be in.
        with transaction.atomic(), connection.cursor() as cursor:
            if entries and connection.vendor == "postgresql" and len(entries) >= COPY_FROM_ROWS:
                _rows_copy(cursor, columns, entries)
            elif entries:
                # One prepared statement for the whole batch: the ORM's bulk_create (model instances, SQL
                # compiled per batch) cost 0.2-0.35 ms of the app's CPU per request under load (`make bench`).
                # A generator, not a list: each row is converted just before the driver binds it, and the driver lets
                # go of the interpreter while SQLite stores it, so a request never waits behind a whole batch's
                # conversion (500 rows: several milliseconds of Python).
                database = connections[DEFAULT_DB_ALIAS]
                cursor.executemany(sql, (_row_values(entry, database) for entry in entries))
            if events:
                billing_events_insert(events)
    except REFUSED:
        # Not transient: retrying the same batch would stall the log for good. Save what can be saved.
        _rows_insert_one_by_one([UsageLog(**_row_fields(entry)) for entry in entries])
        if events:
            try:
                with transaction.atomic():
                    billing_events_insert(events)
            except REFUSED as error:
                logger.error("%d billing events refused by the database and dropped: %s", len(events), error)


def _rows_copy(cursor, columns: tuple, entries: Sequence[UsageEntry]) -> None:
    """PostgreSQL: COPY the batch into a temporary table, then one INSERT … ON CONFLICT (request_id) DO NOTHING."""
    from usage.models import UsageLog

    quote = connection.ops.quote_name
    names = ", ".join(quote(field.column) for field in columns)
    # Built only from the model's own table and column names (quoted), never from input.
    cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS usage_incoming ON COMMIT DELETE ROWS AS "  # noqa: S608
                   f"SELECT {names} FROM {quote(UsageLog._meta.db_table)} WITH NO DATA")
    database = connections[DEFAULT_DB_ALIAS]
    with cursor.cursor.copy(f"COPY usage_incoming ({names}) FROM STDIN") as copy:
        for entry in entries:
            copy.write_row(_row_values(entry, database))
    cursor.execute(f"INSERT INTO {quote(UsageLog._meta.db_table)} ({names}) SELECT {names} FROM usage_incoming "  # noqa: S608
                   f"ON CONFLICT ({quote('request_id')}) DO NOTHING")


@functools.cache
def _insert_statement() -> tuple[tuple, str]:
    """The columns and the `INSERT … ON CONFLICT (request_id) DO NOTHING` (PostgreSQL and SQLite alike)."""
    from usage.models import UsageLog

    columns = tuple(field for field in UsageLog._meta.concrete_fields if not field.primary_key)
    quote = connection.ops.quote_name
    names = ", ".join(quote(field.column) for field in columns)
    placeholders = ", ".join(["%s"] * len(columns))
    # Built only from the model's own table and column names (quoted), never from input.
    sql = (f"INSERT INTO {quote(UsageLog._meta.db_table)} ({names}) VALUES ({placeholders}) "  # noqa: S608
           f"ON CONFLICT ({quote('request_id')}) DO NOTHING")
    return columns, sql


def _row_values(entry: UsageEntry, database) -> tuple:
    """The row as the driver binds it. `database` is this thread's connection itself, not the `connection` proxy
    (each of whose attribute reads is a thread-local lookup): with it, and with a value of its column's plain
    Python type passed as it is (what the field's own conversion would return), a row costs a few microseconds
    instead of about 150 (the writer thread's CPU was the requests' p99 at concurrency 1)."""
    columns, plain_types, attnames = _column_plan(database.vendor)
    fields = _row_fields(entry)
    return tuple(value if type(value) in plain else field.get_db_prep_save(value, database)
                 for field, plain, value in zip(columns, plain_types, map(fields.__getitem__, attnames), strict=True))


_PLAIN_TYPES = {"CharField": (str,), "BooleanField": (bool,), "FloatField": (float,),
                **dict.fromkeys(("PositiveIntegerField", "PositiveSmallIntegerField", "IntegerField", "BigIntegerField",
                                 "SmallIntegerField", "AutoField", "BigAutoField"), (int,))}


@functools.cache
def _column_plan(vendor: str) -> tuple[tuple, tuple[frozenset, ...], tuple[str, ...]]:
    """The insert's columns, the types each stores as they are, and their attribute names. None is plain too when
    the column is nullable; JSON, dates and decimals always go through the field (their database form differs per
    back end), and so do integers on PostgreSQL (typed there as Int2/Int4/Int8 for the server)."""
    columns, _ = _insert_statement()
    plain_types = []
    for field in columns:
        kind = (field.target_field if field.is_relation else field).get_internal_type()
        plain = _PLAIN_TYPES.get(kind, ())
        if vendor == "postgresql" and int in plain and not field.is_relation:
            plain = ()
        plain_types.append(frozenset((*plain, type(None)) if plain and field.null else plain))
    return columns, tuple(plain_types), tuple(field.attname for field in columns)


def _row_fields(entry: UsageEntry) -> dict:
    fields = {name: getattr(entry, name) for name in entry.__slots__}
    fields["route"] = route_explained(fields["route"])
    for name, max_length in _string_limits().items():
        value = fields[name]
        if len(value) > max_length:
            fields[name] = value[:max_length]
    for name, (low, high) in _number_ranges().items():
        value = fields[name]
        # Only numbers: a value of another type is the database's to refuse (and the row logged as dropped).
        if isinstance(value, int | Decimal) and not low <= value <= high:
            fields[name] = min(max(value, low), high)
            logger.warning("usage row %s: %s=%s out of range, stored as %s", entry.request_id, name, value,
                           fields[name])
    return fields


@functools.cache
def _number_ranges() -> dict[str, tuple]:
    # A CHECK constraint (PositiveIntegerField) or the column's size would refuse the whole row for one count.
    from usage.models import UsageLog

    ranges = {}
    for field in UsageLog._meta.concrete_fields:
        kind = field.get_internal_type()
        if kind in ("PositiveIntegerField", "PositiveSmallIntegerField"):
            ranges[field.name] = (0, 2**31 - 1 if kind == "PositiveIntegerField" else 2**15 - 1)
        elif kind == "DecimalField":
            ranges[field.name] = (Decimal(0), Decimal(10) ** (field.max_digits - field.decimal_places) - 1)
    return ranges


@functools.cache
def _string_limits() -> dict[str, int]:
    # PostgreSQL refuses an over-long string: truncate rather than lose the row.
    from usage.models import UsageLog

    return {
        field.name: field.max_length
        for field in UsageLog._meta.concrete_fields
        if field.get_internal_type() == "CharField" and field.max_length
    }


def _rows_insert_one_by_one(rows: list) -> None:
    from django.contrib.auth import get_user_model

    from registry.models import ApiKey

    for attribute, model in (("user_id", get_user_model()), ("api_key_id", ApiKey)):
        ids = {getattr(row, attribute) for row in rows} - {None}
        existing = set(model.objects.filter(pk__in=ids).values_list("pk", flat=True)) if ids else set()
        for row in rows:
            if getattr(row, attribute) not in existing:
                setattr(row, attribute, None)
    columns, sql = _insert_statement()
    for row in rows:
        try:
            # The same ON CONFLICT (request_id) statement: bulk_create(ignore_conflicts=True) is SQLite's
            # INSERT OR IGNORE, which would drop a row failing a CHECK constraint without a word.
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(sql, [field.get_db_prep_save(getattr(row, field.attname), connection)
                                     for field in columns])
        except REFUSED as error:
            logger.error("usage row %s refused by the database and dropped: %s", row.request_id, error)


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
            if time.monotonic() < self._spool_retry_at or not spool_segments(folder):
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
