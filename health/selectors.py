"""Reads of what is known about models: their tests (their status: health.status)."""

from django.conf import settings
from django.db.models import QuerySet

from health.models import ModelTest
from llmhub.errors import NotFound


def model_tests_recent(*, llm_model_id: int | None = None, user_model_id: int | None = None,
                       limit: int | None = None) -> QuerySet[ModelTest]:
    """The newest tests of one model (a registry model or a user's)."""
    limit = settings.LLMHUB["MODEL_TEST_HISTORY"] if limit is None else limit
    return ModelTest.objects.filter(llm_model_id=llm_model_id, user_model_id=user_model_id).order_by(
        "-created_at", "-pk")[:limit]


def model_test_get(*, test_id: int, llm_model_id: int | None = None, user_model_id: int | None = None) -> ModelTest:
    """A test of that very model; a test of any other model (or user) is as absent as one that does not exist."""
    test = ModelTest.objects.filter(pk=test_id, llm_model_id=llm_model_id, user_model_id=user_model_id).first()
    if test is None:
        raise NotFound(f"The test '{test_id}' does not exist.", code="test_not_found")
    return test
