"""The usage pages in Chromium (Playwright, Debian's chromium) against the whole ASGI app and the simulated upstream:
a user with limits makes requests through /v1 with the openai SDK, the roll-up task runs, and /usage/ shows the
quota bars filled and the charts drawn; at 1280x800 and 390x844 (no horizontal scroll). Screenshots in
test-results/usage-*.png."""

import re
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Page, expect

from conftest import usage_rows
from pages.tests.conftest import TIMEOUT_MS, log_in, screenshot
from registry.models import QuotaLimit, Tier
from usage.rollups import usage_rollups_update

pytestmark = pytest.mark.browser

VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


@pytest.fixture
def new_page(browser, live_hub):
    contexts, errors = [], []

    def make(viewport: str) -> Page:
        context = browser.new_context(base_url=live_hub, viewport=VIEWPORTS[viewport])
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: message.type == "error" and "Failed to load resource" not in message.text
                and errors.append(message.text))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, errors


def no_horizontal_scroll(page: Page) -> None:
    """Nothing of the page's content reaches past the viewport (wide tables scroll inside their own box). The site
    header is the responsive-layout work's (issue 10): until it lands, its nav is wider than a phone on every page."""
    wider = page.evaluate(
        "[...document.querySelectorAll('main, main *')].filter(e => e.getBoundingClientRect().right > "
        "window.innerWidth + 0.5 && !e.closest('.overflow-auto > *')).slice(0, 8)"
        ".map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))")
    assert not wider, wider


@pytest.fixture
def requests_made(live_hub, make_user, api_key_for, simulated_upstream):
    """A free-tier user (20 requests a day, 2,000 tokens a day, $1 a month) makes 5 requests through /v1: three
    plain, one stream, one answered by the fallback after demo failed; then the roll-up task runs."""
    free = Tier.objects.get(slug="free")
    QuotaLimit.objects.create(tier=free, metric="requests", period="day", limit=20)
    QuotaLimit.objects.create(tier=free, metric="tokens", period="day", limit=2_000)
    QuotaLimit.objects.create(tier=free, metric="cost", period="month", limit=Decimal("1.00"))
    user = make_user("uma", tier="free")
    sdk = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(user), max_retries=0, timeout=20)
    for n in range(3):
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": f"hello {n}"}], max_tokens=50)
    for _ in sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "stream"}],
                                         max_tokens=50, stream=True):
        pass
    simulated_upstream.set_fault("demo", "status=500")
    fallback = sdk.chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "fall back"}], max_tokens=50)
    assert fallback.headers["x-llmhub-model"] == "demo-backup"
    simulated_upstream.clear_faults()
    rows = usage_rows(5)
    assert len(rows) == 5
    usage_rollups_update()
    return user, rows


def test_it_shows_quota_bars_and_charts_filled_after_requests(new_page, requests_made):
    user, rows = requests_made
    page = new_page("desktop")
    log_in(page, user)
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()

    requests_bar = page.locator('[data-quota="requests-day"]')
    expect(requests_bar).to_contain_text("5 of 20 used · 15 left")
    expect(requests_bar.locator("progress")).to_have_attribute("value", "25.0")
    assert float(page.locator('[data-quota="tokens-day"]').get_attribute("data-percent")) > 0
    expect(page.locator('[data-quota="cost-month"]')).to_contain_text("Spending per month")
    expect(requests_bar).to_contain_text(re.compile(r"Resets \d{4}-\d\d-\d\d 00:00"))

    charts = page.locator("figure[data-chart][data-rendered=true]")
    expect(charts).to_have_count(3)
    assert page.locator('figure[data-chart="requests"]').get_attribute("data-total") == "5"
    assert float(page.locator('figure[data-chart="tokens"]').get_attribute("data-total")) == sum(
        row.input_tokens + row.output_tokens for row in rows)
    assert page.locator("figure[data-chart] canvas").count() == 3
    expect(page.locator('[data-total="requests"]')).to_have_text("5")
    expect(page.locator('[data-breakdown="model"]')).to_contain_text("demo-backup")
    expect(page.locator("[data-recent] tbody tr")).to_have_count(5)
    no_horizontal_scroll(page)
    screenshot(page, "usage-desktop")

    fallback = next(row for row in rows if row.answered_model == "demo-backup")
    page.locator(f'tr[data-request-id="{fallback.request_id}"] a').click()
    expect(page.get_by_role("heading", name=re.compile("Request"))).to_be_visible()
    attempts = page.locator("[data-attempts] tbody tr")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("demo")
    expect(attempts.nth(0)).to_contain_text("500")
    expect(attempts.nth(1)).to_contain_text("demo-backup")
    expect(attempts.nth(1)).to_contain_text("ok")
    screenshot(page, "usage-request-desktop")

    phone = new_page("phone")
    log_in(phone, user)
    phone.goto("/usage/")
    expect(phone.locator("figure[data-chart][data-rendered=true]")).to_have_count(3)
    expect(phone.locator('[data-quota="requests-day"] progress')).to_have_attribute("value", "25.0")
    no_horizontal_scroll(phone)
    screenshot(phone, "usage-phone")
    phone.goto(f"/usage/requests/{fallback.request_id}/")
    no_horizontal_scroll(phone)
    screenshot(phone, "usage-request-phone")


def test_it_shows_staff_everyones_usage_and_exports_it(new_page, requests_made, make_user):
    staff = make_user("stella", tier="enterprise", is_staff=True)
    for viewport in ("desktop", "phone"):
        page = new_page(viewport)
        log_in(page, staff)
        page.goto("/usage/")
        page.get_by_role("link", name="Everyone's usage").click()
        expect(page.get_by_role("heading", name="Usage of everyone")).to_be_visible()
        expect(page.locator('[data-total="requests"]')).to_have_text("5")
        expect(page.locator('[data-breakdown="user"]')).to_contain_text("uma")
        expect(page.locator("figure[data-chart][data-rendered=true]")).to_have_count(3)
        no_horizontal_scroll(page)
        screenshot(page, f"usage-all-{viewport}")

    with page.expect_download() as download:
        page.locator("[data-export]").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("period,bucket_start,user_id,username")
    assert sum(int(line.split(",")[10]) for line in lines[1:]) == 5
