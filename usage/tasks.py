"""Celery tasks of the usage app: thin, idempotent, time-limited; the work is in usage.rollups, usage.billing and
usage.webhooks.

All are safe to run twice at once and after a worker died mid-run (acks_late: the message comes back): roll-ups
recompute or delete by id, never increment; billing events have dedupe keys; a webhook attempt claims its delivery
first, so a second task for it does nothing.
"""

from celery import shared_task

import llmhub.celery  # noqa: F401  (the configured app, current before a task is queued: llmhub loads it lazily)
from usage import billing, rollups, webhooks


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=540, time_limit=600)
def usage_rollups_update() -> int:
    """Beat, every LLMHUB_USAGE_ROLLUP_INTERVAL_SECONDS: recomputes the touched buckets; returns how many hours."""
    return rollups.usage_rollups_update().hours


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=540, time_limit=600)
def usage_log_prune() -> int:
    """Beat, every 10 minutes: deletes raw usage rows past the retention (for at most 5 minutes), and billing events
    past theirs; returns how many usage rows."""
    deleted = rollups.usage_log_prune(budget_seconds=300)
    billing.billing_events_prune()
    return deleted


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=50, time_limit=55)
def webhooks_sweep() -> int:
    """Beat, every LLMHUB_WEBHOOK_SWEEP_SECONDS: dispatches new billing events, queues due deliveries."""
    due = webhooks.webhooks_sweep()
    for delivery_id in due:
        webhook_deliver.delay(delivery_id)
    return len(due)


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=45, time_limit=50)
def webhook_deliver(delivery_id: int) -> str:
    """One attempt of a webhook delivery (a no-op when another attempt holds it or it is done); a failed one queues
    its retry with the backoff as countdown (eager runs leave retries to the sweep)."""
    eager = bool(webhook_deliver.request.is_eager)
    outcome = webhooks.webhook_delivery_attempt(delivery_id=delivery_id, queued_retry=not eager)
    if outcome.retry_in is not None and not eager:
        webhook_deliver.apply_async((delivery_id,), countdown=outcome.retry_in)
    return outcome.status


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=240, time_limit=280)
def billing_periods_close() -> int:
    """Beat, every 5 minutes: writes the usage.period_closed events of days and months that closed."""
    return billing.billing_periods_close()
