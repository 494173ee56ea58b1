"""Billing events: written to an outbox (`BillingEvent`) in the same transaction as what caused them, then
dispatched: a `WebhookDelivery` per subscribed endpoint (sent by usage/webhooks.py) and the in-process signal
`usage.signals.billing_event`.

- `quota.threshold`: a limit's settled usage reached 80% or 100% (`LLMHUB["BILLING_THRESHOLD_PERCENTS"]`) of it.
  The quota back ends detect it when they settle a request, from the counter's new value, which the settle step
  returns anyway (a Redis script's HINCRBY, the database's `UPDATE … RETURNING used`): a comparison per counter,
  no extra round trip. Counters only grow by settling, so exactly one settle crosses each threshold; the dedupe
  key (counter, limit, percentage) makes a repeated one harmless. Where the event is written:
    - database back end: in the settle's own transaction, beside the counter it updated (off the response path:
      that back end settles on its own thread);
    - Redis back end: the counter lives in Redis, so the event joins the usage writer's queue and is written in
      the writer's next batch transaction, with the usage row of the request that crossed it (queued just after
      it), keeping the writer's guarantees (retried while the database is down, written at exit).
- `usage.period_closed`: a user's totals of a day (and of a month, on its last day) once it closed, read from the
  daily roll-ups. `billing_periods_close` (beat) closes each day once, in order, when the day ended at least
  `LLMHUB["BILLING_PERIOD_CLOSE_DELAY_SECONDS"]` ago and every log row of it is rolled up; the events and the
  state's advance share one transaction, so a rerun or two runs at once write each event once.
- `recommendation.created`: a cheaper model at the same success and latency for a task and tier, with its evidence
  (analytics/services.py), once per period.
- `model.breaker_opened`: a model's circuit breaker opened because its upstream rejected the credentials (HTTP
  401/403 on a live request, or a connectivity test's rejected key): an operator must fix its key or model. Once
  per opening across all processes (health/breakers.py: the Redis script hands the opening to one caller);
  generation queues it for the usage writer (`billing_event_record`). The model, the reason in generic words, the
  status and the time: never a key or an upstream body.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from registry.limits import COST_UNITS, decimal_text
from usage.entries import BillingEventEntry

if TYPE_CHECKING:
    from usage.entries import Charge
    from usage.models import BillingEvent

logger = logging.getLogger(__name__)

QUOTA_THRESHOLD = "quota.threshold"
PERIOD_CLOSED = "usage.period_closed"
# Written by analytics/services.py (a model recommendation, with its evidence), in the same transaction as its row.
RECOMMENDATION_CREATED = "recommendation.created"
BREAKER_OPENED = "model.breaker_opened"
EVENT_TYPES = (QUOTA_THRESHOLD, PERIOD_CLOSED, RECOMMENDATION_CREATED, BREAKER_OPENED)
DISPATCH_BATCH = 500

# usage.quotas._counter_key: llmhub:q:{u:<user>}[:k:<key>]:<metric>:<period>:<model or *>:<window tag>
_COUNTER_KEY = re.compile(r"llmhub:q:\{u:(\d+)\}(?::k:(\d+))?:(requests|tokens|cost):(minute|hour|day|month):(.*):(\d+)\Z")
_TAG_FORMATS = {"minute": "%Y%m%d%H%M", "hour": "%Y%m%d%H", "day": "%Y%m%d", "month": "%Y%m"}


def billing_events_insert(entries: list[BillingEventEntry]) -> None:
    """Writes `entries` in the caller's transaction; an event whose dedupe key is taken already is skipped."""
    from usage.models import BillingEvent

    BillingEvent.objects.bulk_create(
        [BillingEvent(type=entry.type, dedupe_key=entry.dedupe_key, payload=entry.payload, created_at=entry.created_at)
         for entry in entries], ignore_conflicts=True)


def billing_events_insert_sql(cursor, entries: list[BillingEventEntry]) -> None:
    """`billing_events_insert` on a driver cursor (`%s` placeholders) in its transaction: the database quota back
    end settles on the driver's own cursor, below Django's transaction layer, and its events join that commit."""
    from django.db import connection

    from usage.models import BillingEvent

    fields = [BillingEvent._meta.get_field(name) for name in ("public_id", "type", "dedupe_key", "payload",
                                                              "created_at")]
    for entry in entries:
        values = (uuid.uuid4(), entry.type, entry.dedupe_key, entry.payload, entry.created_at)
        cursor.execute("INSERT INTO usage_billingevent (public_id, type, dedupe_key, payload, created_at) "
                       "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (dedupe_key) DO NOTHING",
                       [field.get_db_prep_value(value, connection, prepared=False)
                        for field, value in zip(fields, values, strict=True)])


