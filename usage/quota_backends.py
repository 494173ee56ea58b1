"""The two back ends of usage.quotas: one interface, one atomic step per decision.

- `RedisQuotaBackend` (production: REDIS_URL set): one Lua script per decision takes every counter of a
  request in one round trip. A counter is a hash (`used`, `held`, `refused`, and `h:<request id>` per
  reservation) beside a sorted set of the reservations' expiry times; it expires after its period.
- `DatabaseQuotaBackend` (embedded): a conditional `UPDATE … SET held = held + n WHERE used + held + n <= limit`
  per counter in one transaction, checking the row count; reservations are rows of `QuotaHold`.

Amounts are integers (requests, tokens, or cost in units of 1e-10). A reservation that is never settled (its
process crashed) expires after `hold_seconds`: the next decision that would be refused because of it, or the
periodic sweep, gives its amount back first.
"""

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection, transaction

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

    async def counters(self, keys: list[str]) -> dict[str, dict[str, int]]:
        """`used`, `held`, `refused` and `holds` (reservations not settled) of each counter: for tests and pages."""
        raise NotImplementedError


# --- Redis ----------------------------------------------------------------------------------------------------

_RESERVE = """
-- KEYS: counters. ARGV: request id, hold ms, then per counter: limit, amount, window end (ms).
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local id, hold = ARGV[1], tonumber(ARGV[2])
local refused = -1
local state = {}
for i, key in ipairs(KEYS) do
  local limit, amount = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local values = redis.call('HMGET', key, 'used', 'held')
  local used, held = tonumber(values[1] or '0'), tonumber(values[2] or '0')
  if refused < 0 and used + held + amount > limit then
    -- Reservations of crashed processes expire: give them back before refusing.
    local expired = redis.call('ZRANGEBYSCORE', key .. ':x', '-inf', now)
    for _, owner in ipairs(expired) do
      local reserved = redis.call('HGET', key, 'h:' .. owner)
      if reserved then
        redis.call('HDEL', key, 'h:' .. owner)
        if reserved ~= '0' then redis.call('HINCRBY', key, 'held', '-' .. reserved) end
      end
    end
    if #expired > 0 then
      redis.call('ZREMRANGEBYSCORE', key .. ':x', '-inf', now)
      held = tonumber(redis.call('HGET', key, 'held') or '0')
    end
    if used + held + amount > limit then
      refused = i - 1
      redis.call('HINCRBY', key, 'refused', 1)
      redis.call('PEXPIREAT', key, tonumber(ARGV[3 * i + 2]) + hold)
    end
  end
  state[2 * i - 1], state[2 * i] = used, held
end
if refused < 0 then
  for i, key in ipairs(KEYS) do
    local amount, keep = ARGV[3 * i + 1], tonumber(ARGV[3 * i + 2]) + hold
    if amount ~= '0' then
      redis.call('HINCRBY', key, 'held', amount)
      redis.call('HSET', key, 'h:' .. id, amount)
      redis.call('ZADD', key .. ':x', now + hold, id)
      redis.call('PEXPIREAT', key .. ':x', keep)
      state[2 * i] = state[2 * i] + tonumber(amount)
    end
    redis.call('PEXPIREAT', key, keep)
  end
end
table.insert(state, 1, refused)
return state
"""

_SETTLE = """
-- KEYS: counters. ARGV: request id, hold ms, then per counter: actual amount, window end (ms).
local id, hold = ARGV[1], tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local reserved = redis.call('HGET', key, 'h:' .. id)
  if reserved then
    redis.call('HDEL', key, 'h:' .. id)
    redis.call('ZREM', key .. ':x', id)
    if reserved ~= '0' then redis.call('HINCRBY', key, 'held', '-' .. reserved) end
  end
  local actual = ARGV[2 * i + 1]
  if actual ~= '0' then redis.call('HINCRBY', key, 'used', actual) end
  redis.call('PEXPIREAT', key, tonumber(ARGV[2 * i + 2]) + hold)
end
return 1
"""


