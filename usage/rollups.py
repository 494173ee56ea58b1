"""Usage roll-ups: the usage log summed per hour and per day, and the retention of the raw log.

`usage_rollups_update` (a Celery beat task, every `LLMHUB["USAGE_ROLLUP_INTERVAL_SECONDS"]`) recomputes the
buckets touched since the last runs: it never increments a bucket, it recomputes it from the raw rows and
replaces it. So a rerun changes nothing, a run killed halfway is repaired by the next, and two runs at once
produce what one would.

How a run finds its work. Log rows get increasing ids, but on PostgreSQL a row may become visible after rows
with higher ids (the writer's transaction commits later). So the state row keeps `rolled_up_id` (every row up to
it is in the roll-ups for good) and a mark (`mark_id`, the highest id seen at `mark_at`). Each run reads the
hours of the rows after `rolled_up_id` and recomputes them. `rolled_up_id` only moves up to a mark at least
`LLMHUB["USAGE_ROLLUP_SETTLE_SECONDS"]` older than the scan that covered it: a row with an id below the mark was
being inserted before the mark was taken, and its transaction (a batch insert, milliseconds) has committed
since. Recent rows are therefore scanned by two or three runs; recomputing is idempotent, so that costs a few
recomputed hours and nothing else.

One day is recomputed in one transaction: its touched hours from the raw rows, then the day from its hours.
On PostgreSQL a transaction-scoped advisory lock per day serialises two runs recomputing the same day, and a
worker killed mid-run releases it with its connection; SQLite's write transactions (IMMEDIATE) are serialised
already.

Retention (`usage_log_prune`, beat every 10 minutes): raw rows older than `LLMHUB["USAGE_RETENTION_DAYS"]`
(whole days in TIME_ZONE) are deleted in batches of `LLMHUB["USAGE_RETENTION_BATCH_SIZE"]` by id, each batch
its own short transaction (row locks only: inserts go on). Only rows already rolled up for good
(`id <= rolled_up_id`) are deleted, and days older than the retention plus one day are final: a run never
recomputes them, so no bucket is ever recomputed from a partly deleted day.
"""

import functools
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import groupby

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, IntegerField, Max, Sum
from django.db.models.expressions import RawSQL
from django.db.models.functions import Trunc
from django.utils import timezone

from usage.histograms import BOUNDS, BUCKETS, histogram_empty, histogram_merge
from usage.models import UsageDaySummary, UsageLog, UsageRollup, UsageRollupState

logger = logging.getLogger(__name__)

# What a bucket is keyed by. Both models are kept: `answered_model` is what was used and billed,
# `requested_model` what was asked for (they differ after a fallback, or when the request named none).
DIMENSIONS = ("user_id", "api_key_id", "requested_model", "answered_model", "tier", "endpoint", "status", "error_type")
# Log ids read per scan for touched hours; the state moves on after each chunk.
SCAN_CHUNK_IDS = 1_000_000
# pg_advisory_xact_lock(namespace, day): the namespace keeps these locks apart from anyone else's.
_LOCK_NAMESPACE = 0x75736167


def _config(name: str, default: float) -> float:
    return settings.LLMHUB.get(name, default)


# --- Calendar -----------------------------------------------------------------------------------------------

def _tz():
    return timezone.get_default_timezone()


def hour_floor(moment: datetime) -> datetime:
    """The start of the hour (in TIME_ZONE) holding `moment`."""
    return timezone.localtime(moment, _tz()).replace(minute=0, second=0, microsecond=0)


def day_start(day: date) -> datetime:
    """Midnight in TIME_ZONE starting `day`."""
    return datetime(day.year, day.month, day.day, tzinfo=_tz())


def local_date(moment: datetime) -> date:
    return timezone.localtime(moment, _tz()).date()


def _after(start: datetime, *, hours: int = 0, days: int = 0) -> datetime:
    # Hours are added in absolute time (an hour lasts an hour across a DST change); days by the calendar.
    if days:
        return day_start(local_date(start) + timedelta(days=days))
    return timezone.localtime(start.astimezone(UTC) + timedelta(hours=hours), _tz())


