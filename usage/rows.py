"""How a batch of usage rows is written: one `INSERT … ON CONFLICT (request_id) DO NOTHING` (PostgreSQL: `COPY` into a
temporary table first), used by every writer of the log (usage/writer.py, usage/stream.py, usage/spool.py)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, DataError, IntegrityError, connection, connections, transaction

from usage.entries import route_explained

if TYPE_CHECKING:
    from usage.entries import BillingEventEntry, UsageEntry

logger = logging.getLogger(__name__)

# Errors that come back however often a batch is retried: a value the database or its field refuses.
REFUSED = (IntegrityError, DataError, ValidationError, ValueError, TypeError)
COPY_FROM_ROWS = 50  # PostgreSQL: batches at least this large go through COPY


def rows_insert(entries: Sequence[UsageEntry | BillingEventEntry]) -> None:
    """Write one batch; a row whose request_id is already in the log is skipped by the database. Billing events
    queued among the rows (usage/billing.py: thresholds crossed on the Redis quota back end) are written in the
    same transaction, an event whose dedupe key is taken already skipped."""
    from usage.billing import billing_events_insert
    from usage.entries import BillingEventEntry
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
