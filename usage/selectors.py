"""Reads of the usage log and its roll-ups."""

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models import Count, Q, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from registry.models import ApiKey
from usage.models import UsageDaySummary, UsageLog, UsageRollup
from usage.quotas import QuotaUnavailable, quota_remaining
from usage.rollups import MEASURES, SUMMARY_GROUPS, Totals, day_start, hour_floor, local_date

logger = logging.getLogger(__name__)


def usage_totals(*, user_id: int, since: datetime | None = None) -> dict:
    """A user's requests, tokens and cost, over the whole log or from `since` on."""
    rows = UsageLog.objects.filter(user_id=user_id)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    return rows.aggregate(
        requests=Count("id"),
        input_tokens=Coalesce(Sum("input_tokens"), 0),
        output_tokens=Coalesce(Sum("output_tokens"), 0),
        cost=Coalesce(Sum("cost"), Decimal(0)),
    )


def usage_summary(*, user_id: int, now: datetime | None = None) -> dict:
    """A user's totals (requests, errors, tokens, cost) for today, this month and each of the last 30 days
    (calendar days in TIME_ZONE), from the roll-ups plus the raw rows of the current hour only.

    The hour before the current one is as fresh as its last roll-up run (at most one run interval behind).
    """
    now = now or timezone.now()
    today = local_date(now)
    today_start, hour_start = day_start(today), hour_floor(now)
    days = [today - timedelta(days=back) for back in range(29, -1, -1)]
    month_first = today.replace(day=1)
    daily = {day: Totals() for day in {*days, *(month_first + timedelta(days=n) for n in range(today.day))}}

    rollups = UsageRollup.objects.filter(user_id=user_id).filter(
        Q(period=UsageRollup.Period.DAY, bucket_start__gte=day_start(min(daily)), bucket_start__lt=today_start)
        | Q(period=UsageRollup.Period.HOUR, bucket_start__gte=today_start, bucket_start__lt=hour_start))
    # Today's day bucket is left out: it already holds part of the current hour, which comes from the raw log.
    for bucket_start, *values in rollups.values_list("bucket_start", *MEASURES):
        daily[local_date(bucket_start)].add(Totals(*values))
    current = UsageLog.objects.filter(user_id=user_id, created_at__gte=hour_start).aggregate(
        requests=Count("id"), errors=Count("id", filter=Q(status=UsageLog.Status.ERROR)),
        input_tokens=Coalesce(Sum("input_tokens"), 0), output_tokens=Coalesce(Sum("output_tokens"), 0),
        cost=Coalesce(Sum("cost"), Decimal(0)))
    daily[today].add(Totals(**current))

    month = Totals()
    for day, totals in daily.items():
        if day >= month_first:
            month.add(totals)
    return {
        "time_zone": str(timezone.get_default_timezone()),
        "today": {"start": today_start, **_measures(daily[today])},
        "month": {"start": day_start(month_first), **_measures(month)},
        "last_30_days": [{"date": day, **_measures(daily[day])} for day in days],
    }