def retention_cutoff(now: datetime) -> datetime:
    """Raw rows created before this (a midnight in TIME_ZONE) may be deleted."""
    return day_start(local_date(now) - timedelta(days=int(_config("USAGE_RETENTION_DAYS", 90))))


def rollup_horizon(now: datetime) -> datetime:
    """Days starting before this are final: never recomputed (retention may be deleting their rows)."""
    return _after(retention_cutoff(now), days=1)


# --- Sums ---------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Totals:
    """What a bucket counts, summed."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)

    def add(self, other: "Totals") -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost += other.cost


MEASURES = ("requests", "errors", "input_tokens", "output_tokens", "cost")


@dataclass(slots=True)
class BucketTotals(Totals):
    """A bucket's sums with its histograms."""

    latency_histogram: list[int] = field(default_factory=histogram_empty)
    ttft_histogram: list[int] = field(default_factory=histogram_empty)


@functools.cache
def _bucket_sql(column: str) -> tuple[str, tuple[float, ...]]:
    """SQL for `usage.histograms.bucket_index(column)`: a binary search over BOUNDS as nested CASEs (about seven
    comparisons a row) with the very bounds Python uses as parameters, so SQL and Python agree to the last bit.
    Plain SQL rather than nested ORM `Case`s, which Django takes most of a second to compile."""
    quoted = connection.ops.quote_name(column)

    def search(low: int, high: int) -> tuple[str, list[float]]:
        if low == high:
            return str(low), []
        middle = (low + high + 1) // 2  # buckets low … middle-1 hold the values below BOUNDS[middle-1]
        below, below_params = search(low, middle - 1)
        above, above_params = search(middle, high)
        return f"CASE WHEN {quoted} < %s THEN {below} ELSE {above} END", [BOUNDS[middle - 1], *below_params,
                                                                        *above_params]

    sql, params = search(0, BUCKETS - 1)
    return f"CASE WHEN {quoted} IS NULL THEN NULL ELSE {sql} END", tuple(params)


def _bucket_expression(column: str) -> RawSQL:
    # Built from a quoted column name of our own and numeric parameters, never from input.
    return RawSQL(*_bucket_sql(column), output_field=IntegerField())  # noqa: S611


def _hour_totals(start: datetime) -> dict[tuple, BucketTotals]:
    """The raw rows of the hour starting at `start`, summed per bucket key: one statement, one snapshot."""
    groups = (UsageLog.objects.filter(created_at__gte=start, created_at__lt=_after(start, hours=1)).order_by()
              .values(*DIMENSIONS, latency_bucket=_bucket_expression("latency_ms"),
                      ttft_bucket=_bucket_expression("ttft_ms"))
              .annotate(requests=Count("pk"), input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"),
                        cost=Sum("cost")))
    totals: dict[tuple, BucketTotals] = {}
    for group in groups:
        key = tuple(group[name] for name in DIMENSIONS)
        bucket = totals.setdefault(key, BucketTotals())
        requests = group["requests"]
        bucket.requests += requests
        if group["status"] == UsageLog.Status.ERROR:
            bucket.errors += requests
        bucket.input_tokens += group["input_tokens"]
        bucket.output_tokens += group["output_tokens"]
        bucket.cost += group["cost"]
        bucket.latency_histogram[group["latency_bucket"]] += requests
        if group["ttft_bucket"] is not None:
            bucket.ttft_histogram[group["ttft_bucket"]] += requests
    return totals


def _day_totals(start: datetime) -> dict[tuple, BucketTotals]:
    """The hourly buckets of the day starting at `start`, summed per bucket key."""
    hours = (UsageRollup.objects.filter(period=UsageRollup.Period.HOUR, bucket_start__gte=start,
                                        bucket_start__lt=_after(start, days=1))
             .values_list(*DIMENSIONS, *MEASURES, "latency_histogram", "ttft_histogram"))
    grouped: dict[tuple, list[tuple]] = defaultdict(list)
    for row in hours:
        grouped[row[:len(DIMENSIONS)]].append(row[len(DIMENSIONS):])
    return {
        key: BucketTotals(*(sum(part[index] for part in parts) for index in range(len(MEASURES))),
                          latency_histogram=histogram_merge(*(part[-2] for part in parts)),
                          ttft_histogram=histogram_merge(*(part[-1] for part in parts)))
        for key, parts in grouped.items()
    }


