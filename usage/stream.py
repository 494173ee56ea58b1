"""Production: usage rows leave the request process through a Redis stream, and a consumer writes them.

`stream_append` (called by `usage_record` on an event loop, when `USAGE_STREAM_URL` is set: production's default
is REDIS_URL) serialises the entry and writes one `XADD llmhub:usage * e <json>` on the process's Redis connection at
once, before the response is sent: from then on the bytes are the kernel's, which delivers them to Redis even if
the process is killed the next moment (SIGKILL, OOM). The request path holds the interpreter for a few
microseconds; no batch is ever written by the app process. When there is no connection yet, or Redis refuses or
loses the command, the entry goes to the in-process writer instead (usage/writer.py: the database directly), so
nothing is lost while Redis is down; a row that reaches the database both ways exists once (`request_id` is
unique).

`stream_consume` (`python manage.py usage_consume`) reads the stream in a consumer group, writes each batch with
`rows_insert` (PostgreSQL: COPY into a temporary table, then one INSERT … ON CONFLICT (request_id) DO NOTHING),
and only then acknowledges and deletes the entries. A consumer killed mid-batch leaves its entries pending: the
next start of the same consumer reads them again, and any other consumer claims them after
`CLAIM_IDLE_SECONDS`; written twice, they exist once. The stream is never trimmed: entries nobody consumed stay
in Redis (memory) until a consumer runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from functools import cache, partial
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError

from llmhub.redis_client import RedisClient
from usage.entries import entry_decode, entry_encode
from usage.rows import rows_insert
from usage.writer import writer

if TYPE_CHECKING:
    from usage.entries import UsageEntry

logger = logging.getLogger(__name__)

STREAM = "llmhub:usage"
GROUP = "writers"
CLAIM_IDLE_SECONDS = 30
MAX_BACKOFF_SECONDS = 5.0


@cache
def _client(url: str) -> RedisClient:
    return RedisClient(url, timeout=settings.LLMHUB["QUOTA_TIMEOUT_SECONDS"])


def stream_append(entry: UsageEntry) -> bool:
    """Hands `entry` to the stream; False when the caller must queue it itself (no stream configured, no event
    loop in this thread, no connection yet)."""
    url = settings.LLMHUB["USAGE_STREAM_URL"]
    if not url:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return _client(url).call_now(("XADD", STREAM, "*", "e", entry_encode(entry)), failed=partial(_append_failed, entry))


def _append_failed(entry: UsageEntry, error: Exception) -> None:
    logger.warning("usage row %s not taken by the Redis stream (%s): written by this process", entry.request_id, error)
    writer.record(entry)


def stream_consume(*, url: str, batch_size: int = 5000, block_ms: int = 1000, stop: threading.Event | None = None,
                   once: bool = False) -> int:
    """Writes the stream's entries to the usage log until `stop` is set (or, with `once`, until it is empty);
    returns how many entries it wrote."""
    import redis

    stop = stop or threading.Event()
    client = redis.Redis.from_url(url, socket_timeout=max(5.0, block_ms / 1000 + 5))
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
    written, backoff = 0, 0.0
    while not stop.is_set():
        try:
            # First what this consumer read before and did not acknowledge (a failed write), then what dead
            # consumers left pending, then new entries.
            entries = _entries(client.xreadgroup(GROUP, consumer, {STREAM: "0"}, count=batch_size))
            if not entries:
                claimed = client.xautoclaim(STREAM, GROUP, consumer, min_idle_time=CLAIM_IDLE_SECONDS * 1000,
                                            start_id="0-0", count=batch_size)
                entries = [(entry_id, fields) for entry_id, fields in claimed[1] if fields]
            if not entries:
                entries = _entries(client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=batch_size,
                                                     block=None if once else block_ms))
            if not entries:
                if once:
                    break
                continue
            rows_insert([entry_decode(fields[b"e"]) for _, fields in entries])
            ids = [entry_id for entry_id, _ in entries]
            client.xack(STREAM, GROUP, *ids)
            client.xdel(STREAM, *ids)
            written += len(ids)
            backoff = 0.0
        except (redis.RedisError, DatabaseError) as error:
            backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF_SECONDS)
            logger.warning("usage stream: %s; retrying in %.1f s", error, backoff)
            _connection_discard()
            stop.wait(backoff)
    return written


def _entries(reply) -> list[tuple[bytes, dict]]:
    return [(entry_id, fields) for _, items in (reply or []) for entry_id, fields in items if fields]


def _connection_discard() -> None:
    from django.db import connection

    try:
        connection.close()
    except DatabaseError:
        logger.debug("closing the usage consumer's database connection failed", exc_info=True)


def stream_wait_empty(url: str, timeout: float = 10.0) -> bool:
    """True once every entry of the stream was written (for tests and shutdown scripts)."""
    import redis

    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.xlen(STREAM) == 0:
            return True
        time.sleep(0.05)
    return False
