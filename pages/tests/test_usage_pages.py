"""The usage pages: /usage/ (the owner's own usage), one request's attempts (owner only), the staff view and its CSV
export (staff only). Owner, other user, staff and anonymous visitor in each."""

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.utils import timezone

from pages import usage_views
from registry.models import QuotaLimit, Tier
from registry.services import api_key_create
from usage.models import UsageLog
from usage.rollups import usage_rollups_update

pytestmark = pytest.mark.django_db


def log_row(user, number: int, *, days_ago: int = 0, **fields) -> UsageLog:
    defaults = {"endpoint": "v1.chat_completions", "tier": "free", "requested_model": "demo", "answered_model": "demo",
                "status": "ok", "http_status": 200, "input_tokens": 100, "output_tokens": 20,
                "cost": Decimal("0.0012"), "latency_ms": 250.0}
    return UsageLog.objects.create(request_id=f"page-{user.pk}-{number}", user=user,
                                   created_at=timezone.now() - timedelta(days=days_ago), **{**defaults, **fields})


@pytest.fixture
def owner(registry, make_user):
    user = make_user("page-owner", tier="free")
    key = api_key_create(user=user, name="laptop")[0]
    log_row(user, 1, days_ago=3, api_key=key, answered_model="demo-backup", attempts=2, attempt_details=[
        {"model": "demo", "outcome": "unavailable", "latency_ms": 12.5, "upstream_status": 500,
         "message": "The upstream failed (HTTP 500)."},
        {"model": "demo-backup", "outcome": "ok", "latency_ms": 230.1, "upstream_status": None, "message": ""}])
    log_row(user, 2, days_ago=1, status="error", http_status=502, answered_model="", error_type="upstream_failed")
    usage_rollups_update()
    log_row(user, 3)  # this hour, after the run
    return user


@pytest.fixture
def other(registry, make_user):
    user = make_user("page-other", tier="pro")
    log_row(user, 1, tier="pro", cost=Decimal("5"))
    return user


@pytest.fixture
def staff(registry, make_user):
    return make_user("page-staff", tier="enterprise", is_staff=True)


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db(transaction=True)  # quotas are read on threads of their own: they must see committed limits
def test_it_shows_the_owner_their_quota_totals_breakdowns_and_recent_requests(owner, other):
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="requests", period="day", limit=10)
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="cost", period="month", limit=Decimal("2.5"))

    response = logged_in(owner).get("/usage/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-total="requests">3<' in html
    assert "$0.0036" in html  # three requests at $0.0012
    assert 'data-quota="requests-day"' in html and 'data-quota="cost-month"' in html
    assert "Requests per day" in html and "Spending per month" in html and "Resets" in html
    assert "laptop (" in html and "(no key: the pages)" in html
    assert "demo-backup" in html and "(none answered)" in html
    for number in (1, 2, 3):
        assert f"/usage/requests/page-{owner.pk}-{number}/" in html
    assert f"page-{other.pk}-1" not in html and "$5.00" not in html
    assert 'id="usage-series"' in html and "uPlot.iife.min.js" in html
    assert 'href="/usage/all/"' not in html  # the staff view's link is for staff


def test_it_says_when_a_tier_has_no_limits(owner):
    assert "Your tier has no limits." in logged_in(owner).get("/usage/").content.decode()


def test_it_shows_one_of_the_owners_requests_with_its_attempts(owner):
    response = logged_in(owner).get(f"/usage/requests/page-{owner.pk}-1/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Attempts (2)" in html
    assert "The upstream failed (HTTP 500)." in html and "unavailable" in html and "230 ms" in html


def test_it_answers_404_for_another_users_request_and_an_unknown_one(owner, other):
    client = logged_in(owner)

    assert client.get(f"/usage/requests/page-{other.pk}-1/").status_code == 404
    assert client.get("/usage/requests/req_nonexistent/").status_code == 404


def test_it_shows_staff_everyones_usage_by_tier_model_and_user(owner, other, staff):
    response = logged_in(staff).get("/usage/all/?days=7")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-total="requests">4<' in html and 'data-total="users">2<' in html
    assert "page-owner" in html and "page-other" in html and "$5.00" in html
    assert 'data-breakdown="tier"' in html and 'data-breakdown="model"' in html
    assert 'href="/usage/all/export.csv?days=7"' in html
    assert logged_in(staff).get("/usage/").status_code == 200


@pytest.mark.parametrize("url", ["/usage/all/", "/usage/all/export.csv"])
def test_it_refuses_the_staff_view_to_a_user(owner, url):
    assert logged_in(owner).get(url).status_code == 403


@pytest.mark.parametrize("url", ["/usage/", "/usage/all/", "/usage/all/export.csv", "/usage/requests/req_x/"])
def test_it_sends_a_visitor_to_the_login_page(registry, url):
    response = Client().get(url)

    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_it_answers_400_to_a_range_it_does_not_offer(staff):
    client = logged_in(staff)

    assert client.get("/usage/all/?days=5").status_code == 400
    response = client.get("/usage/all/export.csv?days=30&period=week")
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"period": ["Must be day or hour."]}


async def collected(response) -> list[str]:
    # An async iterator (ASGI streams it chunk by chunk); the test client hands it over as it is.
    return [chunk async for chunk in response.streaming_content]


def test_it_streams_the_roll_ups_of_the_range_as_csv(owner, other, staff, monkeypatch):
    monkeypatch.setattr(usage_views, "CSV_ROWS_PER_CHUNK", 3)
    usage_rollups_update()
    other.username = "=HYPERLINK(1)"
    other.save()

    response = logged_in(staff).get("/usage/all/export.csv?days=7")

    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="llmhub-usage-day-7d-')
    chunks = async_to_sync(collected)(response)
    assert len(chunks) == 2  # 5 lines (header and 4 buckets) in chunks of 3
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert sum(int(row["requests"]) for row in rows) == 4
    assert sum(Decimal(row["cost"]) for row in rows) == Decimal("5.0036")
    assert {row["username"] for row in rows} == {"page-owner", "'=HYPERLINK(1)"}  # no formula in a spreadsheet


def test_it_shows_how_one_of_the_owners_requests_was_routed(owner):
    log_row(owner, 9, route={
        "policy": "cost", "task": "generation", "winner": "demo-backup", "reason": "cheapest of 2 meeting objectives",
        "candidates": [
            {"model": "demo-backup", "outcome": "winner", "reason": "cheapest of 2 meeting objectives", "score": 0.0002,
             "latency_ms": 230.0, "success": 0.99, "cost": 0.0002},
            {"model": "demo-pro", "outcome": "skipped", "reason": "tier: needs pro"}],
        "shadow": {"policy": "performance", "winner": "demo", "agree": False}})

    html = logged_in(owner).get(f"/usage/requests/page-{owner.pk}-9/").content.decode()

    assert "Policy <strong>cost</strong> for generation: <strong>demo-backup</strong>" in html
    assert "tier: needs pro" in html and "230 ms" in html
    assert "Shadow policy performance would have chosen demo" in html