def _bucket_replace(*, period: str, start: datetime, totals: dict[tuple, BucketTotals]) -> None:
    """Upsert one bucket as a whole: its rows are deleted and written again, in the caller's transaction."""
    UsageRollup.objects.filter(period=period, bucket_start=start).delete()
    now = timezone.now()
    UsageRollup.objects.bulk_create([
        UsageRollup(period=period, bucket_start=start, computed_at=now, **dict(zip(DIMENSIONS, key, strict=True)),
                    requests=sums.requests, errors=sums.errors, input_tokens=sums.input_tokens,
                    output_tokens=sums.output_tokens, cost=sums.cost, latency_histogram=sums.latency_histogram,
                    ttft_histogram=sums.ttft_histogram)
        for key, sums in totals.items()
    ])


def usage_day_recompute(*, day: date, hours: Iterable[datetime]) -> None:
    """Recomputes the hourly buckets `hours` (starts of hours of `day`) from the raw log, then the day's bucket
    from all its hourly buckets, in one transaction."""
    start = day_start(day)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_NAMESPACE, day.toordinal()])
        for hour in sorted(set(hours)):
            _bucket_replace(period=UsageRollup.Period.HOUR, start=hour, totals=_hour_totals(hour))
        _bucket_replace(period=UsageRollup.Period.DAY, start=start, totals=_day_totals(start))
        _day_summaries_replace(start=start)


# The day summaries (UsageDaySummary): the day's buckets per tier and answering model, and per user.
SUMMARY_GROUPS = {False: ("tier", "answered_model"), True: ("user_id",)}


def _day_summaries_replace(*, start: datetime) -> None:
    """Recomputes the day's summaries from its daily buckets, in the caller's transaction."""
    UsageDaySummary.objects.filter(bucket_start=start).delete()
    day = UsageRollup.objects.filter(period=UsageRollup.Period.DAY, bucket_start=start).order_by()
    UsageDaySummary.objects.bulk_create([
        UsageDaySummary(bucket_start=start, per_user=per_user, **row)
        for per_user, group in SUMMARY_GROUPS.items()
        for row in day.values(*group).annotate(**{name: Sum(name) for name in MEASURES})
    ])


# --- The beat task's work -----------------------------------------------------------------------------------

@dataclass(slots=True)
class RollupsReport:
    hours: int = 0  # hourly buckets recomputed
    days: int = 0  # daily buckets recomputed
    final_hours_skipped: int = 0  # hours touched past the horizon (left as they were)
    rolled_up_id: int = 0


def _state() -> UsageRollupState:
    return UsageRollupState.objects.get_or_create(pk=1)[0]


def _state_advance(*, chunk_low: int | None, chunk_high: int | None, scanned_at: datetime | None,
                   upto: int, upto_at: datetime) -> int:
    """Moves `rolled_up_id` over the chunk (chunk_low, chunk_high] scanned at `scanned_at` as far as the settled
    mark allows, and takes a new mark (upto, upto_at) once the old one is used up; returns `rolled_up_id`."""
    settle = timedelta(seconds=_config("USAGE_ROLLUP_SETTLE_SECONDS", 30.0))
    with transaction.atomic():
        _state()
        state = UsageRollupState.objects.select_for_update().get(pk=1)
        contiguous = chunk_low is not None and state.rolled_up_id >= chunk_low
        if contiguous and state.mark_at is not None and state.mark_at <= scanned_at - settle:
            state.rolled_up_id = max(state.rolled_up_id, min(chunk_high, state.mark_id))
        if state.mark_id <= state.rolled_up_id and upto > state.rolled_up_id:
            state.mark_id, state.mark_at = upto, upto_at
        state.save()
        return state.rolled_up_id


