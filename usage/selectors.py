"""Reads of the usage log."""

from datetime import datetime
from decimal import Decimal

from django.db.models import Count, Sum
from django.db.models.functions import Coalesce

from usage.models import UsageLog


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
