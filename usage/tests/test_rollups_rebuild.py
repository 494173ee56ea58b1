"""usage_rollups_rebuild (set-based SQL, PostgreSQL) writes exactly the buckets of usage_rollups_update."""

import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from usage.models import UsageDaySummary, UsageLog, UsageRollup, UsageRollupState
from usage.rollups import DIMENSIONS, MEASURES, usage_rollups_rebuild, usage_rollups_update

pytestmark = [pytest.mark.services, pytest.mark.django_db]


def buckets() -> set[tuple]:
    fields = ("period", "bucket_start", *DIMENSIONS, *MEASURES)
    return {(*row[:-2], tuple(row[-2]), tuple(row[-1])) for row in UsageRollup.objects.values_list(
        *fields, "latency_histogram", "ttft_histogram")}


def summaries() -> set[tuple]:
    return set(UsageDaySummary.objects.values_list("bucket_start", "per_user", "user_id", "tier", "answered_model",
                                                   *MEASURES))


def test_it_writes_the_buckets_the_beat_task_writes(make_user, settings):
    users = [make_user(f"rebuild-{n}", tier=None) for n in range(3)]
    rng = random.Random(5)
    now = timezone.now()
    UsageLog.objects.bulk_create(UsageLog(
        request_id=f"rebuild-{n}", user=rng.choice([*users, None]), endpoint=rng.choice(["v1.chat_completions", "api.generate"]),
        tier=rng.choice(["free", "pro"]), requested_model="demo", answered_model=rng.choice(["demo", "demo-backup", ""]),
        status=rng.choice(["ok", "ok", "error", "partial"]), http_status=200, input_tokens=rng.randint(0, 5000),
        output_tokens=rng.randint(0, 900), cost=Decimal(rng.randint(0, 10**7)) / 10**9,
        # Exact bounds and the extremes too: width_bucket and bisect must agree on every edge.
        latency_ms=rng.choice([rng.uniform(0, 5000), 1.0, 2 ** 0.25, 0.1, 10**7]),
        ttft_ms=rng.choice([None, rng.uniform(1, 900), 0.25]), created_at=now - timedelta(minutes=rng.randint(0, 9 * 24 * 60)))
        for n in range(1500))
    settings.LLMHUB = {**settings.LLMHUB, "USAGE_ROLLUP_SETTLE_SECONDS": 0}
    usage_rollups_update()
    expected, expected_summaries = buckets(), summaries()
    assert len(expected) > 100 and len(expected_summaries) > 20

    written = usage_rollups_rebuild()

    assert written == len(expected)
    assert buckets() == expected
    assert summaries() == expected_summaries
    assert UsageRollupState.objects.get().rolled_up_id == UsageLog.objects.order_by("-pk").first().pk
    assert usage_rollups_update().hours == 0  # nothing left to roll up