def usage_rollups_update(*, now: datetime | None = None) -> RollupsReport:
    """Recomputes every hourly and daily bucket holding a log row not yet rolled up for good (see the module)."""
    clock = timezone.now if now is None else lambda: now
    upto = UsageLog.objects.aggregate(top=Max("pk"))["top"] or 0
    upto_at = clock()  # every id up to `upto` was handed out before this moment
    low = _state_advance(chunk_low=None, chunk_high=None, scanned_at=None, upto=upto, upto_at=upto_at)
    report = RollupsReport(rolled_up_id=low)
    horizon = rollup_horizon(upto_at)
    while low < upto:
        high = min(low + SCAN_CHUNK_IDS, upto)
        scanned_at = clock()
        hours = (UsageLog.objects.filter(pk__gt=low, pk__lte=high).order_by()
                 .annotate(hour=Trunc("created_at", "hour", tzinfo=_tz())).values_list("hour", flat=True).distinct())
        hours = sorted(timezone.localtime(hour, _tz()) for hour in hours)
        for day, day_hours in groupby(hours, key=lambda hour: hour.date()):
            day_hours = list(day_hours)
            if day_start(day) < horizon:
                report.final_hours_skipped += len(day_hours)
                continue
            usage_day_recompute(day=day, hours=day_hours)
            report.hours += len(day_hours)
            report.days += 1
        report.rolled_up_id = _state_advance(chunk_low=low, chunk_high=high, scanned_at=scanned_at, upto=upto,
                                             upto_at=upto_at)
        low = high
    if report.final_hours_skipped:
        logger.warning("usage roll-ups: rows arrived for %d hours older than the retention horizon (%s); they are "
                       "not rolled up", report.final_hours_skipped, horizon.isoformat())
    return report