class RedisQuotaBackend(QuotaBackend):
    """Counters in Redis; one client per event loop (a redis.asyncio connection belongs to the loop that made it).
    A client reconnects by itself after Redis restarts, and re-sends a script Redis forgot (NOSCRIPT)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _client(self):
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # No retries, and short timeouts on connecting and on waiting for Redis's answer: a Redis that is down
            # or silent fails the decision quickly. A burst waits for one of a few pooled connections (no timeout:
            # each is freed within the socket timeouts) rather than opening hundreds; the wait is local queueing,
            # not Redis being unreachable, so it must not turn a busy moment into 503s.
            pool = BlockingConnectionPool.from_url(
                self.url, max_connections=settings.LLMHUB["QUOTA_REDIS_MAX_CONNECTIONS"], timeout=None,
                socket_timeout=self.timeout, socket_connect_timeout=self.timeout, retry=Retry(NoBackoff(), 0))
            redis = Redis(connection_pool=pool)
            client = (redis, redis.register_script(_RESERVE), redis.register_script(_SETTLE))
            self._clients[loop] = client
        return client

    async def reserve(self, *, request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
        _, reserve, _ = self._client()
        args: list = [request_id, int(hold_seconds * 1000)]
        for charge in charges:
            args += [charge.limit, charge.amount, int(charge.window_end * 1000)]
        reply = await self._run(reserve, [charge.key for charge in charges], args)
        refused = int(reply[0])
        return Decision(refused=None if refused < 0 else refused, used=tuple(int(v) for v in reply[1::2]),
                        held=tuple(int(v) for v in reply[2::2]))

    async def settle(self, *, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                     hold_seconds: float) -> None:
        _, _, settle = self._client()
        args: list = [request_id, int(hold_seconds * 1000)]
        for charge, amount in zip(charges, actual, strict=True):
            args += [amount, int(charge.window_end * 1000)]
        await self._run(settle, [charge.key for charge in charges], args)

    async def _run(self, script, keys: list[str], args: list):
        from redis.exceptions import RedisError

        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as error:
            raise QuotaBackendError(type(error).__name__) from error

    async def counters(self, keys: list[str]) -> dict[str, dict[str, int]]:
        redis, _, _ = self._client()
        result = {}
        for key in keys:
            values = await redis.hgetall(key)
            fields = {name.decode(): int(value) for name, value in values.items()}
            result[key] = {"used": fields.get("used", 0), "held": fields.get("held", 0),
                           "refused": fields.get("refused", 0),
                           "holds": sum(1 for name in fields if name.startswith("h:"))}
        return result


# --- Database ---------------------------------------------------------------------------------------------------

_SWEEP_EVERY_SECONDS = 60.0


class DatabaseQuotaBackend(QuotaBackend):
    """Counters in `usage_quotacounter`, reservations in `usage_quotahold`. Each decision is one short transaction
    in a worker thread (never across an upstream call); counters are taken in key order, so two transactions on
    PostgreSQL cannot deadlock."""

    def __init__(self) -> None:
        self._swept_at = 0.0

    async def reserve(self, *, request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
        return await self._in_thread(self._reserve, request_id, charges, hold_seconds)

    async def settle(self, *, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...],
                     hold_seconds: float) -> None:
        await self._in_thread(self._settle, request_id, charges, actual)

    async def counters(self, keys: list[str]) -> dict[str, dict[str, int]]:
        return await self._in_thread(self._counters, keys)

    async def _in_thread(self, function, *args):
        try:
            return await sync_to_async(function, thread_sensitive=False)(*args)
        except DatabaseError as error:
            # A connection that broke is not reused: the next decision opens a new one.
            await sync_to_async(connection.close, thread_sensitive=False)()
            raise QuotaBackendError(type(error).__name__) from error

    def _reserve(self, request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
        now = time.time()
        if now - self._swept_at > _SWEEP_EVERY_SECONDS:
            self._swept_at = now
            self._sweep(now, hold_seconds)
        order = sorted(range(len(charges)), key=lambda index: charges[index].key)
        refused = None
        with transaction.atomic(), connection.cursor() as cursor:
            for index in order:
                charge = charges[index]
                cursor.execute(
                    "INSERT INTO usage_quotacounter (key, used, held, refused, window_end) VALUES (%s, 0, 0, 0, %s) "
                    "ON CONFLICT (key) DO NOTHING", [charge.key, _datetime(charge.window_end + hold_seconds)])
            taken = []
            for index in order:
                if not self._take(cursor, charges[index], now):
                    refused = index
                    break
                taken.append(index)
            if refused is not None:
                for index in taken:
                    cursor.execute("UPDATE usage_quotacounter SET held = held - %s WHERE key = %s",
                                   [charges[index].amount, charges[index].key])
                cursor.execute("UPDATE usage_quotacounter SET refused = refused + 1 WHERE key = %s",
                               [charges[refused].key])
            else:
                expires = _datetime(now + hold_seconds)
                for charge in charges:
                    if charge.amount:
                        cursor.execute("INSERT INTO usage_quotahold (request_id, key, amount, expires_at) "
                                       "VALUES (%s, %s, %s, %s)", [request_id, charge.key, charge.amount, expires])
            state = self._state(cursor, [charge.key for charge in charges])
        return Decision(refused=refused, used=tuple(state[c.key][0] for c in charges),
                        held=tuple(state[c.key][1] for c in charges))

    def _take(self, cursor, charge: Charge, now: float) -> bool:
        update = "UPDATE usage_quotacounter SET held = held + %s WHERE key = %s AND used + held + %s <= %s"
        params = [charge.amount, charge.key, charge.amount, charge.limit]
        cursor.execute(update, params)
        if cursor.rowcount == 1:
            return True
        # Reservations of crashed processes expire: give them back before refusing.
        if self._reclaim(cursor, charge.key, now):
            cursor.execute(update, params)
            return cursor.rowcount == 1
        return False

    @staticmethod
    def _reclaim(cursor, key: str, now: float) -> int:
        cursor.execute("DELETE FROM usage_quotahold WHERE key = %s AND expires_at < %s RETURNING amount",
                       [key, _datetime(now)])
        amount = sum(row[0] for row in cursor.fetchall())
        if amount:
            cursor.execute("UPDATE usage_quotacounter SET held = held - %s WHERE key = %s", [amount, key])
        return amount

    @staticmethod
    def _state(cursor, keys: list[str]) -> dict[str, tuple[int, int]]:
        marks = ", ".join(["%s"] * len(keys))
        cursor.execute(f"SELECT key, used, held FROM usage_quotacounter WHERE key IN ({marks})", keys)  # noqa: S608
        return {key: (used, held) for key, used, held in cursor.fetchall()}

    def _settle(self, request_id: str, charges: tuple[Charge, ...], actual: tuple[int, ...]) -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            for charge, amount in sorted(zip(charges, actual, strict=True), key=lambda pair: pair[0].key):
                cursor.execute("DELETE FROM usage_quotahold WHERE request_id = %s AND key = %s RETURNING amount",
                               [request_id, charge.key])
                held = sum(row[0] for row in cursor.fetchall())
                cursor.execute("UPDATE usage_quotacounter SET used = used + %s, held = held - %s WHERE key = %s",
                               [amount, held, charge.key])

    def _sweep(self, now: float, hold_seconds: float) -> None:
        """Gives back every expired reservation, and drops counters whose period (plus the hold time) is over."""
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT DISTINCT key FROM usage_quotahold WHERE expires_at < %s", [_datetime(now)])
            for (key,) in sorted(cursor.fetchall()):
                self._reclaim(cursor, key, now)
            cursor.execute("DELETE FROM usage_quotacounter WHERE window_end < %s", [_datetime(now)])

    @staticmethod
    def _counters(keys: list[str]) -> dict[str, dict[str, int]]:
        with connection.cursor() as cursor:
            result = {}
            for key in keys:
                cursor.execute("SELECT used, held, refused FROM usage_quotacounter WHERE key = %s", [key])
                row = cursor.fetchone() or (0, 0, 0)
                cursor.execute("SELECT COUNT(*) FROM usage_quotahold WHERE key = %s", [key])
                result[key] = {"used": row[0], "held": row[1], "refused": row[2], "holds": cursor.fetchone()[0]}
        return result


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
