"""The two back ends of usage.quotas: one interface, one atomic step per decision.

- `RedisQuotaBackend` (production: REDIS_URL set): one Lua script per decision takes every counter of a
  request in one round trip. A counter is a hash (`used`, `held`, `refused`) that expires after its period; a
  reservation is one record in its owner's hash of holds (every counter's amount), with its expiry time in the
  owner's sorted set.
- `DatabaseQuotaBackend` (no Redis): on PostgreSQL a conditional `UPDATE … SET held = held + n WHERE used + held + n
  <= limit` over every counter in one statement; a reservation is one row of `QuotaHold` (every counter's amount).
  On SQLite (embedded) the same tables live in a file of their own beside the database (`quota_database_path`), so
  a decision never waits for the usage log's writes.

Amounts are integers (requests, tokens, or cost in units of 1e-10). A reservation that is never settled (its
process crashed) expires after `hold_seconds`: the next decision that would be refused because of it, or the
periodic sweep, gives its amount back first.
"""

import asyncio
import atexit
import collections
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache, partial
from typing import NamedTuple

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections, transaction

from llmhub.redis_client import RedisClient, RedisUnavailable, Script, bulk
from usage.billing import billing_events_insert_sql, quota_thresholds_crossed
from usage.entries import Charge
from usage.writer import writer

logger = logging.getLogger(__name__)


class QuotaBackendError(Exception):
    """The back end could not decide (unreachable, timed out, refused the command)."""


class Decision(NamedTuple):
    refused: int | None  # index of the first charge without room; None: every counter took its share
    used: tuple[int, ...]  # per charge, after the decision
    held: tuple[int, ...]


