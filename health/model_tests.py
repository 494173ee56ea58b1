"""Connectivity tests of models: start one, claim and finish one, re-test what is due, reap the stuck.

A test is a `ModelTest` row: queued → running → succeeded (the model answered a plain chat) or failed (it
did not, or the test itself crashed or timed out; `error` says which, in generic words). Running a test is
idempotent: it is claimed with a conditional UPDATE, a finished test is never run again, and its result is
written only over its own claim. The run itself calls the upstream: it is generation's
(`generation/model_testing.py`, Celery task `MODEL_TEST_RUN_TASK`), which claims and finishes the test here.
"""

import contextlib
import logging
from datetime import timedelta
from decimal import Decimal
from typing import Any, Protocol

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from health.breakers import BreakerOpened, breaker_test_outcome
from health.models import ModelTest
from health.status import health_record_test, model_key_of
from llmhub.crypto import secret_decrypt
from llmhub.errors import NotFound, ServiceUnavailable
from registry.models import LLMModel, UserLLMConfig
from registry.selectors import ModelSpec

logger = logging.getLogger(__name__)

State = ModelTest.State
FINISHED = (State.SUCCEEDED, State.FAILED)
QUEUE_UNAVAILABLE = "queue unavailable"
TIMED_OUT = "timed out"
# Defined in generation/tasks.py (it calls the upstream), queued by name from here; the name predates the health app.
MODEL_TEST_RUN_TASK = "registry.tasks.model_test_run"


def _config(name: str) -> Any:
    return settings.LLMHUB[name]


def model_test_time_limits() -> tuple[float, float]:
    """(soft, hard) time limits of one test's task, in seconds."""
    return _config("MODEL_TEST_SOFT_TIME_LIMIT_SECONDS"), _config("MODEL_TEST_TIME_LIMIT_SECONDS")


# --- Starting -----------------------------------------------------------------------------------------------

class QueueUnavailable(ServiceUnavailable):
    code = "queue_unavailable"


def _enqueue(test_id: int) -> None:
    from llmhub.celery import task_get

    # No retry: with the broker down the caller must hear it now (CELERY_BROKER_TRANSPORT_OPTIONS keep a
    # refused connection to well under 2 s).
    task_get(MODEL_TEST_RUN_TASK).apply_async((test_id,), retry=False)


def _enqueue_or_fail(test_id: int) -> None:
    try:
        _enqueue(test_id)
    except Exception as error:  # kombu, redis or socket errors: whatever the broker's transport raises
        logger.warning("model test %s not queued: %s", test_id, type(error).__name__)
        ModelTest.objects.filter(pk=test_id, state=State.QUEUED).update(
            state=State.FAILED, error=QUEUE_UNAVAILABLE, finished_at=timezone.now())
        raise QueueUnavailable("The test queue is unavailable; try again in a moment.") from None


def model_test_start(*, llm_model: LLMModel | None = None, user_model: UserLLMConfig | None = None,
                     requested_by: AbstractBaseUser | None = None) -> ModelTest:
    """Creates a queued test of one model (a registry model or a user's) and enqueues it.

    Raises QueueUnavailable (503, "queue_unavailable") when the broker cannot take it; the test is then
    recorded as failed. Inside a transaction (with a real broker) the test is enqueued once it commits, so
    a worker never looks for a row it cannot see yet. Raises NotFound (404, "model_not_found") when the model
    was deleted, its tests with it, while the test ran in-process (tasks run eagerly).
    """
    if (llm_model is None) == (user_model is None):
        raise ValueError("model_test_start() takes exactly one of llm_model and user_model")
    test = ModelTest.objects.create(llm_model=llm_model, user_model=user_model, requested_by=requested_by)
    from llmhub.celery import app

    if transaction.get_connection().in_atomic_block and not app.conf.task_always_eager:
        transaction.on_commit(lambda: _enqueue_after_commit(test.pk))
    else:
        _enqueue_or_fail(test.pk)
    try:
        test.refresh_from_db()
    except ModelTest.DoesNotExist:
        raise NotFound("The model was deleted while it was being tested.", code="model_not_found") from None
    return test


def _enqueue_after_commit(test_id: int) -> None:
    # A refusal is recorded on the test; after a commit nobody is waiting for the answer.
    with contextlib.suppress(QueueUnavailable):
        _enqueue_or_fail(test_id)


# --- Running ------------------------------------------------------------------------------------------------

def model_test_target(test: ModelTest) -> ModelSpec:
    """The endpoint a test calls, read from the database rather than a snapshot: a worker's snapshot may not
    have a model created a moment ago. A user's model is priced at nothing: its owner's key pays its tests."""
    common = {"allowed_tiers": (), "required_tier": None, "capabilities": frozenset(), "fallbacks": ()}
    if test.user_model_id is not None:
        row = test.user_model
        timeout = _config("USER_MODEL_TIMEOUT_SECONDS")
        return ModelSpec(
            id=row.slug, pk=row.pk, display_name=row.display_name, upstream_model=row.upstream_model,
            provider="user", provider_name="Your models", base_url=row.base_url.rstrip("/"),
            api_key=secret_decrypt(row.api_key_encrypted), timeout=timeout, connect_timeout=min(5.0, timeout),
            headers={}, enabled=row.enabled, context_window=row.context_window, owner_id=row.owner_id,
            input_price_per_million=Decimal(0), output_price_per_million=Decimal(0), **common,
        )
    row = LLMModel.objects.select_related("provider").get(pk=test.llm_model_id)
    provider = row.provider
    return ModelSpec(
        id=row.public_id, pk=row.pk, display_name=row.display_name, upstream_model=row.upstream_model,
        provider=provider.slug, provider_name=provider.display_name,
        base_url=(row.base_url or provider.base_url).rstrip("/"),
        api_key=secret_decrypt(row.api_key_encrypted or provider.api_key_encrypted),
        timeout=provider.timeout_seconds, connect_timeout=provider.connect_timeout_seconds,
        headers=dict(provider.extra_headers or {}), enabled=row.enabled, context_window=row.context_window,
        kind=row.kind, api=row.api,
        input_price_per_million=row.input_price_per_million, output_price_per_million=row.output_price_per_million,
        **common,
    )


