"""Recommendations: made over real HTTP traffic (translations of a pro user against the simulated upstream, with the
same injected latency on both models), with their evidence, once per day, each with a `recommendation.created`
billing event; none when the cheaper model fails more, is much slower, or has too few requests."""

from datetime import timedelta

import httpx2
import pytest
from django.utils import timezone

from analytics.models import Recommendation
from analytics.services import recommendations_update
from analytics.tasks import recommendations_update as recommendations_task
from conftest import usage_wait_idle
from usage.models import BillingEvent
from usage.rollups import usage_rollups_update

MIN_REQUESTS = 5


@pytest.fixture(autouse=True)
def _rule(settings):
    settings.LLMHUB = {**settings.LLMHUB, "ANALYTICS_RECOMMENDATION_MIN_REQUESTS": MIN_REQUESTS,
                       "ANALYTICS_RECOMMENDATION_MIN_SAVING_PERCENT": 10,
                       "ANALYTICS_RECOMMENDATION_LATENCY_TOLERANCE_PERCENT": 50}


@pytest.fixture
def translate(live_hub, make_user, api_key_for, simulated_upstream):
    key = api_key_for(make_user("rec-pro", tier="pro"))

    def post(model: str, count: int, *, fault: str = "latency=60") -> None:
        simulated_upstream.set_fault(model, fault)
        for number in range(count):
            httpx2.post(f"{live_hub}/api/translate/", headers={"Authorization": f"Bearer {key}"}, timeout=20,
                        json={"text": f"Good morning, number {number}.", "target_language": "fr", "model": model})
        simulated_upstream.clear_faults()
        usage_wait_idle()

    return post


def test_it_recommends_a_cheaper_model_with_its_evidence_once_a_day(translate):
    translate("demo", 7)  # the pro tier's most used model for translation
    translate("demo-backup", 6)  # half demo's prices, same success and latency

    assert recommendations_task.delay().get() == 1  # the beat task, run as beat would
    [recommendation] = Recommendation.objects.all()
    assert (recommendation.task, recommendation.tier, recommendation.current_model,
            recommendation.recommended_model) == ("translation", "pro", "demo", "demo-backup")
    assert 45 <= recommendation.saving_percent <= 55
    evidence = recommendation.evidence
    assert (evidence["current"]["requests"], evidence["recommended"]["requests"]) == (7, 6)
    assert evidence["current"]["success_rate"] == evidence["recommended"]["success_rate"] == 1.0
    assert evidence["rule"] == {"min_requests": MIN_REQUESTS, "min_saving_percent": "10",
                                "latency_tolerance_percent": "50"}
    assert recommendation.message.startswith(
        f"translation for tier pro: model demo-backup is {recommendation.saving_percent}% cheaper per 1,000 requests "
        "than demo at the same or better success rate (100.0% vs 100.0%)")
    assert "over 13 requests in the last 7d" in recommendation.message

    [event] = BillingEvent.objects.all()
    assert event.type == "recommendation.created"
    assert event.payload["recommended_model"] == "demo-backup"
    assert event.payload["evidence"] == evidence and event.payload["message"] == recommendation.message

    # Idempotent per day: a rerun writes nothing; the next day's run writes that day's.
    assert recommendations_update() == 0
    assert (Recommendation.objects.count(), BillingEvent.objects.count()) == (1, 1)
    usage_rollups_update()  # tomorrow, today's rows are read from the roll-ups
    assert recommendations_update(now=timezone.now() + timedelta(days=1)) == 1
    assert (Recommendation.objects.count(), BillingEvent.objects.count()) == (2, 2)


def test_a_cheaper_model_that_fails_more_is_not_recommended(translate):
    translate("demo", 7)
    translate("demo-backup", 5)
    translate("demo-backup", 1, fault="status=500")  # no fallback for this request: 1 failure in 6
    assert recommendations_update() == 0
    assert not Recommendation.objects.exists() and not BillingEvent.objects.exists()


def test_a_much_slower_cheaper_model_is_not_recommended(translate):
    translate("demo", 7)
    translate("demo-backup", 6, fault="latency=400")  # p95 far beyond 50% above demo's
    assert recommendations_update() == 0


def test_too_few_requests_are_no_evidence(translate):
    translate("demo", 7)
    translate("demo-backup", MIN_REQUESTS - 1)
    assert recommendations_update() == 0
