"""Celery tasks of the registry: thin, idempotent, time-limited; the work is in registry.model_tests."""

from celery import shared_task

import llmhub.celery  # noqa: F401  (the configured app, current before a task is queued: llmhub loads it lazily)
from registry import model_tests

_SOFT_LIMIT, _HARD_LIMIT = model_tests.model_test_time_limits()


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=_SOFT_LIMIT, time_limit=_HARD_LIMIT)
def model_test_run(test_id: int) -> None:
    """Runs one connectivity test (a no-op for a test already claimed or finished)."""
    model_tests.model_test_execute(test_id=test_id)


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=60)
def model_tests_schedule() -> int:
    """Beat, every minute: starts the tests that are due; returns how many."""
    return len(model_tests.model_tests_enqueue_due())


@shared_task(ignore_result=True, soft_time_limit=50, time_limit=60)
def model_tests_reap() -> int:
    """Beat, every minute: fails tests stuck in running or queued; returns how many."""
    return model_tests.model_tests_reap()