def model_test_claim(*, test_id: int) -> bool:
    """Whether this run may go on: queued → running; also a test left running by a worker that died (past the hard time limit)."""
    now = timezone.now()
    abandoned = now - timedelta(seconds=model_test_time_limits()[1])
    claimable = Q(state=State.QUEUED) | Q(state=State.RUNNING, started_at__lt=abandoned)
    return bool(ModelTest.objects.filter(claimable, pk=test_id).update(state=State.RUNNING, started_at=now))


class TestFindings(Protocol):
    """What a run of a test found (generation.connectivity.CheckResult)."""

    reachable: bool | None
    key_accepted: bool | None
    model_found: bool | None
    latency_ms: float | None
    capabilities: dict[str, bool | None]
    error: str

    @property
    def answered(self) -> bool: ...


def model_test_finish(*, test_id: int, result: TestFindings | None = None, error: str = "") -> BreakerOpened | None:
    """Records a run's result (or, with none, its `error`) over its own claim, and the model's health with it.
    Returns the breaker's opening when this test's rejected key opened it (the caller tells staff)."""
    if result is None:
        fields: dict[str, Any] = {"state": State.FAILED, "error": error}
    else:
        fields = {
            "state": State.SUCCEEDED if result.answered else State.FAILED, "reachable": result.reachable,
            "key_accepted": result.key_accepted, "model_found": result.model_found, "latency_ms": result.latency_ms,
            "capabilities": result.capabilities, "error": result.error,
        }
    # One transaction: whoever sees the result sees the model's health too.
    with transaction.atomic():
        # Only over our own claim: a test the reaper has failed meanwhile keeps that verdict.
        if not ModelTest.objects.filter(pk=test_id, state=State.RUNNING).update(**fields, finished_at=timezone.now()):
            return None
        test = ModelTest.objects.select_related("llm_model", "user_model").get(pk=test_id)
        try:
            with transaction.atomic():
                health_record_test(test)
        except DatabaseError as failure:
            logger.warning("model test %s: health not updated (%s)", test_id, type(failure).__name__)
    if result is not None and (result.answered or result.reachable is not None):
        return breaker_test_outcome(model_key_of(test.user_model or test.llm_model), answered=result.answered,
                                    key_rejected=result.key_accepted is False)
    return None


# --- Periodic work ------------------------------------------------------------------------------------------

def _due(queryset, cutoff):
    return queryset.filter(enabled=True).annotate(last_test=Max("tests__created_at")).filter(
        Q(last_test__isnull=True) | Q(last_test__lt=cutoff))


def model_tests_enqueue_due() -> list[ModelTest]:
    """Starts a test of every enabled model (registry and users') not tested for
    `LLMHUB["MODEL_TEST_INTERVAL_SECONDS"]`, then trims every model's history."""
    cutoff = timezone.now() - timedelta(seconds=_config("MODEL_TEST_INTERVAL_SECONDS"))
    targets = [{"llm_model": model} for model in _due(LLMModel.objects.only("pk"), cutoff)]
    targets += [{"user_model": model} for model in _due(UserLLMConfig.objects.only("pk"), cutoff)]
    started = []
    for target in targets:
        try:
            started.append(model_test_start(**target))
        except QueueUnavailable:
            logger.warning("model tests: the queue is unavailable, %d test(s) not started", len(targets) - len(started))
            break
    model_tests_trim()
    return started


def model_tests_trim(*, keep: int | None = None) -> int:
    """Deletes every model's finished tests beyond its newest `keep` (`LLMHUB["MODEL_TEST_HISTORY"]`)."""
    keep = _config("MODEL_TEST_HISTORY") if keep is None else keep
    deleted = 0
    for field in ("llm_model", "user_model"):
        crowded = (ModelTest.objects.filter(**{f"{field}__isnull": False}).values(field)
                   .annotate(count=Count("pk")).filter(count__gt=keep).values_list(field, flat=True))
        for target in list(crowded):
            old = list(ModelTest.objects.filter(**{field: target}).order_by("-created_at", "-pk")
                       .values_list("pk", flat=True)[keep:])
            deleted += ModelTest.objects.filter(pk__in=old, state__in=FINISHED).delete()[0]
    return deleted


def model_tests_reap() -> int:
    """Fails tests stuck past any chance of finishing: running longer than the hard time limit plus
    `LLMHUB["MODEL_TEST_REAP_MARGIN_SECONDS"]`, or queued longer than `LLMHUB["MODEL_TEST_QUEUED_TIMEOUT_SECONDS"]`
    (a busy worker may hold a test in the queue for a while)."""
    now = timezone.now()
    running_cutoff = now - timedelta(seconds=model_test_time_limits()[1] + _config("MODEL_TEST_REAP_MARGIN_SECONDS"))
    queued_cutoff = now - timedelta(seconds=_config("MODEL_TEST_QUEUED_TIMEOUT_SECONDS"))
    stuck = Q(state=State.RUNNING, started_at__lt=running_cutoff) | Q(state=State.QUEUED, created_at__lt=queued_cutoff)
    return ModelTest.objects.filter(stuck).update(state=State.FAILED, error=TIMED_OUT, finished_at=now)
