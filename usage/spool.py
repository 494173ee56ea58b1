"""Embedded mode: usage rows leave the request process through an append-only spool beside the SQLite database.

`SpoolSegments.append` (called by the usage writer's `record`, on the request path) writes the entry as one JSON
line with a single `os.write` to this process's open segment (`O_APPEND`): from then on the line is the kernel's,
and survives the process (SIGKILL, OOM kill; not a power cut). About 10 µs of the request's time, most of it
serialising the entry; no batch is ever written there. The writer's thread rolls the segment (opens the next one,
closes this one) at every tick that saw rows, every `USAGE_FLUSH_INTERVAL_SECONDS`.

A segment is `<pid>-<token>-<sequence>.seg` in the spool folder (`spool_folder`): created under a dotted name, locked
(`flock`) by its process, then renamed into place, so a segment that can be locked is one no live process appends to
(rolled, or left by a process that died). `spool_drain` writes such segments to the usage log in large batches with
`rows_insert` and deletes each only once its rows are committed: a drain killed halfway writes the batch again next
time, and `request_id` (billing events: their dedupe key) makes it exist once.

One process drains at a time, whoever holds the `flock` of `<folder>/.lock`: `manage.py usage_consume` (no stream
configured) takes it and keeps it; without one, each app process's writer thread takes it for a drain at its ticks,
and while someone else holds it, tries again about once a second (in case the consumer died).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError

from llmhub.db import connection_heal
from usage.entries import entry_decode
from usage.rows import rows_insert

if TYPE_CHECKING:
    from usage.entries import BillingEventEntry, UsageEntry

logger = logging.getLogger(__name__)

SUFFIX = ".seg"
LOCK_FILE = ".lock"
STALE_NEW_SECONDS = 60.0  # a dotted segment this old lost its process between creating and naming it (empty)
MAX_BACKOFF_SECONDS = 5.0
DECODE_SLICE = 50  # lines (about 0.5 ms)
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC


def spool_folder() -> str | None:
    """The spool's folder, or None when rows go elsewhere: a Redis stream is configured, the spool is turned off
    (`LLMHUB_USAGE_SPOOL=false`), or the database is not SQLite and no folder was named."""
    options = settings.LLMHUB
    if not options.get("USAGE_SPOOL", True) or options.get("USAGE_STREAM_URL"):
        return None
    if folder := options.get("USAGE_SPOOL_DIR"):
        return str(folder)
    database = settings.DATABASES["default"]
    return f"{database['NAME']}-usage" if database["ENGINE"].endswith("sqlite3") else None


class SpoolSegments:
    """This process's side: the open segment it appends to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._descriptor: int | None = None
        self._path = ""  # the open segment's
        self._rows = 0
        self._token = os.urandom(4).hex()
        self._sequence = itertools.count(1)

    def after_fork(self) -> None:
        # The child shares the parent's segment (and its flock): it lets go of it and names its own.
        if self._descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(self._descriptor)
        self.__init__()

    @property
    def prefix(self) -> str:
        """The start of this process's segment names."""
        return f"{os.getpid()}-{self._token}-"

    @property
    def rows(self) -> int:
        """Lines in the open segment."""
        return self._rows

    def closed(self, folder: str) -> list[str]:
        """This process's segments waiting for a drain (all but the open one)."""
        open_name = os.path.basename(self._path) if self._descriptor is not None else None
        return [name for name in spool_segments(folder, self.prefix) if name != open_name]

    def append(self, line: bytes, folder: str) -> bool:
        """Hands one line to the kernel; False (nothing written) when it could not."""
        with self._lock:
            if self._descriptor is None:
                self._descriptor, self._path = self._open(folder)
            written = os.write(self._descriptor, line)
            if written != len(line):
                # Disk full: a cut line, which a drain logs and skips. The next line goes to a new segment.
                self._close_locked()
                return False
            self._rows += 1
        return True

    def roll(self, folder: str) -> None:
        """Closes the segment that has rows (drains may take it from now on) and opens the next one, so the
        request path never creates a file."""
        if not self._rows:
            return
        following = self._open(folder)
        with self._lock:
            previous = self._descriptor
            (self._descriptor, self._path), self._rows = following, 0
        if previous is not None:
            os.close(previous)

    def close(self) -> None:
        """At exit: the segment is closed, and removed if empty."""
        with self._lock:
            descriptor, path, rows = self._descriptor, self._path, self._rows
            self._descriptor, self._rows = None, 0
        if descriptor is not None:
            if not rows:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            os.close(descriptor)

    def _close_locked(self) -> None:
        descriptor, self._descriptor, self._rows = self._descriptor, None, 0
        if descriptor is not None:
            os.close(descriptor)

    def _open(self, folder: str) -> tuple[int, str]:
        name = f"{self.prefix}{next(self._sequence):08d}{SUFFIX}"
        path = os.path.join(folder, name)
        hidden = os.path.join(folder, f".{name}.new")
        try:
            descriptor = os.open(hidden, _OPEN_FLAGS, 0o644)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            descriptor = os.open(hidden, _OPEN_FLAGS, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)  # before it has its name: a drain never takes a live segment
            os.rename(hidden, path)
        except OSError:
            os.close(descriptor)
            raise
        return descriptor, path