def usage_log_prune(*, now: datetime | None = None, budget_seconds: float | None = None) -> int:
    """Deletes raw log rows older than the retention, rolled up for good, a batch (its own transaction) at a
    time, until none are left or `budget_seconds` have passed; returns how many it deleted."""
    cutoff = retention_cutoff(now or timezone.now())
    batch_size = max(1, int(_config("USAGE_RETENTION_BATCH_SIZE", 5000)))
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    rolled_up_id = _state().rolled_up_id
    deleted = 0
    while deadline is None or time.monotonic() < deadline:
        ids = list(UsageLog.objects.filter(pk__lte=rolled_up_id, created_at__lt=cutoff)
                   .order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            break
        with transaction.atomic():
            deleted += UsageLog.objects.filter(pk__in=ids).delete()[0]
    return deleted


# --- Rebuilding every bucket at once (PostgreSQL) -------------------------------------------------------------

# A histogram built in SQL: one plpgsql transition per row adds 1 to the row's bucket of an integer array of BUCKETS
# counts (in place: PostgreSQL hands the aggregate's state to plpgsql as an expanded array). pg_temp: the functions
# live only as long as the session.
_HISTOGRAM_AGGREGATE_SQL = f"""
CREATE OR REPLACE FUNCTION pg_temp.llmhub_histogram_add(state integer[], bucket integer) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF bucket IS NOT NULL THEN state[bucket + 1] := state[bucket + 1] + 1; END IF;
  RETURN state;
END $$;
DROP AGGREGATE IF EXISTS pg_temp.llmhub_histogram(integer);
CREATE AGGREGATE pg_temp.llmhub_histogram(integer) (
  SFUNC = pg_temp.llmhub_histogram_add, STYPE = integer[], INITCOND = '{{{",".join(["0"] * BUCKETS)}}}');
"""


def usage_rollups_rebuild(*, now: datetime | None = None) -> int:
    """Replaces every roll-up not yet final (from the retention horizon on: older days may have lost raw rows to
    retention) by buckets recomputed from the raw log, in two set-based statements (hours, then days straight from
    the rows), and marks the log rolled up to its last row; returns the buckets written. The same buckets as
    `usage_rollups_update` (a test holds them equal), minutes faster on millions of rows.

    PostgreSQL only, and for a log nobody writes to meanwhile (a benchmark's fill, a restore): rows inserted during
    the rebuild are marked rolled up without being counted."""
    if connection.vendor != "postgresql":
        raise NotImplementedError("usage_rollups_rebuild needs PostgreSQL; use usage_rollups_update")
    now = now or timezone.now()
    since = rollup_horizon(now)
    table, log = (connection.ops.quote_name(model._meta.db_table) for model in (UsageRollup, UsageLog))
    dimensions = ", ".join(connection.ops.quote_name(UsageLog._meta.get_field(name.removesuffix("_id")).column)
                           for name in DIMENSIONS)
    bounds = list(BOUNDS)
    written = 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        # Sorting and hashing millions of rows: in memory rather than in temporary files.
        cursor.execute("SET LOCAL work_mem = '256MB'")
        cursor.execute(_HISTOGRAM_AGGREGATE_SQL)
        top = UsageLog.objects.aggregate(top=Max("pk"))["top"] or 0
        cursor.execute(f"DELETE FROM {table} WHERE bucket_start >= %s", [since])  # noqa: S608 (our own table)
        for period in (UsageRollup.Period.HOUR, UsageRollup.Period.DAY):
            # Built from the models' own table and column names, never from input; values are parameters.
            cursor.execute(f"""
                INSERT INTO {table} (period, bucket_start, {dimensions}, requests, errors, input_tokens, output_tokens,
                                     cost, latency_histogram, ttft_histogram, computed_at)
                SELECT %(period)s, date_trunc(%(period)s, created_at, %(zone)s), {dimensions}, count(*),
                       count(*) FILTER (WHERE status = %(error)s), sum(input_tokens), sum(output_tokens), sum(cost),
                       to_jsonb(pg_temp.llmhub_histogram(width_bucket(latency_ms, %(bounds)s::float8[]))),
                       to_jsonb(pg_temp.llmhub_histogram(width_bucket(ttft_ms, %(bounds)s::float8[]))), %(now)s
                FROM {log} WHERE id <= %(top)s AND created_at >= %(since)s
                GROUP BY 2, {dimensions}""",  # noqa: S608
                {"period": str(period), "zone": str(_tz()), "error": UsageLog.Status.ERROR, "bounds": bounds,
                 "now": now, "top": top, "since": since})
            written += cursor.rowcount
        summary = connection.ops.quote_name(UsageDaySummary._meta.db_table)
        cursor.execute(f"DELETE FROM {summary} WHERE bucket_start >= %s", [since])  # noqa: S608 (our own table)
        for per_user, group in SUMMARY_GROUPS.items():
            # The columns a summary leaves out hold what the ORM writes there: '' (and NULL for the user).
            values = ", ".join(name if name in group else ("NULL" if name == "user_id" else "''")
                               for name in ("user_id", "tier", "answered_model"))
            cursor.execute(f"""
                INSERT INTO {summary} (bucket_start, per_user, user_id, tier, answered_model, requests, errors,
                                       input_tokens, output_tokens, cost)
                SELECT bucket_start, %s, {values}, sum(requests), sum(errors), sum(input_tokens), sum(output_tokens),
                       sum(cost)
                FROM {table} WHERE period = %s AND bucket_start >= %s
                GROUP BY bucket_start, {", ".join(group)}""",  # noqa: S608
                [per_user, UsageRollup.Period.DAY, since])
        UsageRollupState.objects.update_or_create(pk=1, defaults={"rolled_up_id": top, "mark_id": top,
                                                                  "mark_at": now})
    return written


def usage_hour_totals(start: datetime) -> dict[tuple, BucketTotals]:
    """The raw rows of the hour starting at `start`, summed per bucket key (`DIMENSIONS`) with their histograms,
    exactly as a roll-up run would write that hour: how readers add the current hour to the roll-ups."""
    return _hour_totals(start)