class QuotaBackend:
    async def reserve(self, *, request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
        raise NotImplementedError

    def reserve_sent(self, *, request_id: str, charges: tuple[Charge, ...],
                     hold_seconds: float) -> Awaitable[Decision] | None:
        """`reserve` with its command on the wire before this returns, to be awaited later; None when this back end
        cannot (then `reserve`)."""
        return None

    async def settle(self, *, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                     hold_seconds: float) -> None:
        raise NotImplementedError

    def settle_nowait(self, *, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                      hold_seconds: float) -> None:
        """As `settle`, without waiting for the back end: the settle is sent (or queued) before this returns, so
        this process's later decisions come after it; a failure is logged (the reservation then expires)."""
        raise NotImplementedError

    async def drain(self) -> None:
        """Waits until every settle sent without waiting has reached the back end (at shutdown)."""

    async def counters(self, keys: list[str]) -> dict[str, dict[str, int]]:
        """`used`, `held`, `refused` and `holds` (reservations not settled) of each counter: for tests and pages."""
        raise NotImplementedError


# --- Redis ----------------------------------------------------------------------------------------------------

# The owner's reservations live beside its counters (one hash tag, so a cluster keeps them on one node): a hash
# `<owner>:holds` (request id -> "counter amount counter amount ...") and a sorted set `<owner>:x` of their expiry
# times. A reservation is thus one record whatever the number of counters, and a counter's TTL is set once, when
# it is created (its key names its period window, so its end never changes).
_RESERVE = """
-- KEYS: the owner's holds, their expiry set, then the counters. ARGV: hold ms, per counter its limit and window end
-- (ms), then the request id and per counter the amount (what changes from one request to the next comes last).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local count = #KEYS - 2
local holds, expiry, hold, id = KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2 * count + 2]
local function limit(i) return tonumber(ARGV[2 * i]) end
local function window_end(i) return tonumber(ARGV[2 * i + 1]) end
local function amount(i) return ARGV[2 * count + 2 + i] end
local state, fresh = {}, {}
local function read()
  local refused = -1
  for i = 1, count do
    local values = redis.call('HMGET', KEYS[i + 2], 'used', 'held')
    local used, held = tonumber(values[1] or '0'), tonumber(values[2] or '0')
    if refused < 0 and used + held + tonumber(amount(i)) > limit(i) then refused = i end
    state[2 * i], state[2 * i + 1], fresh[i] = used, held, not values[1] and not values[2]
  end
  return refused
end
local refused = read()
if refused > 0 then
  -- Reservations of crashed processes expire: give them back before refusing.
  local expired = redis.call('ZRANGEBYSCORE', expiry, '-inf', now)
  if #expired > 0 then
    for _, owner in ipairs(expired) do
      local record = redis.call('HGET', holds, owner)
      if record then
        for key, amount in string.gmatch(record, '(%S+) (%S+)') do redis.call('HINCRBY', key, 'held', -tonumber(amount)) end
        redis.call('HDEL', holds, owner)
      end
    end
    redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now)
    refused = read()
  end
end
if refused > 0 then
  local key = KEYS[refused + 2]
  redis.call('HINCRBY', key, 'refused', 1)
  if fresh[refused] then redis.call('PEXPIREAT', key, window_end(refused) + hold) end
  state[1] = refused - 1
  return state
end
local record, keep = {}, 0
for i = 1, count do
  local key, taken, ends = KEYS[i + 2], amount(i), window_end(i) + hold
  if taken ~= '0' then
    redis.call('HINCRBY', key, 'held', taken)
    record[#record + 1] = key .. ' ' .. taken
    state[2 * i + 1] = state[2 * i + 1] + tonumber(taken)
  end
  if fresh[i] then redis.call('PEXPIREAT', key, ends) end
  if ends > keep then keep = ends end
end
if #record > 0 then
  redis.call('HSET', holds, id, table.concat(record, ' '))
  redis.call('ZADD', expiry, now + hold, id)
  local ttl = redis.call('PTTL', holds)  -- they live as long as the longest-lived counter they hold on
  if ttl < 0 or now + ttl < keep then
    redis.call('PEXPIREAT', holds, keep)
    redis.call('PEXPIREAT', expiry, keep)
  end
end
state[1] = -1
return state
"""

_SETTLE = """
-- KEYS: the owner's holds, their expiry set, then the counters. ARGV: hold ms, per counter its window end (ms),
-- then the request id and per counter the actual amount.
local count = #KEYS - 2
local holds, expiry, hold, id = KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[count + 2]
local reserved = {}
local used = {}
local record = redis.call('HGET', holds, id)
if record then
  redis.call('HDEL', holds, id)
  redis.call('ZREM', expiry, id)
  for key, amount in string.gmatch(record, '(%S+) (%S+)') do reserved[key] = amount end
end
for i = 1, count do
  local key, actual = KEYS[i + 2], ARGV[count + 2 + i]
  local back = reserved[key]
  if back then redis.call('HINCRBY', key, 'held', -tonumber(back)) end
  used[i] = -1
  if actual ~= '0' then used[i] = redis.call('HINCRBY', key, 'used', actual) end
  -- A reservation given back meanwhile (it expired): the counter may have gone and come back without a TTL.
  if not back then redis.call('PEXPIREAT', key, tonumber(ARGV[i + 1]) + hold) end
end
return used  -- each counter's new usage (-1: unchanged), for the billing thresholds
"""


async def _decision(reply: Awaitable) -> Decision:
    """The Decision of the reserve script's reply."""
    try:
        reply = await reply
    except RedisUnavailable as error:
        raise QuotaBackendError(str(error)) from error
    refused = reply[0]
    return Decision(refused=None if refused < 0 else refused, used=tuple(reply[1::2]), held=tuple(reply[2::2]))


def _owner_keys(counter: str) -> tuple[str, str]:
    """The holds hash and expiry set of a counter's owner (the user: its hash tag)."""
    owner = counter[:counter.index("}") + 1]
    return owner + ":holds", owner + ":x"


_RESERVE_SCRIPT, _SETTLE_SCRIPT = Script(_RESERVE), Script(_SETTLE)


class _Layout(NamedTuple):
    """The part of a request's two scripts that only changes when a limit or a period does, in Redis's wire format
    (number of keys, keys, then the static arguments), and how many items each has."""

    reserve: bytes
    reserve_count: int
    settle: bytes
    settle_count: int


@lru_cache(maxsize=1024)
def _layout(static: tuple, hold_ms: int) -> _Layout:
    """`static`: (key, limit, window end) of each charge."""
    keys = [*_owner_keys(static[0][0]), *[key for key, _, _ in static]]
    head = bulk(len(keys)) + b"".join(map(bulk, keys)) + bulk(hold_ms)
    ends = [bulk(int(window_end * 1000)) for _, _, window_end in static]
    reserve = head + b"".join([bulk(limit) + end for (_, limit, _), end in zip(static, ends, strict=True)])
    return _Layout(reserve, 2 + 2 * len(static) + 1 + len(keys), head + b"".join(ends),
                   2 + len(static) + 1 + len(keys))


def _static(charges: tuple[Charge, ...]) -> tuple:
    return tuple([(charge.key, charge.limit, charge.window_end) for charge in charges])


def _tail(request_id: str, amounts) -> bytes:
    """The request id and the amounts (the arguments that change from one request to the next; integers)."""
    data = request_id.encode()
    parts = [b"$%d\r\n%s\r\n" % (len(data), data)]
    for amount in amounts:
        text = b"%d" % amount
        parts.append(b"$%d\r\n%s\r\n" % (len(text), text))
    return b"".join(parts)


class RedisQuotaBackend(QuotaBackend):
    """Counters in Redis, through llmhub.redis_client (pipelined, one connection per event loop, reconnecting by
    itself after Redis restarts and sending a script again when Redis forgot it). The static part of each
    request's scripts is encoded once per limits and period windows (`_layout`)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.client = RedisClient(url, timeout=timeout)

    async def reserve(self, *, request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
        layout = _layout(_static(charges), int(hold_seconds * 1000))
        return await _decision(self.client.run(_RESERVE_SCRIPT, layout.reserve + _tail(request_id, [c.amount for c in charges]),
                                               layout.reserve_count + len(charges)))

    def reserve_sent(self, *, request_id: str, charges: tuple[Charge, ...],
                     hold_seconds: float) -> Awaitable[Decision] | None:
        """`reserve`, its script queued before this returns, to be awaited later (a request sends it with the
        breakers' read: generation/services.py); None when this event loop has no connection yet."""
        layout = _layout(_static(charges), int(hold_seconds * 1000))
        sent = self.client.run_sent(_RESERVE_SCRIPT, layout.reserve + _tail(request_id, [c.amount for c in charges]),
                                    layout.reserve_count + len(charges))
        return None if sent is None else _decision(sent)

    async def settle(self, *, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                     hold_seconds: float) -> None:
        layout = _layout(_static(charges), int(hold_seconds * 1000))
        try:
            used = await self.client.run(_SETTLE_SCRIPT, layout.settle + _tail(request_id, actual),
                                         layout.settle_count + len(charges))
        except RedisUnavailable as error:
            raise QuotaBackendError(str(error)) from error
        _thresholds_queue(charges, actual, used)

    def settle_nowait(self, *, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                      hold_seconds: float) -> None:
        layout = _layout(_static(charges), int(hold_seconds * 1000))
        self.client.run_nowait(_SETTLE_SCRIPT, layout.settle + _tail(request_id, actual),
                               layout.settle_count + len(charges),
                               failed=partial(_settle_failed_error, request_id=request_id),
                               done=partial(_thresholds_queue, charges, actual))

    async def drain(self) -> None:
        await self.client.drain()

    async def counters(self, keys: list[str]) -> dict[str, dict[str, int]]:
        result = {}
        for key in keys:
            try:
                reply = await self.client.call("HGETALL", key)
                records = await self.client.call("HVALS", _owner_keys(key)[0])
            except RedisUnavailable as error:
                raise QuotaBackendError(str(error)) from error
            fields = {reply[i].decode(): int(reply[i + 1]) for i in range(0, len(reply), 2)}
            result[key] = {"used": fields.get("used", 0), "held": fields.get("held", 0),
                           "refused": fields.get("refused", 0),
                           "holds": sum(1 for record in records if key in record.decode().split(" ")[::2])}
        return result


# --- Database ---------------------------------------------------------------------------------------------------

_SWEEP_EVERY_SECONDS = 60.0
SETTLE_DELAY_SECONDS = 0.005


class DatabaseQuotaBackend(QuotaBackend):
    """Counters in `usage_quotacounter`, reservations in `usage_quotahold`. Decisions run on one thread of their
    own (never across an upstream call): this process's decisions and settles queue there in order, so nothing sees
    a reservation unsettled after its settle was sent. A decision is one statement over every counter of the request
    (a conditional upsert), plus one that records the reservation.

    On SQLite, whatever has queued up meanwhile (at concurrency 16, several decisions and settles) runs in one
    transaction: one commit for all of them, in the quota file (`quota_database_path`), whose write lock only other
    processes' quota decisions take (a few hundred microseconds each); the usage log's batches, which hold the
    database's lock for milliseconds, no longer stand in their way. On PostgreSQL each runs in its own short
    transaction, its counters taken in key order, so two processes cannot deadlock."""

    def __init__(self) -> None:
        self._swept_at = 0.0
        # One thread of our own (waking it is one SimpleQueue.put, cheaper than an executor's submit; its connection
        # stays warm), started on the first decision of each process; at exit, what is still queued runs in the
        # exiting thread.
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._pid = 0  # the process that started the thread (a forked child starts its own)
        self._starting = threading.Lock()
        self._running = threading.Lock()  # one runner at a time: the thread, or the exit handler
        self._jobs: collections.deque[_Job] = collections.deque()
        self._grouped = settings.DATABASES[DEFAULT_DB_ALIAS]["ENGINE"] == "django.db.backends.sqlite3"
        self._kick: asyncio.TimerHandle | None = None
        self._kick_loop: asyncio.AbstractEventLoop | None = None
        self._loop_raw: sqlite3.Connection | None = None  # the event loop's own connection (SQLite: `_inline`)
        self._loop_pid = 0
        self._thread_raw: sqlite3.Connection | None = None  # the quota thread's (SQLite)
        self._thread_pid = 0
        self._inline_commits = 0  # the loop's connection leaves WAL checkpoints to the thread: every so many commits
        self._checkpoint_due = False
        # SQLite: the decisions asked for during one turn of the event loop, decided together at its end.
        self._turn: list[_Job] = []
        self._turn_loop: asyncio.AbstractEventLoop | None = None
        atexit.register(self._exit)

    async def reserve(self, *, request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
        job = _Job(self._reserve, (request_id, charges, hold_seconds), None, None, request_id, "reserve")
        job.loop = loop = asyncio.get_running_loop()
        job.future = loop.create_future()
        if self._grouped:
            # The requests that reach their decision in the same turn of the loop (at concurrency 16, those whose
            # bytes came in together) share one transaction: one BEGIN, one read, one write-back, one COMMIT.
            if self._turn_loop is not loop:  # (a loop that closed with decisions pending left nobody waiting)
                self._turn, self._turn_loop = [], loop
            self._turn.append(job)
            if len(self._turn) == 1:
                loop.call_soon(self._turn_decide)
        else:
            self._submit(job)
        return await job.future

    def _turn_decide(self) -> None:
        jobs, self._turn = self._turn, []
        outcomes = self._inline(jobs)
        if outcomes is None:  # the thread decides them (it answers their futures)
            for job in jobs:
                self._submit(job)
            return
        for job, (result, error) in zip(jobs, outcomes, strict=True):
            if not job.future.done():  # its caller gave up (cancelled)
                if error is not None:
                    job.future.set_exception(error)
                else:
                    job.future.set_result(result)

    async def settle(self, *, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                     hold_seconds: float) -> None:
        self.settle_nowait(request_id=request_id, charges=charges, actual=actual, hold_seconds=hold_seconds)

    def settle_nowait(self, *, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                      hold_seconds: float) -> None:
        # Queued, not awaited: the quota thread runs it before any later decision or read of this process (it takes
        # work in order), so nothing sees the reservation unsettled; the response need not wait for the commit.
        # On SQLite it waits up to SETTLE_DELAY_SECONDS for the next decision, to share its commit (a commit is
        # most of a decision's cost there); other processes see it that much later.
        job = _Job(self._settle, (request_id, charges, actual), None, None, request_id, "settle")
        if not self._grouped:
            self._submit(job)
            return
        self._jobs.append(job)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: now
            self._wake_thread()
            return
        if self._kick is None or self._kick_loop is not loop:  # (a kick of a loop that closed never comes)
            self._kick, self._kick_loop = loop.call_later(SETTLE_DELAY_SECONDS, self._kicked), loop

    def _kicked(self) -> None:
        self._kick = None
        if self._jobs and self._inline([]) is None:
            self._wake_thread()

    def _kick_cancel(self) -> None:
        """The settles waiting for a decision to share its commit have gone with one: their timer would only wake
        the event loop for nothing."""
        if self._kick is not None:
            if self._kick_loop is asyncio.get_running_loop():
                self._kick.cancel()
            self._kick = None

    def _inline(self, decisions: list["_Job"]) -> list[tuple[object, Exception | None]] | None:
        """On SQLite, runs the settles queued so far and `decisions` right here on the event loop, in one
        transaction on a connection of the loop's own: the hop to the quota thread and back (two thread switches
        and a wake-up of the loop) would cost more than the decisions. Only when it cannot wait: the thread is
        idle with nothing but settles queued (so the order of this process's work holds), and the write lock is
        free (the connection never waits for it: another process's transaction sends the work to the thread,
        which does). Returns the decisions' outcomes, or None when the thread must do them."""
        if not self._running.acquire(blocking=False):
            return None
        try:
            jobs = self._jobs
            if any(queued.future is not None for queued in jobs):
                return None
            try:
                raw = self._loop_connection()
                raw.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:  # locked (or the file is gone): the thread waits for it (or fails the decision)
                return None
            batch = [*jobs, *decisions]
            jobs.clear()
            self._kick_cancel()
            outcomes = self._run_sqlite_begun(raw, batch)
            if outcomes and outcomes[0][1] is not None:
                self._loop_raw = None  # a connection that failed is not reused
                with contextlib.suppress(sqlite3.Error):
                    raw.close()
            self._inline_commits += 1
            checkpoint = self._inline_commits % _CHECKPOINT_EVERY_COMMITS == 0
        finally:
            self._running.release()
        if checkpoint:
            self._checkpoint_due = True
            self._wake_thread()
        settles = len(batch) - len(decisions)
        for queued, (_, error) in zip(batch[:settles], outcomes, strict=False):
            if error is not None:
                _settle_failed_error(error, request_id=queued.request_id)
        return outcomes[settles:]

    def _loop_connection(self) -> sqlite3.Connection:
        raw = self._loop_raw
        if raw is None or self._loop_pid != os.getpid():
            # timeout=0: never waits for the write lock on the event loop; nor does it checkpoint the WAL there (the
            # checkpoint's fsync takes milliseconds): the quota thread does (`_checkpoint`).
            raw = self._loop_raw = _quota_connect(timeout=0)
            raw.execute("PRAGMA wal_autocheckpoint=0")
            self._loop_pid = os.getpid()
        return raw

    def _thread_connection(self) -> sqlite3.Connection:
        raw = self._thread_raw
        if raw is None or self._thread_pid != os.getpid():
            # It waits for another process's decision to commit, up to the quota timeout (fail closed: a 503 then).
            raw = self._thread_raw = _quota_connect(timeout=settings.LLMHUB["QUOTA_TIMEOUT_SECONDS"])
            self._thread_pid = os.getpid()
        return raw

    def _checkpoint(self) -> None:
        """Copies the quota file's WAL back into it, on the quota thread, so that the next commit starts the WAL
        afresh (RESTART: decisions wait the millisecond or so it takes; under constant load a checkpoint that let
        them commit meanwhile would never finish, and the WAL, which every read searches, would grow without end)."""
        self._checkpoint_due = False
        try:
            self._thread_connection().execute("PRAGMA wal_checkpoint(RESTART)")
        except sqlite3.Error as error:
            logger.warning("quota file checkpoint failed (%s)", error)

    async def drain(self) -> None:
        if self._grouped and self._inline([]) is not None:  # nothing waits on the thread: done here
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._submit(_Job(_nothing, (), loop, future))  # answered once everything queued before it has run
        await future

    def _exit(self) -> None:
        """At exit, settles still waiting for a decision to share its commit are written (in this thread)."""
        if self._jobs:
            self._run_queued()

    async def counters(self, keys: list[str]) -> dict[str, dict[str, int]]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._submit(_Job(self._counters, (keys,), loop, future))
        return await future

    def _submit(self, job: "_Job") -> None:
        self._jobs.append(job)
        self._wake_thread()

    def _wake_thread(self) -> None:
        if self._pid != os.getpid():
            with self._starting:
                if self._pid != os.getpid():
                    self._wake = queue.SimpleQueue()
                    threading.Thread(target=self._serve, name="quota-db", daemon=True).start()
                    self._pid = os.getpid()
        self._wake.put(None)

    def _serve(self) -> None:
        wake = self._wake
        while True:
            wake.get()
            try:
                self._run_queued()
                if self._checkpoint_due:
                    self._checkpoint()
            except Exception:  # never seen: _run answers every job; the thread must live on regardless
                logger.exception("quota thread")

    def _run_queued(self) -> None:
        """Runs the jobs queued so far (none when an earlier run took them): on SQLite in one transaction."""
        with self._running:
            self._run_jobs()

    def _run_jobs(self) -> None:
        db = connections[DEFAULT_DB_ALIAS]
        while self._jobs:
            jobs = [self._jobs.popleft()]
            while self._grouped and self._jobs:
                jobs.append(self._jobs.popleft())
            outcomes = self._run_grouped(jobs) if self._grouped else self._run(db, jobs)
            waiting: dict[asyncio.AbstractEventLoop, list] = {}
            for job, (result, error) in zip(jobs, outcomes, strict=True):
                if job.future is not None:
                    waiting.setdefault(job.loop, []).append((job.future, result, error))
                elif error is not None:
                    _settle_failed_error(error, request_id=job.request_id)
            for loop, answers in waiting.items():  # one wake-up per event loop
                with contextlib.suppress(RuntimeError):  # its loop closed meanwhile: nobody waits any more
                    loop.call_soon_threadsafe(_resolve, answers)

    def _run_grouped(self, jobs: list["_Job"]) -> list[tuple[object, Exception | None]]:
        """SQLite: the jobs in one transaction on the thread's connection to the quota file."""
        try:
            return self._run_sqlite(self._thread_connection(), jobs)
        except sqlite3.Error as error:  # locked past the timeout, or the file is unusable: none of them happened
            raw, self._thread_raw = self._thread_raw, None  # a connection that failed is not reused
            if raw is not None:
                with contextlib.suppress(sqlite3.Error):
                    raw.close()
            return [(None, QuotaBackendError(f"{type(error).__name__}: {error}"))] * len(jobs)

    def _run(self, db, jobs: list["_Job"]) -> list[tuple[object, Exception | None]]:
        """PostgreSQL: each job in its own transaction, on the thread's Django connection."""
        outcomes: list[tuple[object, Exception | None]] = []
        try:
            with db.wrap_database_errors:
                if db.connection is None:
                    db.ensure_connection()
                with transaction.atomic(using=DEFAULT_DB_ALIAS):
                    # The backend's own cursor, without Django's debug wrapper: the statements below are the
                    # whole decision and the budget is a fraction of a millisecond.
                    cursor = db.create_cursor()
                    outcomes = [(job.function(cursor, *job.args), None) for job in jobs]
        except Exception as error:
            if isinstance(error, DatabaseError):
                db.close()  # a connection that broke is not reused: the next decision opens a new one
            else:
                logger.exception("quota decision failed")
            failure = QuotaBackendError(type(error).__name__)
            return [(None, failure)] * len(jobs)  # the transaction rolled back: none of them happened
        return outcomes

    def _run_sqlite(self, raw: "_QuotaConnection", jobs: list["_Job"]) -> list[tuple[object, Exception | None]]:
        """On SQLite, straight on the driver's connection (Django keeps it in autocommit outside `atomic`): Django's
        transaction and cursor layers cost more than the statements. IMMEDIATE takes the write lock first, so two
        processes never deadlock upgrading a read lock."""
        raw.execute("BEGIN IMMEDIATE")
        outcomes = self._run_sqlite_begun(raw, jobs)
        if outcomes and outcomes[0][1] is not None and isinstance(outcomes[0][1].__cause__, sqlite3.Error):
            raise outcomes[0][1].__cause__  # `_run` turns it into failures and closes the connection
        return outcomes

    def _run_sqlite_begun(self, raw: "_QuotaConnection", jobs: list["_Job"]) -> list[tuple[object, Exception | None]]:
        """The jobs in the transaction `raw` has begun (holding the write lock), then COMMIT; on an error, ROLLBACK
        and every job fails (none of them happened)."""
        try:
            cursor = raw.cursor()
            swept = any(job.kind == "reserve" for job in jobs) and self._sweep_due(cursor)
            batch = _SqliteBatch(self, cursor, _counters_kept(raw, cursor, swept))
            outcomes = [(batch.run(job), None) for job in jobs]
            batch.flush()
            raw.execute("COMMIT")
            raw.counters = batch.state
        except Exception as error:
            raw.counters = None  # what the batch changed in memory did not happen
            with contextlib.suppress(sqlite3.Error):
                raw.execute("ROLLBACK")
            if not isinstance(error, sqlite3.Error):
                logger.exception("quota decision failed")
            failure = QuotaBackendError(type(error).__name__)
            failure.__cause__ = error if isinstance(error, sqlite3.Error) else None
            return [(None, failure)] * len(jobs)
        for event in batch.events:  # committed: the thresholds it crossed join the usage writer's queue
            writer.record(event)
        return outcomes

    def _sweep_due(self, cursor) -> bool:
        now = time.time()
        if now - self._swept_at > _SWEEP_EVERY_SECONDS:
            self._swept_at = now
            self._sweep(_QmarkCursor(cursor), now)
            return True
        return False

    def _reserve(self, cursor, request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
        now = time.time()
        if now - self._swept_at > _SWEEP_EVERY_SECONDS:
            self._swept_at = now
            self._sweep(cursor, now)
        ordered = sorted(charges, key=_charge_key)  # one lock order
        taken = self._take(cursor, ordered, hold_seconds)
        if len(taken) < len(charges) and self._reclaim(cursor, ordered[0].key, now):
            self._give_back(cursor, ordered, taken)
            taken = self._take(cursor, ordered, hold_seconds)
        if len(taken) == len(charges):
            amounts = " ".join([f"{charge.key} {charge.amount}" for charge in ordered if charge.amount])
            if amounts:
                cursor.execute(_HOLD, (request_id, amounts, int((now + hold_seconds) * 1000)))
            return Decision(refused=None, used=tuple([taken[c.key][0] for c in charges]),
                            held=tuple([taken[c.key][1] for c in charges]))
        refused = next(index for index, charge in enumerate(charges) if charge.key not in taken)
        self._give_back(cursor, ordered, taken)
        charge = charges[refused]
        cursor.execute("INSERT INTO usage_quotacounter (key, used, held, refused, window_end) VALUES (%s, 0, 0, 1, %s) "
                       "ON CONFLICT (key) DO UPDATE SET refused = usage_quotacounter.refused + 1",
                       [charge.key, _window_datetime(charge.window_end + hold_seconds)])
        marks = ", ".join(["%s"] * len(charges))
        cursor.execute(f"SELECT key, used, held FROM usage_quotacounter WHERE key IN ({marks})",  # noqa: S608
                       [charge.key for charge in charges])
        state = {key: (used, held) for key, used, held in cursor.fetchall()}
        return Decision(refused=refused, used=tuple(state.get(c.key, (0, 0))[0] for c in charges),
                        held=tuple(state.get(c.key, (0, 0))[1] for c in charges))

    @staticmethod
    def _take(cursor, ordered: list[Charge], hold_seconds: float) -> dict[str, tuple[int, int]]:
        values = []
        for charge in ordered:
            values += (charge.key, charge.amount, _window_datetime(charge.window_end + hold_seconds), charge.limit)
        cursor.execute(_take_sql(len(ordered)), values)
        return {key: (used, held) for key, used, held in cursor.fetchall()}

    @staticmethod
    def _give_back(cursor, ordered: list[Charge], taken: dict[str, tuple[int, int]]) -> None:
        """Undoes what the counters that had room took (the request was refused by another)."""
        for charge in ordered:
            if charge.key in taken:
                cursor.execute("UPDATE usage_quotacounter SET held = held - %s WHERE key = %s", [charge.amount, charge.key])

    @classmethod
    def _reclaim(cls, cursor, key: str, now: float) -> int:
        """Gives back the reservations of the counter's owner that expired (their process crashed); returns how
        many there were."""
        owner = key[:key.index("}") + 1]  # "llmhub:q:{u:<id>}": every counter of the user, its keys' included
        cursor.execute("DELETE FROM usage_quotahold WHERE expires_at < %s AND amounts LIKE %s RETURNING amounts",
                       [int(now * 1000), owner + "%"])
        return cls._give_back_holds(cursor, [amounts for (amounts,) in cursor.fetchall()])

    @staticmethod
    def _give_back_holds(cursor, records: list[str]) -> int:
        back: dict[str, int] = collections.Counter()
        for record in records:
            fields = record.split(" ")
            for key, amount in zip(fields[::2], fields[1::2], strict=True):
                back[key] += int(amount)
        for key in sorted(back):  # one lock order
            cursor.execute("UPDATE usage_quotacounter SET held = held - %s WHERE key = %s", [back[key], key])
        return len(records)

    @staticmethod
    def _settle(cursor, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...]) -> None:
        # The reservation's amounts are the charges' own; it is gone when it expired meanwhile (given back already).
        cursor.execute("DELETE FROM usage_quotahold WHERE request_id = %s", (request_id,))
        held = cursor.rowcount > 0
        values = []
        for charge, amount in sorted(zip(charges, actual, strict=True), key=_pair_key):  # one lock order
            values += (charge.key, amount, charge.amount if held else 0)
        # One statement for every counter (UPDATE … FROM: PostgreSQL, SQLite ≥ 3.33).
        cursor.execute(_settle_sql(len(charges)), values)
        used = dict(cursor.fetchall())
        # Billing thresholds crossed by this settle are written in its transaction (usage/billing.py).
        crossed = quota_thresholds_crossed(charges=charges, actual=actual, used=tuple([used.get(c.key) for c in charges]))
        if crossed:
            billing_events_insert_sql(cursor, crossed)

    def _sweep(self, cursor, now: float) -> None:
        """Gives back every expired reservation, and drops counters whose period (plus the hold time) is over."""
        cursor.execute("DELETE FROM usage_quotahold WHERE expires_at < %s RETURNING amounts", [int(now * 1000)])
        self._give_back_holds(cursor, [amounts for (amounts,) in cursor.fetchall()])
        cursor.execute("DELETE FROM usage_quotacounter WHERE window_end < %s", [_datetime(now)])

    @staticmethod
    def _counters(cursor, keys: list[str]) -> dict[str, dict[str, int]]:
        result = {}
        for key in keys:
            cursor.execute("SELECT used, held, refused FROM usage_quotacounter WHERE key = %s", [key])
            row = cursor.fetchone() or (0, 0, 0)
            cursor.execute("SELECT amounts FROM usage_quotahold WHERE amounts LIKE %s", [key[:key.index("}") + 1] + "%"])
            holds = sum(1 for (amounts,) in cursor.fetchall() if key in amounts.split(" ")[::2])
            result[key] = {"used": row[0], "held": row[1], "refused": row[2], "holds": holds}
        return result


class _SqliteBatch:
    """The jobs of one SQLite transaction, which holds the write lock from its BEGIN IMMEDIATE to its COMMIT: no
    other connection, in this process or another, can change a counter meanwhile. So the counters a batch touches
    are read once, decided in memory, job after job in order, with the same rule as the conditional upsert of
    PostgreSQL (`_TAKE`: a counter takes its amount only while used + held + amount <= limit, all or none of a
    request's counters), and written back once at the end (`flush`). That is exact across processes as much as
    the statements are, and at concurrency 16 a batch of many requests of one user reads and writes its counters
    once. Reservations are still one row each (a crashed process's expire: `_reclaim`, `_sweep`)."""

    __slots__ = ("backend", "cursor", "events", "qcursor", "state")

    def __init__(self, backend: DatabaseQuotaBackend, cursor, state: dict[str, list | None]) -> None:
        self.backend = backend
        self.cursor = cursor
        self.qcursor = _QmarkCursor(cursor)
        # counter key -> [used, held, refused, window end (as stored) or None when the row exists, changed]; None:
        # no such row. What the connection's last batch left, when no other connection wrote since.
        self.state = state
        self.events: list = []  # the billing thresholds its settles crossed, handed on once it committed

    def run(self, job: "_Job"):
        if job.kind == "reserve":
            return self.reserve(*job.args)
        if job.kind == "settle":
            return self.settle(*job.args)
        self.flush()  # a read (or anything else) sees what the batch decided so far
        return job.function(self.qcursor, *job.args)

    def load(self, keys) -> None:
        state = self.state
        missing = [key for key in keys if key not in state]
        if not missing:  # (at concurrency, most batches: the counters are in memory already)
            return
        missing = list(dict.fromkeys(missing))
        for start in range(0, len(missing), 500):
            chunk = missing[start:start + 500]
            for key in chunk:
                state[key] = None
            self.cursor.execute(_counters_sql(len(chunk)), chunk)
            for key, used, held, refused in self.cursor.fetchall():
                state[key] = [used, held, refused, None, False]

    def reserve(self, request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
        state = self.state
        self.load([charge.key for charge in charges])
        refused = self._refused(charges)
        if refused is not None:
            now = time.time()
            if self._reclaim(charges[0].key, now):
                refused = self._refused(charges)
        if refused is None:
            # The reservation's record, "counter amount counter amount ...", in any order (the batch holds the write
            # lock: no lock order matters here).
            amounts = []
            for charge in charges:
                counter = state[charge.key]
                if counter is None:
                    counter = state[charge.key] = [0, 0, 0, _window_datetime(charge.window_end + hold_seconds), True]
                counter[1] += charge.amount
                counter[4] = True
                if charge.amount:
                    amounts.append(f"{charge.key} {charge.amount}")
            if amounts:
                self.cursor.execute(_HOLD_QMARK, (request_id, " ".join(amounts),
                                                  int((time.time() + hold_seconds) * 1000)))
        else:
            charge = charges[refused]
            counter = state[charge.key]
            if counter is None:
                counter = state[charge.key] = [0, 0, 0, _window_datetime(charge.window_end + hold_seconds), True]
            counter[2] += 1
            counter[4] = True
        counters = [state[charge.key] or _NO_COUNTER for charge in charges]
        return Decision(refused=refused, used=tuple([counter[0] for counter in counters]),
                        held=tuple([counter[1] for counter in counters]))

    def _refused(self, charges: tuple[Charge, ...]) -> int | None:
        state = self.state
        for index, charge in enumerate(charges):
            counter = state[charge.key]
            taken = counter[0] + counter[1] if counter is not None else 0
            if taken + charge.amount > charge.limit:
                return index
        return None

    def _reclaim(self, key: str, now: float) -> int:
        """`DatabaseQuotaBackend._reclaim`, giving the amounts back in the batch's state."""
        owner = key[:key.index("}") + 1]
        self.cursor.execute("DELETE FROM usage_quotahold WHERE expires_at < ? AND amounts LIKE ? RETURNING amounts",
                            [int(now * 1000), owner + "%"])
        records = [amounts for (amounts,) in self.cursor.fetchall()]
        for record in records:
            fields = record.split(" ")
            self.load(fields[::2])
            for counter_key, amount in zip(fields[::2], fields[1::2], strict=True):
                counter = self.state[counter_key]
                if counter is not None:
                    counter[1] -= int(amount)
                    counter[4] = True
        return len(records)

    def settle(self, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...]) -> None:
        # The reservation's amounts are the charges' own; it is gone when it expired meanwhile (given back already).
        self.cursor.execute("DELETE FROM usage_quotahold WHERE request_id = ?", (request_id,))
        held = self.cursor.rowcount > 0
        state = self.state
        self.load([charge.key for charge in charges])
        used = []
        for charge, amount in zip(charges, actual, strict=True):
            counter = state[charge.key]
            if counter is None:  # no such counter (its period ended and the sweep dropped it): nothing to settle
                used.append(None)
                continue
            counter[0] += amount
            if held:
                counter[1] -= charge.amount
            counter[4] = True
            used.append(counter[0])
        # Billing thresholds crossed by this settle go to the usage writer once it committed, as Redis's do: the
        # outbox is in the other file (usage/billing.py).
        crossed = quota_thresholds_crossed(charges=charges, actual=actual, used=tuple(used))
        if crossed:
            self.events += crossed

    def flush(self) -> None:
        changed = [(key, counter) for key, counter in self.state.items() if counter is not None and counter[4]]
        if not changed:
            return
        new = [(key, used, held, refused, window_end) for key, (used, held, refused, window_end, _) in changed
               if window_end is not None]
        if new:
            self.cursor.executemany("INSERT INTO usage_quotacounter (key, used, held, refused, window_end) "
                                    "VALUES (?, ?, ?, ?, ?)", new)
        self.cursor.executemany("UPDATE usage_quotacounter SET used = ?, held = ?, refused = ? WHERE key = ?",
                                [(used, held, refused, key) for key, (used, held, refused, window_end, _) in changed
                                 if window_end is None])
        for _, counter in changed:
            counter[3] = None  # the row exists now
            counter[4] = False


_NO_COUNTER = (0, 0, 0, None, False)
# The loop's connection commits most decisions at low concurrency, and never checkpoints: the thread does, this often.
_CHECKPOINT_EVERY_COMMITS = 500


# --- SQLite: the counters' own file -----------------------------------------------------------------------------

class _QuotaConnection(sqlite3.Connection):
    """A connection to the quota file that keeps the counters its last batch wrote (`_counters_kept`)."""

    counters: dict[str, list | None] | None = None
    data_version = -1


# The counters a connection keeps between batches, at most (a new period's counters are new keys).
_KEPT_COUNTERS = 10_000


def _counters_kept(raw: _QuotaConnection, cursor, swept: bool) -> dict[str, list | None]:
    """The counters `raw`'s last batch left in memory, if no other connection has committed since (SQLite's
    `data_version`, read inside the transaction, which holds the write lock): its next batch reads none of them
    again. Else (or after a sweep, which writes past them) an empty state, read as needed."""
    version = cursor.execute("PRAGMA data_version").fetchone()[0]
    kept = raw.counters
    if swept or kept is None or raw.data_version != version or len(kept) > _KEPT_COUNTERS:
        raw.data_version, kept = version, {}
    return kept


def quota_database_path() -> str:
    """SQLite: the file of the quota counters and reservations, beside the database (`<database>-quotas.sqlite3`,
    like its -wal and -shm). Apart from the usage log, a decision never waits for a usage batch (whose transaction
    holds the database's write lock for milliseconds) nor pays for its WAL checkpoints."""
    return f"{settings.DATABASES[DEFAULT_DB_ALIAS]['NAME']}-quotas.sqlite3"


# The tables of usage/models.py's QuotaCounter and QuotaHold, without what only PostgreSQL needs: keyed tables
# (WITHOUT ROWID: one B-tree each, not a table and an index), no index on the expiry columns (the sweeps scan the
# few rows of requests in flight and of current periods). The statements are the PostgreSQL back end's.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS usage_quotacounter (key TEXT PRIMARY KEY, used INTEGER NOT NULL, "
    "held INTEGER NOT NULL, refused INTEGER NOT NULL, window_end TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS usage_quotahold (request_id TEXT PRIMARY KEY, amounts TEXT NOT NULL, "
    "expires_at INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS quota_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
_schema_ready: set[str] = set()


def _quota_connect(*, timeout: float) -> sqlite3.Connection:
    path = quota_database_path()
    if path not in _schema_ready:
        _schema_ensure(path)
    raw = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False,
                          factory=_QuotaConnection)
    raw.execute("PRAGMA synchronous=NORMAL")
    return raw


def _schema_ensure(path: str) -> None:
    """Creates the quota file's tables (once per process), and the first time, takes over the counters and
    reservations an earlier version kept in the database itself: the periods under way keep what they used."""
    raw = sqlite3.connect(path, timeout=20, isolation_level=None)
    try:
        raw.execute("PRAGMA journal_mode=WAL")
        for statement in _SCHEMA:
            raw.execute(statement)
        raw.execute("BEGIN IMMEDIATE")
        try:
            raw.execute("INSERT OR IGNORE INTO quota_meta (name, value) VALUES ('imported', ?)",
                        (datetime.now(UTC).isoformat(),))
            if raw.execute("SELECT changes()").fetchone()[0]:
                _counters_import(raw)
            raw.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                raw.execute("ROLLBACK")
            raise
    finally:
        raw.close()
    _schema_ready.add(path)


def _counters_import(raw: sqlite3.Connection) -> None:
    """The counters and reservations of the database's own tables (left there by an earlier version), copied in."""
    database = settings.DATABASES[DEFAULT_DB_ALIAS]["NAME"]
    try:
        found = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=20)
    except sqlite3.Error:
        return  # no database yet: nothing to take over
    try:
        counters = found.execute("SELECT key, used, held, refused, window_end FROM usage_quotacounter").fetchall()
        holds = found.execute("SELECT request_id, amounts, expires_at FROM usage_quotahold").fetchall()
    except sqlite3.Error:  # not migrated yet: nothing to take over
        return
    finally:
        found.close()
    raw.executemany("INSERT OR IGNORE INTO usage_quotacounter (key, used, held, refused, window_end) "
                    "VALUES (?, ?, ?, ?, ?)", counters)
    raw.executemany("INSERT OR IGNORE INTO usage_quotahold (request_id, amounts, expires_at) VALUES (?, ?, ?)", holds)
_HOLD_QMARK = "INSERT INTO usage_quotahold (request_id, amounts, expires_at) VALUES (?, ?, ?)"


@cache
def _counters_sql(count: int) -> str:
    return f"SELECT key, used, held, refused FROM usage_quotacounter WHERE key IN ({', '.join(['?'] * count)})"  # noqa: S608


# The conditional upsert over every counter of a request: a counter takes its amount only while
# used + held + amount <= limit (one not there yet is created with it, if it fits); a row comes back for
# exactly those that did. Atomic on SQLite and PostgreSQL (ON CONFLICT locks the row and re-checks its latest
# version); the counters are in key order, so two transactions on PostgreSQL cannot deadlock.
_TAKE = ("WITH v(k, amount, window_end, lim) AS (VALUES {rows}) "
         "INSERT INTO usage_quotacounter (key, used, held, refused, window_end) "
         "SELECT k, 0, amount, 0, window_end FROM v WHERE amount <= lim "
         "ON CONFLICT (key) DO UPDATE SET held = usage_quotacounter.held + excluded.held "
         "WHERE usage_quotacounter.used + usage_quotacounter.held + excluded.held <= "
         "(SELECT lim FROM v WHERE v.k = excluded.key) "
         "RETURNING key, used, held")
_HOLD = "INSERT INTO usage_quotahold (request_id, amounts, expires_at) VALUES (%s, %s, %s)"


@cache
def _take_sql(count: int) -> str:
    """The statements are built once per number of counters (the same object each time: the driver's statement
    cache and `_qmark` find it by identity)."""
    return _TAKE.format(rows=", ".join(["(%s, %s, %s, %s)"] * count))


@cache
def _settle_sql(count: int) -> str:
    rows = ", ".join(["(%s, %s, %s)"] * count)
    return (f"UPDATE usage_quotacounter SET used = used + v.column2, held = held - v.column3 "  # noqa: S608
            f"FROM (VALUES {rows}) AS v WHERE usage_quotacounter.key = v.column1 RETURNING key, used")


def _charge_key(charge: Charge) -> str:
    return charge.key


def _pair_key(pair: tuple[Charge, int]) -> str:
    return pair[0].key


def _thresholds_queue(charges: tuple[Charge, ...], actual: tuple[int, ...], used: list[int]) -> None:
    """Billing thresholds a Redis settle crossed join the usage writer's queue (usage/billing.py says why)."""
    try:
        crossed = quota_thresholds_crossed(charges=charges, actual=actual,
                                           used=tuple(None if value < 0 else value for value in used))
    except Exception:  # an answer of an unexpected shape must not break the event loop's callbacks
        logger.exception("billing thresholds of a settle not checked")
        return
    for event in crossed:
        writer.record(event)


class _QmarkCursor:
    """The sqlite3 driver's cursor taking the statements above (`%s` placeholders, converted once each)."""

    __slots__ = ("cursor",)

    def __init__(self, cursor) -> None:
        self.cursor = cursor

    def execute(self, sql: str, params) -> None:
        self.cursor.execute(_qmark(sql), params)

    def fetchall(self) -> list:
        return self.cursor.fetchall()

    def fetchone(self):
        return self.cursor.fetchone()

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount


@lru_cache(maxsize=128)
def _qmark(sql: str) -> str:
    return sql.replace("%s", "?")


@dataclass(slots=True)
class _Job:
    function: Callable
    args: tuple
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future | None  # None: nobody waits (a settle); a failure is logged
    request_id: str = ""
    kind: str = ""  # "reserve", "settle": decided in memory by a SQLite batch (_SqliteBatch); else run as is


def _nothing(cursor) -> None:
    pass


def _resolve(answers: list[tuple[asyncio.Future, object, Exception | None]]) -> None:
    for future, result, error in answers:
        if future.done():  # its caller gave up (cancelled)
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _settle_failed_error(error: BaseException, *, request_id: str) -> None:
    logger.error("request %s: quota not settled (%s); its reservation expires by itself", request_id, error)


def _datetime(epoch: float):
    """A timestamp as the database compares it (SQLite keeps datetimes as UTC text)."""
    return connection.ops.adapt_datetimefield_value(datetime.fromtimestamp(epoch, UTC))


@lru_cache(maxsize=256)
def _window_datetime(epoch: float):
    """`_datetime` of a period window's end: the same few values, request after request."""
    return _datetime(epoch)


# --- Choosing one -----------------------------------------------------------------------------------------------

def quota_backend() -> QuotaBackend:
    """Redis when QUOTA_REDIS_URL is set (it defaults to REDIS_URL), else the database."""
    config = settings.LLMHUB
    return _backend(config["QUOTA_REDIS_URL"], config["QUOTA_TIMEOUT_SECONDS"])


@cache
def _backend(redis_url: str, timeout: float) -> QuotaBackend:
    return RedisQuotaBackend(redis_url, timeout=timeout) if redis_url else DatabaseQuotaBackend()
