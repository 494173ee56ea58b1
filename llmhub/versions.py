"""Version tokens of the process-local snapshots (llmhub.snapshot), kept where every process sees them.

A token is an opaque string; a change replaces it with a new random one. With Redis the tokens live in the
shared cache. Without it the cache is per-process memory, so the tokens live in one small file per snapshot,
by default in a folder beside the SQLite database (`LLMHUB["SNAPSHOT_VERSIONS_DIR"]`): every process on the
machine using that database reads the same files. A check costs one open and read of 32 bytes (microseconds),
once per check interval.
"""

import functools
import mmap
import os
import re
import time
import uuid

from django.conf import settings

from llmhub.cache import cache

_NAME = re.compile(r"[A-Za-z0-9:._-]+")

# One token bumped by every change of the snapshots that must be seen by the next request anywhere (prompt
# templates, experiments): the request path reads it once per request (`epoch_location`).
EPOCH_KEY = "llmhub:snapshot:epoch"


def version_get(key: str) -> str:
    """The current token of `key`, created on first use."""
    path = _file(key)
    if path is None:
        version = cache.get(key)
        if version is None:
            cache.add(key, uuid.uuid4().hex, timeout=None)
            version = cache.get(key)
        return version
    try:
        return _read(path)
    except FileNotFoundError:
        # Two first readers may both create it: the later token wins, which costs one rebuild at most.
        _write(path)
        return _read(path)


# The epoch file as the request path reads it: mapped into memory once (a read is then a copy of 32 bytes, no system
# call; writes are in place, so the mapping sees them at once). Its identity is checked again every second: a
# folder removed and made again has a new file.
_mapped: dict[str, tuple[mmap.mmap, int, float]] = {}  # path -> (mapping, inode, when it was last checked)
_MAPPING_CHECK_SECONDS = 1.0


def epoch_get() -> str:
    """`version_get(EPOCH_KEY)`, for every request: from memory when the token is a file."""
    path = _file(EPOCH_KEY)
    if path is None:
        return version_get(EPOCH_KEY)
    known = _mapped.get(path)
    now = time.monotonic()
    if known is not None and now - known[2] < _MAPPING_CHECK_SECONDS:
        return known[0][:64].decode()
    return _mapping_renewed(path, known, now)


def _mapping_renewed(path: str, known: tuple[mmap.mmap, int, float] | None, now: float) -> str:
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        inode = None
    if known is not None and inode == known[1]:
        _mapped[path] = (known[0], inode, now)
        return known[0][:64].decode()
    if known is not None:
        del _mapped[path]
        known[0].close()
    token = version_get(EPOCH_KEY)  # (creates the file when there is none)
    try:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            mapping = mmap.mmap(descriptor, 0, access=mmap.ACCESS_READ)  # its size: the 32 bytes of a token
            _mapped[path] = (mapping, os.fstat(descriptor).st_ino, now)
        finally:
            os.close(descriptor)
    except (OSError, ValueError):  # an empty or vanished file: read as a file again next time
        pass
    return token


def version_bump(key: str) -> None:
    """Replaces the token of `key`: every process rebuilds its snapshot at its next check."""
    path = _file(key)
    if path is None:
        cache.set(key, uuid.uuid4().hex, timeout=None)
    else:
        _write(path)


def epoch_location() -> tuple[str, str] | None:
    """Where a request reads the epoch: (the Redis URL, the key there) when the tokens live in a Redis cache; None
    when they are files (`version_get(EPOCH_KEY)` then reads it: one small file)."""
    if settings.LLMHUB["SNAPSHOT_VERSIONS"] != "cache":
        return None
    location = settings.CACHES["default"].get("LOCATION")
    if not isinstance(location, str) or not location.startswith(("redis://", "rediss://")):
        return None
    return location, _epoch_key(settings.CACHES["default"].get("KEY_PREFIX", ""),
                                settings.CACHES["default"].get("VERSION", 1))


@functools.lru_cache(maxsize=8)
def _epoch_key(prefix: str, version: int) -> str:
    return cache.make_key(EPOCH_KEY)  # as Django's cache names it in Redis (with its prefix and version)


def _file(key: str) -> str | None:
    """The token's file; None when the tokens live in the cache."""
    if settings.LLMHUB["SNAPSHOT_VERSIONS"] == "cache":
        return None
    # Read at each call: a test run swaps in its own database, and with it its own tokens.
    database = settings.DATABASES["default"]
    return _path(settings.LLMHUB["SNAPSHOT_VERSIONS_DIR"], database["ENGINE"], str(database["NAME"]), key)


@functools.lru_cache(maxsize=64)
def _path(folder: str, engine: str, database: str, key: str) -> str:
    if not _NAME.fullmatch(key):
        raise ValueError(f"Invalid snapshot version key {key!r}.")
    if not folder:
        folder = f"{database}-versions" if engine.endswith("sqlite3") else str(settings.VAR_DIR / "snapshot-versions")
    return os.path.join(folder, key)


def _read(path: str) -> str:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        return os.read(descriptor, 64).decode()
    finally:
        os.close(descriptor)


def _write(path: str) -> None:
    # Overwritten in place, always 32 bytes: cheaper than a rename (ext4 flushes a file renamed over another).
    # A reader that caught a write halfway sees a token that is neither old nor new, which costs one extra
    # rebuild, never a missed change: any token it reads after the write is the new one.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(descriptor, uuid.uuid4().hex.encode(), 0)
    finally:
        os.close(descriptor)
