"""Celery tasks of the analytics app: thin and idempotent (the work is in analytics/services.py; Celery's Django
fixup gives each task a healthy database connection)."""

from celery import shared_task

import llmhub.celery  # noqa: F401  (the configured app, current before a task is queued: llmhub loads it lazily)
from analytics import services


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=540, time_limit=600)
def recommendations_update() -> int:
    """Beat, hourly: today's model recommendations (at most one per task and tier a day); returns how many new."""
    return services.recommendations_update()
