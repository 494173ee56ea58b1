"""Database connections outside Django's request cycle heal themselves.

Django checks a connection only around a request (`close_old_connections` on request start and end, and with
`CONN_HEALTH_CHECKS` a ping before the request's first query). The executor threads behind
`sync_to_async(thread_sensitive=False)`, the usage and health writers and the snapshot rebuilds see no request:
without a check, a connection killed by a database restart, a failover or an idle timeout would stay dead in
that thread for good, and every query there fail. Celery tasks need nothing from here: Celery's Django fixup
closes the worker's connections before and after each task.
"""

import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, OperationalError, connection

P = ParamSpec("P")
T = TypeVar("T")

# A connection that died (server restarted, backend terminated, network cut) or a database that refuses
# connections: worth one more try on a fresh connection, and a 503 rather than a 500 if that fails too.
CONNECTION_ERRORS = (OperationalError, InterfaceError)


def connection_heal() -> None:
    """Before this thread's next database use: drop its connection if it broke or outlived `CONN_MAX_AGE`;
    with `CONN_HEALTH_CHECKS` the next query first checks that the one it keeps still answers. Inside a
    transaction (a caller's, a test's) nothing is done."""
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()


def db_read(function: Callable[P, T]) -> Callable[P, T]:
    """For reads (and idempotent writes) outside a request: heal the connection first, and when it dies under
    the read anyway, try once more on a fresh one. A database still failing raises its error, which the error
    renderers answer with 503 and Retry-After (`llmhub.api.unavailable_error`)."""

    @functools.wraps(function)
    def read(*args: P.args, **kwargs: P.kwargs) -> T:
        connection_heal()
        try:
            return function(*args, **kwargs)
        except CONNECTION_ERRORS:
            if connection.in_atomic_block:
                raise
            with contextlib.suppress(DatabaseError):
                connection.close()
        return function(*args, **kwargs)

    return read


def db_read_in_thread(function: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """`function` for an event loop: run in an executor thread (`thread_sensitive=False`, so it never waits
    behind another request's sync work) as a `db_read`."""
    return sync_to_async(db_read(function), thread_sensitive=False)
