"""Celery tasks of health: thin, idempotent, time-limited; the work is in health.model_tests. Their names predate
the health app (queued tasks and beat schedules know them by these)."""

from celery import shared_task

import llmhub.celery  # noqa: F401  (the configured app, current before a task is queued: llmhub loads it lazily)
from health import model_tests


@shared_task(name="registry.tasks.model_tests_schedule", ignore_result=True, soft_time_limit=50, time_limit=60)
def model_tests_schedule() -> int:
    """Beat, every minute: starts the tests that are due; returns how many."""
    return len(model_tests.model_tests_enqueue_due())


@shared_task(name="registry.tasks.model_tests_reap", ignore_result=True, soft_time_limit=50, time_limit=60)
def model_tests_reap() -> int:
    """Beat, every minute: fails tests stuck in running or queued; returns how many."""
    return model_tests.model_tests_reap()
