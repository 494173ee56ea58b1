"""Celery tasks of experiments: thin and idempotent (an evaluation's changes are conditional)."""

from celery import shared_task

import llmhub.celery  # noqa: F401  (the configured app, current before a task is queued: llmhub loads it lazily)
from experiments import services


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=50, time_limit=55)
def experiments_evaluate() -> int:
    """Beat, every minute: guardrails and the sequential test of every running experiment."""
    return services.experiments_evaluate_running()