def _measures(totals: Totals) -> dict:
    return {"requests": totals.requests, "errors": totals.errors, "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens, "cost": totals.cost}


# --- The usage pages ----------------------------------------------------------------------------------------
#
# Every total below comes from the roll-ups plus the raw rows of the current hour only, never from a scan of
# the raw log over days. Closed days and today come from the daily buckets; today's daily bucket already holds the
# current hour as far as the last roll-up run got, so the current hour's hourly bucket is subtracted and the current
# hour read raw instead (exact: a run writes a day and its hours in one transaction). Both buckets are read by ONE
# statement, so a run committing in between cannot make them disagree.

PAGE_DAYS = 30
RANGE_DAYS = (7, 30, 90)
RECENT_REQUESTS = 50
TOP_USERS = 10


@dataclass(slots=True)
class Sums(Totals):
    """Totals with their derived figures, as the pages show them."""

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class _Accumulator:
    """Sums per key as plain lists: pages add up thousands of rows, so no object per row."""

    def __init__(self) -> None:
        self.sums: dict[tuple, list] = {}
        self._dates: dict[datetime, date] = {}

    def day(self, moment: datetime) -> date:
        day = self._dates.get(moment)
        if day is None:
            day = self._dates[moment] = local_date(moment)
        return day

    def add(self, key: tuple, requests, errors, input_tokens, output_tokens, cost, sign: int = 1) -> None:
        sums = self.sums.get(key)
        if sums is None:
            self.sums[key] = [sign * requests, sign * errors, sign * input_tokens, sign * output_tokens, sign * cost]
            return
        sums[0] += sign * requests
        sums[1] += sign * errors
        sums[2] += sign * input_tokens
        sums[3] += sign * output_tokens
        sums[4] += sign * cost

    def result(self) -> dict[tuple, Sums]:
        return {key: Sums(*sums) for key, sums in self.sums.items() if sums[0]}


def _current_hour(filters: Q, columns: tuple[str, ...], hour_start: datetime):
    """The raw rows of the current hour summed per `columns`: (*columns, *MEASURES) tuples."""
    return (UsageLog.objects.filter(filters, created_at__gte=hour_start).order_by().values(*columns)
            .annotate(requests=Count("id"), errors=Count("id", filter=Q(status=UsageLog.Status.ERROR)),
                      input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"), cost=Sum("cost"))
            .values_list(*columns, *MEASURES))


def _grouped(*, filters: Q, group: tuple[str, ...], first_day: date, now: datetime) -> dict[tuple, Sums]:
    """One user's sums ("date" first in `group`, then log/roll-up columns) from `first_day` through now, from the
    daily roll-ups (see the top of this section for today)."""
    assert group[0] == "date"
    today = local_date(now)
    today_start, hour_start = day_start(today), hour_floor(now)
    columns = group[1:]
    sums = _Accumulator()
    measures = {name: Sum(name) for name in MEASURES}
    days = (UsageRollup.objects.filter(filters, period=UsageRollup.Period.DAY, bucket_start__gte=day_start(first_day),
                                       bucket_start__lte=today_start)
            .order_by().values("period", "bucket_start", *columns).annotate(**measures))
    current_bucket = (UsageRollup.objects.filter(filters, period=UsageRollup.Period.HOUR, bucket_start=hour_start)
                      .order_by().values("period", "bucket_start", *columns).annotate(**measures))
    # One statement (one snapshot), each part a range of the covering index.
    rollups = days.union(current_bucket, all=True).values_list("period", "bucket_start", *columns, *MEASURES)
    width = len(columns)
    for period, bucket_start, *row in rollups:
        # The current hour's bucket is already inside today's daily bucket: taken out again.
        sums.add((sums.day(bucket_start), *row[:width]), *row[width:],
                 sign=-1 if period == UsageRollup.Period.HOUR else 1)
    for row in _current_hour(filters, columns, hour_start):
        sums.add((today, *row[:width]), *row[width:])
    return sums.result()


def _days(first_day: date, today: date) -> list[date]:
    return [first_day + timedelta(days=n) for n in range((today - first_day).days + 1)]


def _daily(days: list[date], by_day: dict[date, Sums]) -> list[tuple[date, Sums]]:
    return [(day, by_day.get(day) or Sums()) for day in days]


def _series(daily: list[tuple[date, Sums]]) -> dict[str, list]:
    """Per-day columns for the charts: x as epoch seconds of each local midnight."""
    return {
        "x": [int(day_start(day).timestamp()) for day, _ in daily],
        "requests": [totals.requests for _, totals in daily],
        "errors": [totals.errors for _, totals in daily],
        "input_tokens": [totals.input_tokens for _, totals in daily],
        "output_tokens": [totals.output_tokens for _, totals in daily],
        "cost": [float(totals.cost) for _, totals in daily],
    }


def _fold(grouped: dict[tuple, Sums], index: int) -> dict:
    """Sums by the `index`-th part of the keys of `grouped`."""
    folded: dict = defaultdict(Sums)
    for key, totals in grouped.items():
        folded[key[index]].add(totals)
    return folded


def _ranked(folded: dict) -> list[tuple]:
    """(name, Sums) by cost, then requests, the largest first."""
    return sorted(folded.items(), key=lambda item: (item[1].cost, item[1].requests), reverse=True)


@dataclass(frozen=True, slots=True)
class UsagePage:
    days: list[date]
    total: Sums
    daily: list[tuple[date, Sums]]
    series: dict[str, list]
    by_model: list[tuple[str, Sums]]
    by_key: list[tuple[str, Sums]]


def usage_page_user(*, user_id: int, now: datetime | None = None) -> UsagePage:
    """One user's last 30 days (today included): totals, per-day series, by answering model and by API key."""
    now = now or timezone.now()
    today = local_date(now)
    days = _days(today - timedelta(days=PAGE_DAYS - 1), today)
    grouped = _grouped(filters=Q(user_id=user_id), group=("date", "answered_model", "api_key_id"), first_day=days[0],
                       now=now)
    by_key = _fold(grouped, 2)
    keys = {key.pk: key for key in ApiKey.objects.filter(pk__in=[pk for pk in by_key if pk is not None])}
    total = Sums()
    for totals in grouped.values():
        total.add(totals)
    daily = _daily(days, _fold(grouped, 0))
    return UsagePage(
        days=days, total=total, daily=daily, series=_series(daily),
        by_model=[(model or "(none answered)", totals) for model, totals in _ranked(_fold(grouped, 1))],
        by_key=[(_key_label(keys.get(pk), pk), totals) for pk, totals in _ranked(by_key)],
    )


def _key_label(key: ApiKey | None, pk: int | None) -> str:
    if pk is None:
        return "(no key: the pages)"
    if key is None:
        return f"(deleted key #{pk})"
    label = f"{key.name or 'unnamed'} ({key.prefix}…)"
    return f"{label}, revoked" if key.revoked_at else label


def usage_requests_recent(*, user_id: int, limit: int = RECENT_REQUESTS) -> list[UsageLog]:
    """The user's newest requests (read through the (user, created_at) index)."""
    return list(UsageLog.objects.filter(user_id=user_id).order_by("-created_at", "-id")[:limit])


def usage_request_get(*, user_id: int, request_id: str) -> UsageLog | None:
    """One of the user's own requests; None for anyone else's (the page answers 404)."""
    return UsageLog.objects.filter(user_id=user_id, request_id=request_id).first()


@dataclass(frozen=True, slots=True)
class UsageOverview:
    days: list[date]
    total: Sums
    daily: list[tuple[date, Sums]]
    series: dict[str, list]
    by_tier: list[tuple[str, Sums]]
    by_model: list[tuple[str, Sums]]
    top_users: list[tuple[str, Sums]]
    users: int


CLOSED_DAYS_CACHE_SECONDS = 3600
T = TypeVar("T")


def closed_days_cached(*, name: str, parts: tuple, today_start: datetime, build: Callable[[], T]) -> T:
    """What `build()` reads of the whole days before `today_start` (their day summaries or daily roll-ups), cached
    for CLOSED_DAYS_CACHE_SECONDS. Those days change only when a late row makes the roll-up task recompute one,
    which writes its summaries again under new ids, so the key holds the highest summary id before today (found
    from the newest rows down the primary key: today's come first) beside `parts`. The cache away: built each time."""
    version = (UsageDaySummary.objects.filter(bucket_start__lt=today_start).order_by("-id")
               .values_list("id", flat=True).first())
    key = f"llmhub:{name}:closed:{':'.join(map(str, parts))}:{version}"
    try:
        cached = cache.get(key)
    except Exception as error:  # the cache is away: the pages still work, a little slower
        logger.warning("%s: cache unavailable (%s)", name, type(error).__name__)
        cached = None
    if cached is not None:
        return cached
    value = build()
    with contextlib.suppress(Exception):
        cache.set(key, value, CLOSED_DAYS_CACHE_SECONDS)
    return value


def _summary_key(row: tuple, width: int, by_day: bool, sums: "_Accumulator") -> tuple:
    return (sums.day(row[0]), *row[1:width]) if by_day else row[:width]


def _closed_days(*, per_user: bool, by_day: bool, first_day: date, today_start: datetime) -> dict[tuple, list]:
    """The summaries of the whole days before today, summed per key (cached: `closed_days_cached`)."""
    group = SUMMARY_GROUPS[per_user]
    days = ("bucket_start",) if by_day else ()

    def build() -> dict[tuple, list]:
        sums = _Accumulator()
        width = len(days) + len(group)
        rows = (UsageDaySummary.objects.filter(per_user=per_user, bucket_start__gte=day_start(first_day),
                                               bucket_start__lt=today_start)
                .order_by().values(*days, *group).annotate(**{name: Sum(name) for name in MEASURES})
                .values_list(*days, *group, *MEASURES))
        for row in rows:
            sums.add(_summary_key(row, width, by_day, sums), *row[width:])
        return sums.sums

    return closed_days_cached(name="usage", parts=(int(per_user), int(by_day), first_day, today_start.date()),
                              today_start=today_start, build=build)


def _summary_grouped(*, per_user: bool, by_day: bool, first_day: date, now: datetime) -> dict[tuple, Sums]:
    """Everyone's sums per tier and answering model (or per user), per day when `by_day` ("date" first in the keys),
    from the day summaries: the closed days' (cached), today's (see the top of this section for the current hour)."""
    today = local_date(now)
    today_start, hour_start = day_start(today), hour_floor(now)
    group = SUMMARY_GROUPS[per_user]
    days = ("bucket_start",) if by_day else ()
    measures = {name: Sum(name) for name in MEASURES}
    sums = _Accumulator()
    closed = _closed_days(per_user=per_user, by_day=by_day, first_day=first_day, today_start=today_start)
    sums.sums = {key: list(values) for key, values in closed.items()}
    summaries = (UsageDaySummary.objects.filter(per_user=per_user, bucket_start__gte=today_start).order_by()
                 .values(*days, *group).annotate(sign=Value(1), **measures))
    current_bucket = (UsageRollup.objects.filter(period=UsageRollup.Period.HOUR, bucket_start=hour_start).order_by()
                      .values(*days, *group).annotate(sign=Value(-1), **measures))
    width = len(days) + len(group)
    # One statement: one snapshot of today's summaries and the current hour's buckets inside them.
    for row in summaries.union(current_bucket, all=True).values_list(*days, *group, "sign", *MEASURES):
        sums.add(_summary_key(row, width, by_day, sums), *row[width + 1:], sign=row[width])
    for row in _current_hour(Q(), group, hour_start):
        sums.add(((today,) if by_day else ()) + row[:len(group)], *row[len(group):])
    return sums.result()


def usage_overview(*, days: int = PAGE_DAYS, now: datetime | None = None, top: int = TOP_USERS) -> UsageOverview:
    """Every user's usage over the last `days` days (staff): per-day series, by tier, by answering model (with
    error rates), and the top users by cost. Read from the day summaries: a few thousand rows whatever the traffic."""
    now = now or timezone.now()
    today = local_date(now)
    span = _days(today - timedelta(days=days - 1), today)
    grouped = _summary_grouped(per_user=False, by_day=True, first_day=span[0], now=now)
    users = _fold(_summary_grouped(per_user=True, by_day=False, first_day=span[0], now=now), 0)
    ranked = _ranked(users)[:top]
    names = dict(get_user_model().objects.filter(pk__in=[pk for pk, _ in ranked if pk is not None])
                 .values_list("pk", get_user_model().USERNAME_FIELD))
    total = Sums()
    for totals in grouped.values():
        total.add(totals)
    daily = _daily(span, _fold(grouped, 0))
    return UsageOverview(
        days=span, total=total, daily=daily, series=_series(daily),
        by_tier=[(tier or "(none)", totals) for tier, totals in _ranked(_fold(grouped, 1))],
        by_model=[(model or "(none answered)", totals) for model, totals in _ranked(_fold(grouped, 2))],
        top_users=[(_user_label(names, pk), totals) for pk, totals in ranked],
        users=sum(1 for pk in users if pk is not None),
    )


def _user_label(names: dict, pk: int | None) -> str:
    if pk is None:
        return "(no user: model tests, deleted users)"
    return names.get(pk, f"(deleted user #{pk})")


CSV_COLUMNS = ("period", "bucket_start", "user_id", "username", "api_key_id", "tier", "endpoint", "requested_model",
               "answered_model", "status", "requests", "errors", "input_tokens", "output_tokens", "cost")


def usage_rollups_csv_rows(*, days: int, period: str = UsageRollup.Period.DAY, now: datetime | None = None,
                           chunk_size: int = 2000) -> Iterator[tuple]:
    """The roll-up rows of the last `days` days (today's as of the last roll-up run), oldest first, header
    first; read in chunks through a server-side cursor, so any range streams in constant memory."""
    now = now or timezone.now()
    since = day_start(local_date(now) - timedelta(days=days - 1))
    yield CSV_COLUMNS
    rows = (UsageRollup.objects.filter(period=period, bucket_start__gte=since)
            .order_by("bucket_start", "id")
            .values_list("period", "bucket_start", "user_id", f"user__{get_user_model().USERNAME_FIELD}",
                         "api_key_id", "tier", "endpoint", "requested_model", "answered_model", "status", *MEASURES))
    yield from rows.iterator(chunk_size=chunk_size)


@dataclass(frozen=True, slots=True)
class QuotaBar:
    """One limit of a user this period, as a progress bar."""

    metric: str
    period: str
    model: str | None
    scope: str
    limit: int | str  # cost as a decimal string
    used: int | str
    remaining: int | str
    resets_at: datetime
    percent: float  # used (reservations in flight included) over the limit, 0-100

    @property
    def label(self) -> str:
        what = {"requests": "Requests", "tokens": "Tokens", "cost": "Spending"}[self.metric]
        return f"{what} per {self.period}" + (f" ({self.model})" if self.model else "")


def usage_quota_bars(*, user_id: int, tier_slug: str) -> list[QuotaBar] | None:
    """Each limit of the user (their tier's and their own) with what is used and left this period, from the quota
    back end; None when the back end cannot answer (the page says so rather than failing)."""
    try:
        rows = async_to_sync(quota_remaining)(user_id=user_id, api_key_id=None, tier_slug=tier_slug)
    except QuotaUnavailable:
        return None
    bars = []
    for row in rows:
        limit, used = Decimal(row["limit"]), Decimal(row["used"])
        percent = 100.0 if limit <= 0 else min(100.0, float(used / limit * 100))
        bars.append(QuotaBar(**row, percent=round(percent, 1)))
    return bars
