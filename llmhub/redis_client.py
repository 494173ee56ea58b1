"""A small pipelined Redis client for the quota hot path: one connection per event loop, many requests in flight
on it (Redis answers in order), replies parsed by hiredis.

redis-py's asyncio client costs about 0.2 ms a command in Python (a pool checkout, a lock, its parser); the quota
budget is 0.3 ms for a whole request. This one writes the command and awaits a future that the protocol resolves
when the reply arrives: about 0.07 ms on loopback. It only does what quotas need: commands, scripts (EVALSHA, and
EVAL once after Redis forgot the script) on arguments the caller may keep encoded (`Script`, `bulk`), a deadline
per call (one timer per connection watches them all); a connection that fails or times out is dropped and the next
call opens a new one (so service resumes by itself when Redis is back). On a busy machine each wake-up of the event
loop costs tens of microseconds, so a command sent without waiting rides with the next one, and the timer that
bounds its wait is cancelled when it does.
"""

import asyncio
import collections
import contextlib
import hashlib
import math
import ssl
import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

# A command sent without waiting (a quota settle) waits at most this long for the next command (the next request's
# decision) to share its system call and its answer's wake-up.
NOWAIT_WITHIN_SECONDS = 0.002


class RedisUnavailable(Exception):
    """No answer from Redis (refused, reset, timed out) or an error reply."""


