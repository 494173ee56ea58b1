"""Celery tasks of generation: thin, idempotent, time-limited; the work is in generation.model_testing."""

from celery import shared_task

import llmhub.celery  # noqa: F401  (the configured app, current before a task is queued: llmhub loads it lazily)
from generation import model_testing
from health.model_tests import MODEL_TEST_RUN_TASK, model_test_time_limits

_SOFT_LIMIT, _HARD_LIMIT = model_test_time_limits()


@shared_task(name=MODEL_TEST_RUN_TASK, acks_late=True, ignore_result=True, soft_time_limit=_SOFT_LIMIT,
             time_limit=_HARD_LIMIT)
def model_test_run(test_id: int) -> None:
    """Runs one connectivity test (a no-op for a test already claimed or finished)."""
    model_testing.model_test_execute(test_id=test_id)
