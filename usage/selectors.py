"""Reads of the usage log and its roll-ups."""

from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from usage.models import UsageLog, UsageRollup
from usage.rollups import MEASURES, Totals, day_start, hour_floor, local_date


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
