"""Celery tasks of the usage app: thin, idempotent, time-limited; the work is in usage.rollups.

Both are safe to run twice at once and after a worker died mid-run (acks_late: the message comes back and the
run recomputes): they recompute or delete by id, never increment.
"""

from celery import shared_task

from usage import rollups


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=540, time_limit=600)
def usage_rollups_update() -> int:
    """Beat, every LLMHUB_USAGE_ROLLUP_INTERVAL_SECONDS: recomputes the touched buckets; returns how many hours."""
    return rollups.usage_rollups_update().hours


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=540, time_limit=600)
def usage_log_prune() -> int:
    """Beat, every 10 minutes: deletes raw usage rows past the retention (for at most 5 minutes); returns how many."""
    return rollups.usage_log_prune(budget_seconds=300)
