"""The usage pages' selectors: every figure equals the raw log's sum over the same rows, read from the roll-ups plus
the current hour (the rows of the current hour are counted once, whether a roll-up run saw them or not)."""

import random
import time
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from registry.services import api_key_create
from usage.models import UsageLog
from usage.rollups import hour_floor, local_date, usage_rollups_update
from usage.selectors import (
    usage_overview,
    usage_page_user,
    usage_request_get,
    usage_requests_recent,
    usage_rollups_csv_rows,
)

pytestmark = pytest.mark.django_db
MODELS = ("demo", "demo-backup", "demo-pro", "")


@pytest.fixture(autouse=True)
def _not_at_the_end_of_an_hour() -> None:
    left = 3600 - timezone.now().timestamp() % 3600
    if left < 30:
        time.sleep(left + 0.1)


def log_rows(user, moments, *, seed: int, keys=(None,), tier="free") -> list[UsageLog]:
    rng = random.Random(seed)
    rows = []
    for number, moment in enumerate(moments):
        status = rng.choice(["ok", "ok", "ok", "error", "partial"])
        rows.append(UsageLog(
            request_id=f"sel-{seed}-{number}", user=user, api_key_id=rng.choice(keys), tier=tier,
            endpoint=rng.choice(["v1.chat_completions", "api.generate"]), requested_model="demo",
            answered_model=rng.choice(MODELS), status=status, http_status=200 if status != "error" else 502,
            input_tokens=rng.randint(0, 3000), output_tokens=rng.randint(0, 900),
            cost=Decimal(rng.randint(0, 10**6)) / 10**7, latency_ms=rng.uniform(5, 4000), attempts=rng.randint(1, 3),
            created_at=moment))
    return UsageLog.objects.bulk_create(rows)


def raw_sums(rows, key) -> dict:
    sums = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    for row in rows:
        totals = sums[key(row)]
        totals[0] += 1
        totals[1] += row.status == "error"
        totals[2] += row.input_tokens + row.output_tokens
        totals[3] += row.cost
    return dict(sums)


def page_sums(pairs) -> dict:
    return {name: [totals.requests, totals.errors, totals.tokens, totals.cost] for name, totals in pairs
            if totals.requests}


@pytest.fixture
def history(registry, make_user):
    """Two users' rows over 40 days (some before the 30-day window), rolled up, then more rows in the current hour
    (some before the run, some after it)."""
    owner, other = make_user("sel-owner", tier="free"), make_user("sel-other", tier="pro")
    keys = [api_key_create(user=owner, name=name)[0].pk for name in ("laptop", "ci")]
    now = timezone.now()
    hour_start = hour_floor(now)
    rng = random.Random(7)
    past = [hour_start - timedelta(minutes=rng.randint(1, 40 * 24 * 60)) for _ in range(400)]
    in_hour = [hour_start + (now - hour_start) * rng.random() for _ in range(6)]
    rows = log_rows(owner, past + in_hour[:3], seed=1, keys=(None, *keys))
    rows += log_rows(other, past[:120] + in_hour[:2], seed=2, tier="pro")
    usage_rollups_update()
    rows += log_rows(owner, [timezone.now()] * 3, seed=3, keys=(None, *keys))  # after the run: read raw
    return owner, other, keys, rows


def test_it_gives_a_users_30_days_by_day_model_and_key_equal_to_the_raw_log(history, django_assert_max_num_queries):
    owner, _, keys, rows = history
    today = local_date(timezone.now())
    window = [row for row in rows if row.user_id == owner.pk and local_date(row.created_at) > today - timedelta(days=30)]

    with django_assert_max_num_queries(3):
        page = usage_page_user(user_id=owner.pk)

    assert [day for day, _ in page.daily] == [today - timedelta(days=back) for back in range(29, -1, -1)]
    by_day = raw_sums(window, lambda row: local_date(row.created_at))
    assert page_sums(page.daily) == by_day
    assert page.series["requests"] == [by_day.get(day, [0])[0] for day, _ in page.daily]
    assert page_sums(page.by_model) == raw_sums(window, lambda row: row.answered_model or "(none answered)")
    labels = {None: "(no key: the pages)", keys[0]: f"laptop ({owner.hub_api_keys.get(pk=keys[0]).prefix}…)",
              keys[1]: f"ci ({owner.hub_api_keys.get(pk=keys[1]).prefix}…)"}
    assert page_sums(page.by_key) == raw_sums(window, lambda row: labels[row.api_key_id])
    assert [page.total.requests, page.total.errors, page.total.tokens, page.total.cost] == \
        list(raw_sums(window, lambda row: "all")["all"])