def billing_event_body(event: BillingEvent) -> dict:
    """What a webhook receives (as JSON) and the signal carries."""
    return {"id": event.event_id, "type": event.type, "created": int(event.created_at.timestamp()),
            "data": event.payload}


# --- quota.threshold ------------------------------------------------------------------------------------------

def quota_thresholds_crossed(*, charges: tuple[Charge, ...], actual: tuple[int, ...],
                             used: tuple[int | None, ...]) -> list[BillingEventEntry]:
    """The threshold events of one settle: `used` is each counter's settled usage right after it took `actual`
    (None: unknown). Costs a comparison per counter when nothing is crossed."""
    events = []
    percents = settings.LLMHUB["BILLING_THRESHOLD_PERCENTS"]  # looked up once: a settings lookup is not free
    lowest = min(percents, default=0)
    for charge, amount, after in zip(charges, actual, used, strict=True):
        # after < ceil(limit * lowest / 100), in integers: below every threshold (most settles).
        if amount <= 0 or after is None or after * 100 < charge.limit * lowest:
            continue
        before = after - amount
        for percent in percents:
            threshold = -(-charge.limit * percent // 100)  # the smallest usage that is `percent` of the limit
            if threshold > 0 and before < threshold <= after:
                events.append(_threshold_event(charge, percent=percent, threshold=threshold, used=after))
    return events


def _amount(metric: str, units: int) -> int | str:
    return decimal_text(Decimal(units) / COST_UNITS) if metric == "cost" else units


def _threshold_event(charge: Charge, *, percent: int, threshold: int, used: int) -> BillingEventEntry:
    user_id, api_key_id, metric, period, model, tag = _COUNTER_KEY.match(charge.key).groups()
    zone = ZoneInfo(settings.TIME_ZONE)
    start = datetime.strptime(tag, _TAG_FORMATS[period]).replace(tzinfo=zone)
    end = datetime.fromtimestamp(charge.window_end, tz=zone)
    payload = {
        "user_id": int(user_id), "api_key_id": int(api_key_id) if api_key_id else None,
        "scope": "key" if api_key_id else "user",
        "limit": {"metric": metric, "period": period, "model": None if model == "*" else model,
                  "limit": _amount(metric, charge.limit)},
        "percent": percent, "threshold": _amount(metric, threshold), "used": _amount(metric, used),
        "period_start": start.isoformat(), "period_end": end.isoformat(),
    }
    return BillingEventEntry(type=QUOTA_THRESHOLD, dedupe_key=f"{QUOTA_THRESHOLD}:{charge.key}:{charge.limit}:{percent}",
                             payload=payload)


# --- model.breaker_opened -----------------------------------------------------------------------------------

def breaker_opened_event(*, model: str, reason: str, status: int | None, opened_at: float,
                         source: str) -> BillingEventEntry:
    """The event of a breaker opened by a rejection of the model's credentials (`model`: its key; `opened_at`: a
    Unix time). One per opening: its dedupe key is the model and the moment it opened."""
    opened = datetime.fromtimestamp(opened_at, tz=ZoneInfo(settings.TIME_ZONE))
    payload = {"model": model, "reason": reason, "status": status, "source": source, "opened_at": opened.isoformat()}
    return BillingEventEntry(type=BREAKER_OPENED, dedupe_key=f"{BREAKER_OPENED}:{model}:{opened_at!r}",
                             payload=payload)


# --- usage.period_closed --------------------------------------------------------------------------------------

def billing_periods_close(*, now: datetime | None = None) -> int:
    """Writes the `usage.period_closed` events of every day (and month) that closed since the last run, a day per
    transaction, in order; returns how many events it wrote. The first run starts with yesterday."""
    from usage.models import BillingState
    from usage.rollups import day_start, local_date

    now = now or timezone.now()
    delay = timedelta(seconds=settings.LLMHUB["BILLING_PERIOD_CLOSE_DELAY_SECONDS"])
    today = local_date(now)
    written = 0
    BillingState.objects.get_or_create(pk=1)
    while True:
        with transaction.atomic():
            state = BillingState.objects.select_for_update().get(pk=1)
            day = state.closed_through + timedelta(days=1) if state.closed_through else today - timedelta(days=1)
            end = day_start(day + timedelta(days=1))
            if day >= today or now < end + delay or not _rolled_up_before(end):
                return written
            entries = _closed_events(period="day", start=day_start(day), end=end, label=day.isoformat())
            if (day + timedelta(days=1)).day == 1:
                first = day.replace(day=1)
                entries += _closed_events(period="month", start=day_start(first), end=end, label=first.strftime("%Y-%m"))
            billing_events_insert(entries)
            state.closed_through = day
            state.save()
            written += len(entries)


def _rolled_up_before(end: datetime) -> bool:
    """Whether every usage row created before `end` is in the roll-ups for good."""
    from usage.models import UsageLog, UsageRollupState

    state = UsageRollupState.objects.filter(pk=1).first()
    rolled_up_id = state.rolled_up_id if state else 0
    return not UsageLog.objects.filter(pk__gt=rolled_up_id, created_at__lt=end).exists()


_MEASURES = ("requests", "errors", "input_tokens", "output_tokens", "cost")


def _closed_events(*, period: str, start: datetime, end: datetime, label: str) -> list[BillingEventEntry]:
    """Each user's totals over the daily roll-ups of [start, end), overall and per answering model."""
    from usage.models import UsageRollup

    rows = (UsageRollup.objects.filter(period=UsageRollup.Period.DAY, bucket_start__gte=start, bucket_start__lt=end,
                                       user__isnull=False)
            .values("user_id", "answered_model").annotate(**{name: Sum(name) for name in _MEASURES})
            .order_by("user_id", "answered_model"))
    per_user: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        per_user[row["user_id"]].append(row)
    events = []
    for user_id, models in per_user.items():
        totals = {name: sum(row[name] for row in models) for name in _MEASURES}
        payload = {"user_id": user_id, "period": period, "period_start": start.isoformat(),
                   "period_end": end.isoformat(), "totals": _measures(totals),
                   "by_model": [{"model": row["answered_model"], **_measures(row)} for row in models]}
        events.append(BillingEventEntry(type=PERIOD_CLOSED, dedupe_key=f"{PERIOD_CLOSED}:{user_id}:{period}:{label}",
                                        payload=payload))
    return events


def _measures(row: dict) -> dict:
    return {"requests": row["requests"], "errors": row["errors"], "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"], "cost": decimal_text(Decimal(row["cost"]))}


