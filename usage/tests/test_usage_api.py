"""GET /api/usage/: the caller's own totals for today, this month and the last 30 days, read from the roll-ups
plus the raw rows of the current hour."""

import random
import time
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import openai
import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from conftest import usage_rows
from llmhub.testing import servers_turn
from registry.services import api_key_create
from usage.models import UsageLog, UsageRollup
from usage.rollups import hour_floor, local_date, usage_rollups_update
from usage.selectors import usage_totals
from usage.services import usage_flush

ZERO = {"requests": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0, "cost": Decimal(0)}


@pytest.fixture(autouse=True)
def _not_at_the_end_of_an_hour() -> None:
    # A test that crossed into the next hour would find its "current hour" rows in an hour nobody rolled up.
    left = 3600 - timezone.now().timestamp() % 3600
    if left < 30:
        time.sleep(left + 0.1)


@pytest.fixture
def owner(registry, make_user):
    return make_user("usage-owner", tier="free")


@pytest.fixture
def other(registry, make_user):
    """A user of another tier."""
    return make_user("usage-other", tier="pro")


def client_of(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(user=user)[1]}")
    return client


def log_rows(user, moments, *, seed: int) -> list[UsageLog]:
    rng = random.Random(seed)
    rows = []
    for number, moment in enumerate(moments):
        status = rng.choice(["ok", "ok", "error", "partial"])
        rows.append(UsageLog(
            request_id=f"api-{user.pk}-{seed}-{number}", user=user, endpoint="v1.chat_completions", tier="free",
            requested_model="demo", answered_model=rng.choice(["demo", "demo-backup"]), status=status,
            http_status=200 if status != "error" else 502, input_tokens=rng.randint(0, 3000),
            output_tokens=rng.randint(0, 900), cost=Decimal(rng.randint(0, 10**6)) / 10**7,
            latency_ms=rng.uniform(5, 4000), created_at=moment))
    return UsageLog.objects.bulk_create(rows)


def daily_from_raw(rows) -> dict:
    days = defaultdict(lambda: dict(ZERO))
    for row in rows:
        totals = days[local_date(row.created_at)]
        totals["requests"] += 1
        totals["errors"] += row.status == "error"
        totals["input_tokens"] += row.input_tokens
        totals["output_tokens"] += row.output_tokens
        totals["cost"] += row.cost
    return days


def measures(body: dict) -> dict:
    return {name: Decimal(body[name]) if name == "cost" else body[name] for name in ZERO}


def test_it_answers_the_callers_totals_from_the_roll_ups_and_the_current_hour(owner, other, django_assert_num_queries):
    now = timezone.now()
    hour_start = hour_floor(now)
    rng = random.Random(3)
    past = [hour_start - timedelta(minutes=rng.randint(1, 35 * 24 * 60)) for _ in range(300)]
    current = [hour_start + (now - hour_start) * rng.random() for _ in range(5)]
    rows = log_rows(owner, past + current, seed=1)
    log_rows(other, past[:50] + current, seed=2)
    usage_rollups_update()
    # After the run: a row of the current hour counts (read raw); a late row of an earlier hour does not yet (only
    # roll-ups are read for earlier hours), until the next run.
    rows += log_rows(owner, [timezone.now()], seed=3)
    late = log_rows(owner, [hour_start - timedelta(days=2)], seed=4)

    client = client_of(owner)
    client.get("/api/usage/")  # warms the API key snapshot
    with django_assert_num_queries(2):
        response = client.get("/api/usage/")

    assert response.status_code == 200, response.content
    body = response.json()
    today = local_date(now)
    expected = daily_from_raw(rows)
    assert body["time_zone"] == "UTC"
    assert [day["date"] for day in body["last_30_days"]] == [
        (today - timedelta(days=back)).isoformat() for back in range(29, -1, -1)]
    assert [measures(day) for day in body["last_30_days"]] == [
        expected[today - timedelta(days=back)] for back in range(29, -1, -1)]
    assert measures(body["today"]) == expected[today]
    month = {name: sum(totals[name] for day, totals in expected.items() if day >= today.replace(day=1))
             for name in ZERO}
    assert measures(body["month"]) == month
    assert body["remaining_quota"] == []

    usage_rollups_update()
    expected_late = daily_from_raw(rows + late)[local_date(late[0].created_at)]
    late_day = next(day for day in client.get("/api/usage/").json()["last_30_days"]
                    if day["date"] == local_date(late[0].created_at).isoformat())
    assert measures(late_day) == expected_late