class _Protocol(asyncio.Protocol):
    """One connection. Commands awaited under a timeout (`timeout` set) are watched by one timer per connection
    rather than an `asyncio.timeout` each: a command that stays unanswered past its deadline drops the connection,
    failing every command still waiting on it (the next call opens a new one)."""

    def __init__(self, timeout: float | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.timeout = timeout
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._deadlines: collections.deque[float] = collections.deque()  # per waiting command (inf: no deadline)
        self._unsent: list[bytes] = []
        self._write_soon = False
        self._write_later: asyncio.TimerHandle | None = None
        self._watching = False
        self._timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting, deadlines = self._waiting, self._deadlines
        while (reply := self._reader.gets()) is not False:
            future = waiting.popleft()
            deadlines.popleft()
            if not future.done():  # its caller may have given up (cancelled): the reply is dropped
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        message = f"no answer from Redis within {self.timeout} s" if self._timed_out else \
            "the connection to Redis was lost"
        self._deadlines.clear()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(RedisUnavailable(message))

    def _watch(self) -> None:
        """The deadline timer: drops the connection when the first command with a deadline is overdue, else
        sleeps until that deadline (or stops when no command with one is waiting)."""
        self._watching = False
        if self.lost:
            return
        first = next((deadline for deadline in self._deadlines if deadline != math.inf), None)
        if first is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= first:
            self._timed_out = True
            self.close()
            return
        self._watching = True
        loop.call_at(first, self._watch)

    def send_timed(self, packed: bytes) -> asyncio.Future:
        """As `send`, with the connection's timeout as the command's deadline."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append(future)
        deadline = loop.time() + self.timeout
        self._deadlines.append(deadline)
        if not self._watching:
            self._watching = True
            loop.call_at(deadline, self._watch)
        self._unsent.append(packed)
        if not self._write_soon:
            self._write_soon = True
            loop.call_soon(self._write)
        return future

    def send(self, packed: bytes, *, within: float = 0.0) -> asyncio.Future:
        """Queues a command; the commands queued during one turn of the event loop are written together (at
        concurrency 16, one system call for several requests' commands). With `within` (seconds), the command
        may wait that long for another to go out with (and its answer to come back with the other's)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append(future)
        self._deadlines.append(math.inf)
        self._unsent.append(packed)
        if within:
            if self._write_later is None:
                self._write_later = loop.call_later(within, self._write_delayed)
        elif not self._write_soon:
            self._write_soon = True
            loop.call_soon(self._write)
        return future

    def _write_delayed(self) -> None:
        self._write_later = None
        self._write()

    def send_now(self, packed: bytes) -> asyncio.Future:
        """Writes a command (after any still queued) at once: once this returns, the bytes are the kernel's, which
        delivers them even if this process is killed the next moment."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._deadlines.append(math.inf)
        self._unsent.append(packed)
        self._write()
        return future

    def _write(self) -> None:
        self._write_soon = False
        if self._write_later is not None:  # what waited goes out now: its timer would only wake the loop for nothing
            self._write_later.cancel()
            self._write_later = None
        if self._unsent and not self.lost:
            self.transport.write(self._unsent[0] if len(self._unsent) == 1 else b"".join(self._unsent))
        self._unsent.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class RedisClient:
    """`await client.call("HGETALL", key)`, `await client.run(script, body, count)`. Safe to share across event
    loops (each loop gets its own connection)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"Unsupported Redis URL scheme {parts.scheme!r}: use redis:// or rediss://")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 6379
        self.db = int(parts.path.strip("/") or 0)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        self.timeout = timeout
        self._connections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._connecting: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._background: set[asyncio.Task] = set()

    async def call(self, *args: str | int | bytes):
        return await self.call_packed(hiredis.pack_command(args))

    async def call_packed(self, packed: bytes):
        """`call` of a command already in Redis's wire format. A silent Redis (no answer within the timeout) drops
        the connection: later calls open a new one."""
        connection = self._connections.get(asyncio.get_running_loop())
        if connection is None or connection.lost:
            connection = await self._connect()
        reply = await connection.send_timed(packed)
        if isinstance(reply, hiredis.ReplyError):
            raise RedisUnavailable(f"Redis refused the command: {reply}")
        return reply

    async def run(self, script: "Script", body: bytes, count: int):
        """Runs a script on `body` (its number of keys, keys and arguments in wire format: `count` items): by its
        SHA, and by its source once Redis has forgotten it (restarted)."""
        connection = self._connections.get(asyncio.get_running_loop())
        if connection is None or connection.lost:
            connection = await self._connect()
        return await self._run_reply(connection.send_timed(script.packed(body, count)), script, body, count)

    def run_sent(self, script: "Script", body: bytes, count: int) -> Awaitable | None:
        """`run`, its command queued before this returns (it goes out with this turn's other commands), to be
        awaited later; None when this event loop has no connection yet (then `run`)."""
        connection = self._connections.get(asyncio.get_running_loop())
        if connection is None or connection.lost:
            return None
        return self._run_reply(connection.send_timed(script.packed(body, count)), script, body, count)

    async def _run_reply(self, sent: asyncio.Future, script: "Script", body: bytes, count: int):
        reply = await sent
        if isinstance(reply, hiredis.ReplyError):
            if "NOSCRIPT" in str(reply):
                return await self.call_packed(script.packed(body, count, by_sha=False))
            raise RedisUnavailable(f"Redis refused the command: {reply}")
        return reply

    def run_nowait(self, script: "Script", body: bytes, count: int, *, failed: Callable[[Exception], None],
                   done: Callable[[Any], None] | None = None) -> None:
        """Runs a script without waiting for its answer: the command is queued now (so a later command of this
        process runs after it) and goes out with the next command, within NOWAIT_WITHIN_SECONDS; `failed(error)`
        is called if Redis refuses it or the connection is lost first, `done(reply)` when it ran. Without a
        connection, one is opened in a task of its own."""
        loop = asyncio.get_running_loop()
        connection = self._connections.get(loop)
        if connection is None or connection.lost:
            task = loop.create_task(self._run_reporting(script, body, count, failed, done))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        future = connection.send(script.packed(body, count), within=NOWAIT_WITHIN_SECONDS)
        future.add_done_callback(partial(self._run_nowait_done, script, body, count, failed, done))

    def _run_nowait_done(self, script: "Script", body: bytes, count: int, failed: Callable[[Exception], None],
                         done: Callable[[Any], None] | None, future: asyncio.Future) -> None:
        error = future.exception()
        reply = None if error is not None else future.result()
        if isinstance(reply, hiredis.ReplyError):
            if "NOSCRIPT" in str(reply):  # Redis restarted: send the script itself
                task = asyncio.get_running_loop().create_task(self._run_reporting(script, body, count, failed, done))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                return
            error = RedisUnavailable(f"Redis refused the command: {reply}")
        if error is not None:
            failed(error)
        elif done is not None:
            done(reply)

    async def _run_reporting(self, script: "Script", body: bytes, count: int, failed: Callable[[Exception], None],
                             done: Callable[[Any], None] | None) -> None:
        try:
            reply = await self.run(script, body, count)
        except RedisUnavailable as error:
            failed(error)
            return
        if done is not None:
            done(reply)

    def call_now(self, args: tuple, *, failed: Callable[[Exception], None]) -> bool:
        """Writes a command at once without waiting for its answer (see `_Protocol.send_now`); `failed(error)` is
        called if Redis refuses it or the connection is lost first. False when this event loop has no connection
        yet (one is opened in the background): the caller does without."""
        loop = asyncio.get_running_loop()
        connection = self._connections.get(loop)
        if connection is None or connection.lost:
            if loop not in self._connecting:
                task = loop.create_task(self._connect())
                self._background.add(task)
                task.add_done_callback(_connect_done)
                task.add_done_callback(self._background.discard)
            return False
        future = connection.send_now(hiredis.pack_command(args))
        future.add_done_callback(partial(_reply_check, failed))
        return True

    async def drain(self) -> None:
        """At shutdown: waits until Redis has run every script sent without waiting (an answer to a PING comes
        after theirs)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        connection = self._connections.get(asyncio.get_running_loop())
        if connection is not None and not connection.lost:
            with contextlib.suppress(RedisUnavailable):
                await self.call("PING")

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        pending = self._connecting.get(loop)
        if pending is None:  # one connection attempt at a time per loop; the others wait for it
            pending = self._connecting[loop] = loop.create_task(self._open(loop))
            pending.add_done_callback(lambda _: self._connecting.pop(loop, None))
        return await asyncio.shield(pending)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        connection = None
        try:
            async with asyncio.timeout(self.timeout):
                _, connection = await loop.create_connection(partial(_Protocol, self.timeout), self.host, self.port,
                                                             ssl=self.ssl)
                setup = []
                if self.password is not None:
                    auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                    setup.append(connection.send(hiredis.pack_command(auth)))
                if self.db:
                    setup.append(connection.send(hiredis.pack_command(("SELECT", self.db))))
                for reply in [await future for future in setup]:
                    if isinstance(reply, hiredis.ReplyError):
                        raise RedisUnavailable(f"Redis refused the connection set-up: {reply}")
        except (OSError, TimeoutError, RedisUnavailable) as error:
            if connection is not None:
                connection.close()
            if isinstance(error, RedisUnavailable):
                raise
            raise RedisUnavailable(f"cannot connect to Redis: {type(error).__name__}") from None
        self._connections[loop] = connection
        return connection


def bulk(value: str | int | bytes) -> bytes:
    """One argument of a command in Redis's wire format (RESP bulk string)."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class Script:
    """A Lua script, with the head of its EVALSHA and EVAL commands in wire format: a caller that keeps the
    static part of its keys and arguments encoded (usage/quota_backends.py) only encodes what changes."""

    __slots__ = ("by_sha", "by_source", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.by_sha = bulk("EVALSHA") + bulk(hashlib.sha1(source.encode()).hexdigest())  # noqa: S324
        self.by_source = bulk("EVAL") + bulk(source)

    def packed(self, body: bytes, count: int, *, by_sha: bool = True) -> bytes:
        return b"*%d\r\n%s%s" % (count + 2, self.by_sha if by_sha else self.by_source, body)


def _connect_done(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # a failed background connection is retried by the next call; nothing to report


def _reply_check(failed: Callable[[Exception], None], future: asyncio.Future) -> None:
    error = future.exception()
    if error is None and isinstance(future.result(), hiredis.ReplyError):
        error = RedisUnavailable(f"Redis refused the command: {future.result()}")
    if error is not None:
        failed(error)