def spool_lock_open(folder: str) -> int:
    os.makedirs(folder, exist_ok=True)
    return os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def spool_lock_try(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def spool_lock_release(descriptor: int) -> None:
    fcntl.flock(descriptor, fcntl.LOCK_UN)


def spool_segments(folder: str, prefix: str = "") -> list[str]:
    """The segments' names (those starting with `prefix`), oldest first within each process."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name.endswith(SUFFIX) and name.startswith(prefix))


def spool_drain(folder: str, *, batch_size: int = 5000) -> int:
    """Writes every segment no live process appends to, batches of at least `batch_size` rows per transaction, and
    deletes each segment once its rows are committed; returns how many rows it wrote. The caller holds the spool's
    lock. A database error is raised with the uncommitted segments left in place."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    _stale_removed(folder, names)
    written = 0
    batch: list[UsageEntry | BillingEventEntry] = []
    taken: list[tuple[int, str]] = []  # (descriptor, path) of the segments whose rows are in `batch`
    try:
        for name in sorted(name for name in names if name.endswith(SUFFIX)):
            path = os.path.join(folder, name)
            try:
                descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # drained meanwhile
                continue
            if not spool_lock_try(descriptor):  # a live process appends to it
                os.close(descriptor)
                continue
            taken.append((descriptor, path))
            batch.extend(_segment_entries(descriptor, path))
            if len(batch) >= batch_size:
                connection_heal()
                written += _committed(batch, taken)
        if taken:
            connection_heal()
            written += _committed(batch, taken)
    finally:
        for descriptor, _ in taken:
            os.close(descriptor)
    return written


def _committed(batch: list, taken: list[tuple[int, str]]) -> int:
    """Writes `batch`, then deletes the segments it came from (empties both lists)."""
    if batch:
        rows_insert(batch)
    for descriptor, path in taken:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(descriptor)
    count = len(batch)
    batch.clear()
    taken.clear()
    return count


def _segment_entries(descriptor: int, path: str) -> list:
    chunks = []
    while chunk := os.read(descriptor, 1 << 20):
        chunks.append(chunk)
    entries = []
    for number, line in enumerate(b"".join(chunks).split(b"\n")):
        if not line:
            continue
        if number % DECODE_SLICE == DECODE_SLICE - 1:
            # An app process's writer thread drains too (no consumer): a segment is read back a slice at a time,
            # letting the event loop in between, rather than holding the interpreter for milliseconds.
            time.sleep(0)
        try:
            entries.append(entry_decode(line))
        except Exception as error:  # a line cut short (disk full, a process killed mid-write): no answer was sent
            logger.error("usage spool: an unreadable line of %s dropped (%s): %.200r", path, error, line)
    return entries


def _stale_removed(folder: str, names: list[str]) -> None:
    for name in (name for name in names if name.startswith(".") and name.endswith(".new")):
        path = os.path.join(folder, name)
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.stat(path).st_mtime > STALE_NEW_SECONDS:
                os.unlink(path)


def spool_consume(*, folder: str, batch_size: int = 5000, poll_seconds: float = 0.1,
                  stop: threading.Event | None = None, once: bool = False) -> int:
    """`manage.py usage_consume` without a stream: takes the spool's lock (waiting while another process holds it),
    then writes the segments as they are rolled until `stop` is set (with `once`: until none is left to take);
    returns how many rows it wrote."""
    from django.db import connection

    stop = stop or threading.Event()
    lock = spool_lock_open(folder)
    try:
        while not spool_lock_try(lock):
            if stop.wait(0.2):
                return 0
        written, backoff = 0, 0.0
        while not stop.is_set():
            try:
                connection.queries_log.clear()  # DEBUG (embedded): no log of every batch
                count = spool_drain(folder, batch_size=batch_size)
            except DatabaseError as error:
                backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF_SECONDS)
                logger.warning("usage spool: %s; retrying in %.1f s", error, backoff)
                with contextlib.suppress(DatabaseError):
                    connection.close()
                stop.wait(backoff)
                continue
            written, backoff = written + count, 0.0
            if not count:
                if once:
                    break
                stop.wait(poll_seconds)
        return written
    finally:
        os.close(lock)  # releases the lock