def test_it_shows_each_caller_only_their_own_usage(owner, other):
    log_rows(owner, [timezone.now() - timedelta(hours=hours) for hours in range(0, 50, 5)], seed=5)
    usage_rollups_update()

    owners = client_of(owner).get("/api/usage/").json()
    others = client_of(other).get("/api/usage/").json()

    assert sum(day["requests"] for day in owners["last_30_days"]) == 10
    assert [measures(day) for day in others["last_30_days"]] == [ZERO] * 30
    assert measures(others["today"]) == measures(others["month"]) == ZERO


def test_it_answers_401_to_an_outsider_and_writes_nothing(registry):
    response = APIClient().get("/api/usage/")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert not UsageRollup.objects.exists()


def test_it_refuses_writes_with_405(owner):
    response = client_of(owner).post("/api/usage/", {}, format="json")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_it_is_in_the_openapi_schema(owner):
    schema = client_of(owner).get("/api/schema/", HTTP_ACCEPT="application/json").json()

    operation = schema["paths"]["/api/usage/"]["get"]
    assert operation["operationId"] == "usage_retrieve"
    reference = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    component = schema["components"]["schemas"][reference.rsplit("/", 1)[1]]
    assert set(component["properties"]) == {"time_zone", "today", "month", "last_30_days", "remaining_quota"}


@pytest.mark.django_db(transaction=True)
def test_it_rolls_up_requests_made_through_the_hub_with_their_tier(live_hub, free_user, api_key_for):
    sdk = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(free_user), max_retries=0, timeout=10)
    for _ in range(3):
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    for _ in sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}], stream=True):
        pass
    assert len(usage_rows(4)) == 4  # the stream's row is written as its response ends, after the client's last read

    usage_rollups_update()

    hour = UsageRollup.objects.filter(period="hour", user=free_user)
    assert {(rollup.tier, rollup.answered_model, rollup.status) for rollup in hour} == {("free", "demo", "ok")}
    raw = usage_totals(user_id=free_user.pk)
    assert sum(rollup.requests for rollup in hour) == raw["requests"] == 4
    assert sum(rollup.input_tokens + rollup.output_tokens for rollup in hour) == raw["input_tokens"] + raw["output_tokens"]
    assert sum(sum(rollup.ttft_histogram) for rollup in hour) == 1  # the stream
    body = client_of(free_user).get("/api/usage/").json()
    assert body["today"]["requests"] == 4
    assert Decimal(body["today"]["cost"]) == raw["cost"]


def test_it_answers_what_is_left_of_each_limit(live_hub, free_user, api_key_for):
    from registry.models import QuotaLimit, Tier

    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="requests", period="day", limit=5)
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="cost", period="month", limit=Decimal("2.5"))
    key = api_key_for(free_user)
    sdk = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=key, max_retries=0)
    for _ in range(2):
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    servers_turn()  # (the last answer's row is handed on the turn after its response)
    usage_flush()

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    body = client.get("/api/usage/").json()

    spent = sum(row.cost for row in UsageLog.objects.filter(user=free_user))
    requests, cost = sorted(body["remaining_quota"], key=lambda row: row["metric"], reverse=True)
    assert {name: requests[name] for name in ("metric", "period", "model", "scope", "limit", "used", "remaining")} == {
        "metric": "requests", "period": "day", "model": None, "scope": "user", "limit": 5, "used": 2, "remaining": 3}
    assert (cost["metric"], cost["period"], Decimal(cost["used"]), Decimal(cost["remaining"])) == (
        "cost", "month", spent, Decimal("2.5") - spent)
    assert cost["resets_at"] > requests["resets_at"]
