"""Celery tasks of the feedback app: thin and idempotent (the work is in feedback.services)."""

from celery import shared_task

import llmhub.celery  # noqa: F401  (the configured app, current before a task is queued: llmhub loads it lazily)
from feedback import services


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=50, time_limit=55)
def feedback_implicit_scan() -> int:
    """Beat, every LLMHUB_FEEDBACK_SCAN_SECONDS: the implicit signals (retries) of the new usage rows."""
    return services.feedback_implicit_scan(budget_seconds=25.0)
