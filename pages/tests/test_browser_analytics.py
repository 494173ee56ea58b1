"""The analytics pages in Chromium (Playwright, Debian's chromium), offline, against the whole ASGI app and the simulated
upstream: a pro user makes chats, a stream, translations and a failure over real HTTP, some are moved two days back
and rolled up; the comparison page shows the models side by side per task, a model's page draws its charts. At
1280x800 and 390x844: no sideways scrolling, no serious accessibility violation. Screenshots in
test-results/analytics-*.png."""

import re
from datetime import timedelta

import httpx2
import openai
import pytest
from django.utils import timezone
from playwright.sync_api import expect

from conftest import usage_rows
from pages.tests.conftest import axe_violations, horizontal_overflow, log_in, screenshot
from usage.models import UsageLog
from usage.rollups import usage_rollups_update

pytestmark = pytest.mark.browser


@pytest.fixture
def traffic(live_hub, make_user, api_key_for, simulated_upstream):
    user = make_user("petra", tier="pro")
    key = api_key_for(user)
    sdk = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=key, max_retries=0, timeout=20)
    simulated_upstream.set_fault("demo", "latency=30")
    for n in range(3):
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": f"hello {n}"}])
    for _ in sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "a stream"}], stream=True):
        pass
    simulated_upstream.clear_faults()
    for n in range(2):
        sdk.chat.completions.create(model="demo-pro", messages=[{"role": "user", "content": f"pro {n}"}])
    simulated_upstream.set_fault("demo-backup", "status=500")
    with pytest.raises(openai.APIStatusError):
        sdk.chat.completions.create(model="demo-backup", messages=[{"role": "user", "content": "fails"}])
    simulated_upstream.clear_faults()
    for n in range(2):
        response = httpx2.post(f"{live_hub}/api/translate/", headers={"Authorization": f"Bearer {key}"}, timeout=20,
                               json={"text": f"Good evening {n}.", "target_language": "de", "model": "demo-backup"})
        assert response.status_code == 200, response.text
    rows = usage_rows(9)
    assert len(rows) == 9
    UsageLog.objects.filter(pk__in=[row.pk for row in rows[::2]]).update(
        created_at=timezone.now() - timedelta(days=2))
    usage_rollups_update()
    return user


def test_it_compares_models_per_task_and_draws_a_models_charts(sized_page, traffic):
    page = sized_page
    log_in(page, traffic)
    if page.size == "phone":
        page.get_by_role("button", name="Menu").click()
    page.get_by_role("link", name="Analytics").click()
    expect(page.get_by_role("heading", name="Model analytics")).to_be_visible()
    models = page.locator('[data-compare="models"]')
    expect(models.locator('tr[data-model="demo"] [data-figure="requests"]')).to_have_text("4")
    expect(models.locator('tr[data-model="demo-pro"] [data-figure="requests"]')).to_have_text("2")
    expect(models.locator('tr[data-model="demo-backup"] [data-figure="success_rate"]')).to_have_text("0.0%")
    expect(models.locator('tr[data-model="demo-backup"]')).to_contain_text("upstream_failed 1")
    expect(models.locator('tr[data-model="demo-premium"]')).to_have_count(0)  # above the pro tier
    assert horizontal_overflow(page) == 0
    assert not axe_violations(page)
    screenshot(page, f"analytics-compare-{page.size}")

    page.get_by_role("link", name="Translation").click()
    expect(page).to_have_url(re.compile(r"task=translation"))
    expect(models.locator('tr[data-model="demo-backup"] [data-figure="requests"]')).to_have_text("2")
    expect(models.locator('tr[data-model="demo-backup"] [data-figure="success_rate"]')).to_have_text("100.0%")
    expect(models.locator('tr[data-model="demo"] [data-figure="requests"]')).to_have_text("0")

    page.get_by_role("link", name="Generation").click()
    page.get_by_role("link", name="30d").click()
    models.locator('tr[data-model="demo"] a').click()
    expect(page.get_by_role("heading", level=1)).to_have_text(re.compile(r"^Demo"))
    expect(page.locator('[data-figure="requests"]')).to_have_text("4")
    expect(page.locator('[data-figure="success_rate"]')).to_have_text("100.0%")
    expect(page.locator('[data-figure="latency_p50"]')).to_have_text(re.compile(r"\d+ ms"))
    expect(page.locator('[data-figure="ttft_p50"]')).to_have_text(re.compile(r"\d+(\.\d)? ms"))
    expect(page.locator("figure[data-chart][data-rendered=true]")).to_have_count(6)
    assert page.locator("figure[data-chart] canvas").count() == 6
    assert page.locator('figure[data-chart="requests"]').get_attribute("data-total") == "4"
    assert horizontal_overflow(page) == 0
    assert not axe_violations(page)
    screenshot(page, f"analytics-model-{page.size}")

    page.goto("/models/demo/analytics/?window=24h")
    expect(page.locator("figure[data-chart][data-rendered=true]")).to_have_count(6)
    expect(page.locator("[data-points-table] tbody tr")).to_have_count(24)
    screenshot(page, f"analytics-model-24h-{page.size}")