def test_it_gives_staff_everyones_totals_by_tier_model_and_user_equal_to_the_raw_log(history):
    *_, rows = history
    today = local_date(timezone.now())

    for days in (7, 30):
        window = [row for row in rows if local_date(row.created_at) > today - timedelta(days=days)]
        overview = usage_overview(days=days)

        assert len(overview.daily) == days
        assert page_sums(overview.daily) == raw_sums(window, lambda row: local_date(row.created_at))
        assert page_sums(overview.by_tier) == raw_sums(window, lambda row: row.tier)
        assert page_sums(overview.by_model) == raw_sums(window, lambda row: row.answered_model or "(none answered)")
        assert page_sums(overview.top_users) == raw_sums(window, lambda row: row.user.username)
        assert [name for name, _ in overview.top_users] == [name for name, _ in sorted(
            raw_sums(window, lambda row: row.user.username).items(), key=lambda item: item[1][3], reverse=True)]
        assert overview.users == 2


def test_it_counts_the_current_hour_once_before_and_after_a_run(history):
    owner, *_ = history

    def counts() -> tuple[int, int, int]:
        overview = usage_overview(days=30)
        return (usage_page_user(user_id=owner.pk).total.requests, overview.total.requests,
                sum(totals.requests for _, totals in overview.top_users))

    before = counts()
    usage_rollups_update()  # the current hour's rows now sit in its hourly and daily buckets (and summaries) too
    after_run = counts()
    log_rows(owner, [timezone.now()], seed=9)
    after_new_row = counts()

    assert after_run == before
    assert after_new_row == tuple(count + 1 for count in before)


def test_it_sees_a_late_row_of_a_closed_day_once_it_is_rolled_up(history, django_assert_max_num_queries):
    owner, *_ = history
    usage_overview(days=30)  # the closed days' sums are cached now
    before = usage_overview(days=30)

    log_rows(owner, [timezone.now() - timedelta(days=3)], seed=11)  # a late row of a closed day
    unchanged = usage_overview(days=30)
    usage_rollups_update()
    after = usage_overview(days=30)

    assert unchanged.total.requests == before.total.requests  # closed days come from the roll-ups only
    assert after.total.requests == before.total.requests + 1
    assert sum(totals.requests for _, totals in after.top_users) == after.total.requests
    assert after.daily[-4][1].requests == before.daily[-4][1].requests + 1


def test_it_lists_a_users_recent_requests_newest_first_and_only_theirs(history, django_assert_num_queries):
    owner, other, _, rows = history

    with django_assert_num_queries(1):
        recent = usage_requests_recent(user_id=owner.pk, limit=10)

    mine = sorted((row for row in rows if row.user_id == owner.pk), key=lambda row: (row.created_at, row.pk),
                  reverse=True)
    assert [row.request_id for row in recent] == [row.request_id for row in mine[:10]]
    theirs = next(row for row in rows if row.user_id == other.pk)
    assert usage_request_get(user_id=owner.pk, request_id=theirs.request_id) is None
    assert usage_request_get(user_id=other.pk, request_id=theirs.request_id).pk == theirs.pk


def test_it_exports_the_roll_ups_of_a_range_whose_sums_equal_the_raw_log(history):
    *_, rows = history
    usage_rollups_update()
    today = local_date(timezone.now())

    header, *lines = list(usage_rollups_csv_rows(days=30))

    assert header[:4] == ("period", "bucket_start", "user_id", "username")
    window = [row for row in rows if local_date(row.created_at) > today - timedelta(days=30)]
    requests = header.index("requests")
    assert sum(line[requests] for line in lines) == len(window)
    assert sum(line[header.index("cost")] for line in lines) == sum(row.cost for row in window)
    assert {line[header.index("username")] for line in lines} == {"sel-owner", "sel-other"}
    assert [line[1] for line in lines] == sorted(line[1] for line in lines)
