"""Running a connectivity test (health/model_tests.py starts and records them): the checks against the upstream,
and their usage.

A test's upstream requests are metered like any request: one usage row per run of a test (endpoint
`model_test`), with its tokens and their cost at the model's prices. A registry model's test is the system's own
usage (no user); a user's own model's test counts for that user, at no cost (their key pays). No quota applies.
"""

import logging
import time
import uuid

from billiard.exceptions import SoftTimeLimitExceeded  # celery.exceptions' own: that module imports kombu (0.17 s)
from django.conf import settings

from generation.client import UpstreamMisconfigured
from generation.connectivity import CheckResult, CheckUsage, model_check
from generation.services import breaker_opened_tell
from health.model_tests import TIMED_OUT, model_test_claim, model_test_finish, model_test_target
from health.models import ModelTest
from llmhub.errors import ConfigurationError
from registry.models import UserProfile
from registry.selectors import ModelSpec
from usage.services import UsageEntry, usage_cost, usage_record_now

logger = logging.getLogger(__name__)

MODEL_TEST_ENDPOINT = "model_test"  # the usage log's endpoint of tests' requests


def _config(name: str) -> float:
    return settings.LLMHUB[name]


def model_test_execute(*, test_id: int) -> None:
    """Runs a queued test and records its result; a test already claimed or finished is left alone. Ends
    in a recorded state whatever happens: a crash or the soft time limit gives a failed test. What its
    requests used is recorded too, however it ended."""
    if not model_test_claim(test_id=test_id):
        return
    started = time.perf_counter()
    target, usage = None, CheckUsage()
    result, error = None, ""
    try:
        test = ModelTest.objects.select_related("llm_model", "user_model").get(pk=test_id)
        target = model_test_target(test)
        result = model_check(target, check_timeout=_config("MODEL_TEST_CHECK_TIMEOUT_SECONDS"),
                             budget=_config("MODEL_TEST_BUDGET_SECONDS"),
                             max_response_bytes=_config("MODEL_TEST_MAX_RESPONSE_BYTES"), usage=usage)
    except SoftTimeLimitExceeded:
        error = TIMED_OUT
    except ConfigurationError:
        error = "key unreadable"  # encrypted with a key this server no longer has
    except UpstreamMisconfigured:
        error = "key or headers invalid"  # characters HTTP cannot carry, stored before they were refused
    except ModelTest.DoesNotExist:
        return  # its model was deleted meanwhile
    except Exception:
        logger.exception("model test %s crashed", test_id)
        error = "test crashed"
    finally:
        if target is not None and usage.calls:
            model_test_usage_record(model=target, usage=usage, result=result, error=error,
                                    latency_ms=(time.perf_counter() - started) * 1000)
    breaker_opened_tell(model_test_finish(test_id=test_id, result=result, error=error))


def model_test_usage_record(*, model: ModelSpec, usage: CheckUsage, result: CheckResult | None, error: str,
                            latency_ms: float) -> None:
    """Writes the usage row of one run of a test (a rerun after a worker died called the upstream again: a row
    of its own). Outside quotas: a test is never refused for a limit, nor counted toward one."""
    answered = result is not None and result.answered
    tier = ""
    if model.owner_id is not None:
        tier = UserProfile.objects.filter(user_id=model.owner_id).values_list("tier__slug", flat=True).first() or ""
    usage_record_now(UsageEntry(
        request_id=f"test_{uuid.uuid4().hex}", endpoint=MODEL_TEST_ENDPOINT, user_id=model.owner_id, tier=tier,
        requested_model=model.id, answered_model=model.id if usage.input_tokens or usage.output_tokens else "",
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, tokens_estimated=usage.estimated,
        cost=usage_cost(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                        input_price_per_million=model.input_price_per_million,
                        output_price_per_million=model.output_price_per_million),
        latency_ms=latency_ms, status="ok" if answered else "error", http_status=200 if answered else 502,
        error_type="" if answered else (result.error if result is not None else error) or "model_test_failed",
        attempts=usage.calls,
    ))
