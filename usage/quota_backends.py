"""The two back ends of usage.quotas: one interface, one atomic step per decision.

- `RedisQuotaBackend` (production: REDIS_URL set): one Lua script per decision takes every counter of a
  request in one round trip. A counter is a hash (`used`, `held`, `refused`) that expires after its period; a
  reservation is one record in its owner's hash of holds (every counter's amount), with its expiry time in the
  owner's sorted set.
- `DatabaseQuotaBackend` (embedded): a conditional `UPDATE … SET held = held + n WHERE used + held + n <= limit`
  per counter in one transaction, checking the row count; reservations are rows of `QuotaHold`.

Amounts are integers (requests, tokens, or cost in units of 1e-10). A reservation that is never settled (its
process crashed) expires after `hold_seconds`: the next decision that would be refused because of it, or the
periodic sweep, gives its amount back first.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections, transaction

from usage.redis_client import RedisClient, RedisUnavailable

logger = logging.getLogger(__name__)


class QuotaBackendError(Exception):
    """The back end could not decide (unreachable, timed out, refused the command)."""


@dataclass(frozen=True, slots=True)
class Charge:
    key: str  # the counter: owner, limit and period window
    limit: int
    amount: int  # reserved
    window_end: float  # epoch seconds: the counter is kept until then plus the hold time


@dataclass(frozen=True, slots=True)
class Decision:
    refused: int | None  # index of the first charge without room; None: every counter took its share
    used: tuple[int, ...]  # per charge, after the decision
    held: tuple[int, ...]


class QuotaBackend:
    async def reserve(self, *, request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
        raise NotImplementedError

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
-- KEYS: the owner's holds, their expiry set, then the counters. ARGV: request id, hold ms, then per counter:
-- limit, amount, window end (ms).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local holds, expiry, id, hold = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local count = #KEYS - 2
local state, fresh = {}, {}
local function read()
  local refused = -1
  for i = 1, count do
    local values = redis.call('HMGET', KEYS[i + 2], 'used', 'held')
    local used, held = tonumber(values[1] or '0'), tonumber(values[2] or '0')
    if refused < 0 and used + held + tonumber(ARGV[3 * i + 1]) > tonumber(ARGV[3 * i]) then refused = i end
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
  if fresh[refused] then redis.call('PEXPIREAT', key, tonumber(ARGV[3 * refused + 2]) + hold) end
  state[1] = refused - 1
  return state
end
local record, keep = {}, 0
for i = 1, count do
  local key, amount, ends = KEYS[i + 2], ARGV[3 * i + 1], tonumber(ARGV[3 * i + 2]) + hold
  if amount ~= '0' then
    redis.call('HINCRBY', key, 'held', amount)
    record[#record + 1] = key .. ' ' .. amount
    state[2 * i + 1] = state[2 * i + 1] + tonumber(amount)
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
-- KEYS: the owner's holds, their expiry set, then the counters. ARGV: request id, hold ms, then per counter:
-- actual amount, window end (ms).
local holds, expiry, id, hold = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local reserved = {}
local record = redis.call('HGET', holds, id)
if record then
  redis.call('HDEL', holds, id)
  redis.call('ZREM', expiry, id)
  for key, amount in string.gmatch(record, '(%S+) (%S+)') do reserved[key] = amount end
end
for i = 1, #KEYS - 2 do
  local key, actual = KEYS[i + 2], ARGV[2 * i + 1]
  local back = reserved[key]
  if back then redis.call('HINCRBY', key, 'held', -tonumber(back)) end
  if actual ~= '0' then redis.call('HINCRBY', key, 'used', actual) end
  -- A reservation given back meanwhile (it expired): the counter may have gone and come back without a TTL.
  if not back then redis.call('PEXPIREAT', key, tonumber(ARGV[2 * i + 2]) + hold) end
end
return 1
"""


def _owner_keys(counter: str) -> tuple[str, str]:
    """The holds hash and expiry set of a counter's owner (the user: its hash tag)."""
    owner = counter[:counter.index("}") + 1]
    return owner + ":holds", owner + ":x"


def _settle_arguments(request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                      hold_seconds: float) -> tuple[list[str], list]:
    keys = [*_owner_keys(charges[0].key)]
    args: list = [request_id, int(hold_seconds * 1000)]
    for charge, amount in zip(charges, actual, strict=True):
        keys.append(charge.key)
        args += (amount, int(charge.window_end * 1000))
    return keys, args


