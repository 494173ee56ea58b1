"""Celery tasks of generation: thin, idempotent, time-limited; the work is in generation.model_testing and
generation.judging."""

from celery import shared_task

import llmhub.celery  # noqa: F401  (the configured app, current before a task is queued: llmhub loads it lazily)
from generation import judging, model_testing
from generation.arms import JUDGE_TASK
from health.model_tests import MODEL_TEST_RUN_TASK, model_test_time_limits

_SOFT_LIMIT, _HARD_LIMIT = model_test_time_limits()


@shared_task(name=MODEL_TEST_RUN_TASK, acks_late=True, ignore_result=True, soft_time_limit=_SOFT_LIMIT,
             time_limit=_HARD_LIMIT)
def model_test_run(test_id: int) -> None:
    """Runs one connectivity test (a no-op for a test already claimed or finished)."""
    model_testing.model_test_execute(test_id=test_id)


@shared_task(name=JUDGE_TASK, acks_late=True, ignore_result=True, soft_time_limit=30, time_limit=40)
def experiment_judge_run(experiment_id: int, arm: str, request_id: str, question: str, answer: str) -> None:
    """Has an experiment's judge model score one sampled answer (a no-op for a request already scored)."""
    judging.judge_execute(experiment_id=experiment_id, arm=arm, request_id=request_id, question=question,
                          answer=answer)