# --- Dispatch -------------------------------------------------------------------------------------------------

def billing_events_dispatch(*, limit: int = DISPATCH_BATCH) -> int:
    """Takes up to `limit` events not dispatched yet (skipping rows another run holds), creates a delivery per
    enabled endpoint subscribed to each event's type and marks them dispatched, in one transaction; once it
    commits, sends `usage.signals.billing_event` for each. Returns how many events it dispatched."""
    from usage.models import BillingEvent, WebhookDelivery, WebhookEndpoint

    now = timezone.now()
    with transaction.atomic():
        events = list(BillingEvent.objects.filter(dispatched_at__isnull=True).order_by("pk")
                      .select_for_update(skip_locked=True)[:limit])
        if not events:
            return 0
        endpoints = list(WebhookEndpoint.objects.filter(enabled=True))
        WebhookDelivery.objects.bulk_create(
            [WebhookDelivery(event=event, endpoint=endpoint, next_attempt_at=now)
             for event in events for endpoint in endpoints if event.type in endpoint.event_types],
            ignore_conflicts=True)
        BillingEvent.objects.filter(pk__in=[event.pk for event in events]).update(dispatched_at=now)
        transaction.on_commit(partial(_signals_send, [billing_event_body(event) for event in events]))
    return len(events)


def _signals_send(bodies: list[dict]) -> None:
    from usage.models import BillingEvent
    from usage.signals import billing_event

    for body in bodies:
        for receiver, outcome in billing_event.send_robust(sender=BillingEvent, event=body):
            if isinstance(outcome, Exception):
                logger.error("billing_event receiver %s failed on event %s: %s", getattr(receiver, "__qualname__",
                             receiver), body["id"], type(outcome).__name__)


def billing_events_prune(*, now: datetime | None = None, batch_size: int = 1000) -> int:
    """Deletes events older than LLMHUB["BILLING_EVENT_RETENTION_DAYS"] that are dispatched and have no delivery
    still pending (their deliveries go with them), a batch per transaction; returns how many. Their dedupe keys
    are no longer needed by then: their periods are long over."""
    from usage.models import BillingEvent, WebhookDelivery

    cutoff = (now or timezone.now()) - timedelta(days=settings.LLMHUB["BILLING_EVENT_RETENTION_DAYS"])
    deleted = 0
    while True:
        ids = list(BillingEvent.objects.filter(created_at__lt=cutoff, dispatched_at__isnull=False)
                   .exclude(deliveries__status=WebhookDelivery.Status.PENDING)
                   .order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return deleted
        with transaction.atomic():
            WebhookDelivery.objects.filter(event_id__in=ids).delete()
            deleted += BillingEvent.objects.filter(pk__in=ids).delete()[0]