class RedisQuotaBackend(QuotaBackend):
    """Counters in Redis, through usage.redis_client (pipelined, one connection per event loop, reconnecting by
    itself after Redis restarts and sending a script again when Redis forgot it)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.client = RedisClient(url, timeout=timeout)

    async def reserve(self, *, request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
        keys = [*_owner_keys(charges[0].key)]
        args: list = [request_id, int(hold_seconds * 1000)]
        for charge in charges:
            keys.append(charge.key)
            args += (charge.limit, charge.amount, int(charge.window_end * 1000))
        reply = await self._script(_RESERVE, keys, args)
        refused = reply[0]
        return Decision(refused=None if refused < 0 else refused, used=tuple(reply[1::2]), held=tuple(reply[2::2]))

    async def settle(self, *, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                     hold_seconds: float) -> None:
        await self._script(_SETTLE, *_settle_arguments(request_id, charges, actual, hold_seconds))

    def settle_nowait(self, *, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                      hold_seconds: float) -> None:
        self.client.script_nowait(_SETTLE, *_settle_arguments(request_id, charges, actual, hold_seconds),
                                  failed=partial(_settle_failed_error, request_id=request_id))

    async def drain(self) -> None:
        await self.client.drain()

    async def _script(self, source: str, keys: list[str], args: list):
        try:
            return await self.client.script(source, keys, args)
        except RedisUnavailable as error:
            raise QuotaBackendError(str(error)) from error

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


class DatabaseQuotaBackend(QuotaBackend):
    """Counters in `usage_quotacounter`, reservations in `usage_quotahold`. Each decision is one short transaction
    in a worker thread (never across an upstream call); counters are taken in key order, so two transactions on
    PostgreSQL cannot deadlock."""

    def __init__(self) -> None:
        self._swept_at = 0.0
        # One thread of its own: decisions of this process queue there in order (no lock waits between them, a warm
        # connection), and a hop costs half of asgiref's.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quota-db")

    async def reserve(self, *, request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
        return await self._in_thread(self._reserve, request_id, charges, hold_seconds)

    async def settle(self, *, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                     hold_seconds: float) -> None:
        self.settle_nowait(request_id=request_id, charges=charges, actual=actual, hold_seconds=hold_seconds)

    def settle_nowait(self, *, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                      hold_seconds: float) -> None:
        # Queued, not awaited: the quota thread runs it before any later decision or read of this process (it takes
        # work in order), so nothing sees the reservation unsettled; the response need not wait for the commit.
        # Work still queued at exit is run before the interpreter ends (ThreadPoolExecutor joins its threads).
        done = self._thread.submit(self._guarded, self._settle, (request_id, charges, actual))
        done.add_done_callback(partial(_settle_failed, request_id=request_id))

    async def counters(self, keys: list[str]) -> dict[str, dict[str, int]]:
        return await self._in_thread(self._counters, keys)

    async def _in_thread(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._guarded, function, args)

    @staticmethod
    def _guarded(function, args):
        db = connections[DEFAULT_DB_ALIAS]  # once: each access through the `connection` proxy costs a lookup
        try:
            with db.wrap_database_errors:
                db.ensure_connection()
                with transaction.atomic(using=DEFAULT_DB_ALIAS):
                    # The backend's own cursor, without Django's debug wrapper (DEBUG is on when embedded): the
                    # statements below are the whole decision and the budget is a fraction of a millisecond.
                    return function(db.create_cursor(), *args)
        except DatabaseError as error:
            db.close()  # a connection that broke is not reused: the next decision opens a new one
            raise QuotaBackendError(type(error).__name__) from error

    # The conditional UPDATE: the counter takes the amount only while used + held + amount <= limit (a counter
    # not there yet is created with it, if it fits); a row comes back exactly when it did. One statement per
    # counter, atomic on SQLite and on PostgreSQL (ON CONFLICT locks the row and re-checks on its latest version).
    _TAKE = ("INSERT INTO usage_quotacounter (key, used, held, refused, window_end) SELECT %s, 0, %s, 0, %s WHERE %s <= %s "
             "ON CONFLICT (key) DO UPDATE SET held = usage_quotacounter.held + excluded.held "
             "WHERE usage_quotacounter.used + usage_quotacounter.held + excluded.held <= %s "
             "RETURNING used, held")

    def _reserve(self, cursor, request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
        now = time.time()
        if now - self._swept_at > _SWEEP_EVERY_SECONDS:
            self._swept_at = now
            self._sweep(cursor, now)
        state: dict[str, tuple[int, int]] = {}
        refused = None
        for index in sorted(range(len(charges)), key=lambda index: charges[index].key):  # one lock order
            charge = charges[index]
            taken = self._take(cursor, charge, hold_seconds)
            if taken is None and self._reclaim(cursor, charge.key, now):
                taken = self._take(cursor, charge, hold_seconds)
            if taken is None:
                refused = index
                break
            state[charge.key] = taken
        if refused is None:
            expires = _datetime(now + hold_seconds)
            holds = [(request_id, charge.key, charge.amount, expires) for charge in charges if charge.amount]
            if holds:
                marks = ", ".join(["(%s, %s, %s, %s)"] * len(holds))
                cursor.execute(f"INSERT INTO usage_quotahold (request_id, key, amount, expires_at) VALUES {marks}",  # noqa: S608
                               [value for hold in holds for value in hold])
        else:
            for key, _ in state.items():  # give back what the counters before it took
                amount = next(charge.amount for charge in charges if charge.key == key)
                cursor.execute("UPDATE usage_quotacounter SET held = held - %s WHERE key = %s", [amount, key])
            charge = charges[refused]
            cursor.execute("INSERT INTO usage_quotacounter (key, used, held, refused, window_end) VALUES (%s, 0, 0, 1, %s) "
                           "ON CONFLICT (key) DO UPDATE SET refused = usage_quotacounter.refused + 1",
                           [charge.key, _datetime(charge.window_end + hold_seconds)])
            marks = ", ".join(["%s"] * len(charges))
            cursor.execute(f"SELECT key, used, held FROM usage_quotacounter WHERE key IN ({marks})",  # noqa: S608
                           [charge.key for charge in charges])
            state = {key: (used, held) for key, used, held in cursor.fetchall()}
        return Decision(refused=refused, used=tuple(state.get(c.key, (0, 0))[0] for c in charges),
                        held=tuple(state.get(c.key, (0, 0))[1] for c in charges))

    def _take(self, cursor, charge: Charge, hold_seconds: float) -> tuple[int, int] | None:
        cursor.execute(self._TAKE, [charge.key, charge.amount, _datetime(charge.window_end + hold_seconds),
                                    charge.amount, charge.limit, charge.limit])
        row = cursor.fetchone()
        return None if row is None else (row[0], row[1])

    @staticmethod
    def _reclaim(cursor, key: str, now: float) -> int:
        """Gives back the counter's reservations that expired (their process crashed); returns how much."""
        cursor.execute("DELETE FROM usage_quotahold WHERE key = %s AND expires_at < %s RETURNING amount",
                       [key, _datetime(now)])
        amount = sum(row[0] for row in cursor.fetchall())
        if amount:
            cursor.execute("UPDATE usage_quotacounter SET held = held - %s WHERE key = %s", [amount, key])
        return amount

    @staticmethod
    def _settle(cursor, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...]) -> None:
        cursor.execute("DELETE FROM usage_quotahold WHERE request_id = %s RETURNING key, amount", [request_id])
        held = dict(cursor.fetchall())  # a reservation that expired meanwhile was given back already
        for charge, amount in sorted(zip(charges, actual, strict=True), key=lambda pair: pair[0].key):
            cursor.execute("UPDATE usage_quotacounter SET used = used + %s, held = held - %s WHERE key = %s",
                           [amount, held.get(charge.key, 0), charge.key])

    def _sweep(self, cursor, now: float) -> None:
        """Gives back every expired reservation, and drops counters whose period (plus the hold time) is over."""
        cursor.execute("SELECT DISTINCT key FROM usage_quotahold WHERE expires_at < %s", [_datetime(now)])
        for (key,) in sorted(cursor.fetchall()):
            self._reclaim(cursor, key, now)
        cursor.execute("DELETE FROM usage_quotacounter WHERE window_end < %s", [_datetime(now)])

    @staticmethod
    def _counters(cursor, keys: list[str]) -> dict[str, dict[str, int]]:
        result = {}
        for key in keys:
            cursor.execute("SELECT used, held, refused FROM usage_quotacounter WHERE key = %s", [key])
            row = cursor.fetchone() or (0, 0, 0)
            cursor.execute("SELECT COUNT(*) FROM usage_quotahold WHERE key = %s", [key])
            result[key] = {"used": row[0], "held": row[1], "refused": row[2], "holds": cursor.fetchone()[0]}
        return result


def _settle_failed(done, *, request_id: str) -> None:
    if done.exception() is not None:
        _settle_failed_error(done.exception(), request_id=request_id)


def _settle_failed_error(error: BaseException, *, request_id: str) -> None:
    logger.error("request %s: quota not settled (%s); its reservation expires by itself", request_id, error)


def _datetime(epoch: float):
    """A timestamp as the database compares it (SQLite keeps datetimes as UTC text)."""
    return connection.ops.adapt_datetimefield_value(datetime.fromtimestamp(epoch, UTC))


# --- Choosing one -----------------------------------------------------------------------------------------------

def quota_backend() -> QuotaBackend:
    """Redis when QUOTA_REDIS_URL is set (it defaults to REDIS_URL), else the database."""
    return _backend(settings.LLMHUB["QUOTA_REDIS_URL"], settings.LLMHUB["QUOTA_TIMEOUT_SECONDS"])


@cache
def _backend(redis_url: str, timeout: float) -> QuotaBackend:
    return RedisQuotaBackend(redis_url, timeout=timeout) if redis_url else DatabaseQuotaBackend()
