"""The experiments pages in Chromium against the whole app and the simulated upstream: a staff user creates an
experiment with two arms in admin and starts it, users send traffic through /v1 with the openai SDK, and the
experiment's page shows each arm's requests and metrics with intervals, the test against the control and the
decision; at 1280x800 and 390x844. Screenshots in test-results/experiment-*.png."""

import re

import openai
import pytest
from playwright.sync_api import expect

from conftest import usage_rows
from experiments.models import Experiment
from experiments.services import experiment_assign
from pages.tests.conftest import axe_violations, log_in, screenshot

pytestmark = pytest.mark.browser


def no_horizontal_scroll(page) -> None:
    wider = page.evaluate(
        "[...document.querySelectorAll('main, main *')].filter(e => e.getBoundingClientRect().right > "
        "window.innerWidth + 0.5 && !e.closest('.overflow-auto > *')).slice(0, 8)"
        ".map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))")
    assert not wider, wider


def test_a_staff_user_creates_an_experiment_sends_traffic_and_sees_the_arms_metrics(page, phone, live_hub, make_user,
                                                                                     api_key_for):
    staff = make_user("staff", tier="pro", is_staff=True, is_superuser=True)
    log_in(page, staff)
    page.goto("/admin/experiments/experiment/add/")
    page.fill('[name="key"]', "greeting-test")
    page.fill('[name="name"]', "Greeting test")
    for index, (name, model, params) in enumerate((("control", "demo", "{}"),
                                                   ("cooler", "demo-backup", '{"temperature": 0.2}'))):
        page.fill(f'[name="arms-{index}-position"]', str(index))
        page.fill(f'[name="arms-{index}-name"]', name)
        page.fill(f'[name="arms-{index}-model_id"]', model)
        page.fill(f'[name="arms-{index}-params"]', params)
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    experiment = Experiment.objects.get(key="greeting-test")
    page.locator(f'input[name="_selected_action"][value="{experiment.pk}"]').check()
    page.select_option('select[name="action"]', "start")
    page.locator('button[name="index"]').click()
    expect(page.locator(".messagelist")).to_contain_text("Experiment greeting-test is running.")

    users = []  # until both arms have some (the hash of user and experiment decides)
    while len(users) < 6 or len({experiment_assign(user.pk, key="greeting-test").arm for user in users}) < 2:
        users.append(make_user(f"user-{len(users)}"))
    for user in users:
        sdk = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(user), max_retries=0, timeout=20)
        for _ in range(3):
            sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}],
                                        metadata={"experiment": "greeting-test"})
    rows = usage_rows(3 * len(users))
    assert {row.experiment_arm for row in rows} == {"control", "cooler"}
    counts = {arm: sum(row.experiment_arm == arm for row in rows) for arm in ("control", "cooler")}

    page.goto("/experiments/")
    page.get_by_role("link", name="Greeting test").click()
    expect(page).to_have_url(re.compile(rf"/experiments/{experiment.pk}/$"))
    for arm, count in counts.items():
        row = page.locator(f'tr[data-arm="{arm}"]')
        expect(row.locator("[data-requests]")).to_contain_text(f"{count} ")
        expect(row.locator("[data-primary]")).to_contain_text("100.0%")
        expect(row).to_contain_text("Cost per request: $")
        expect(row).to_contain_text("Latency:")
    expect(page.locator('tr[data-arm="cooler"]')).to_contain_text("collecting (100 per arm first)")
    expect(page.locator("[data-decision]")).to_contain_text("Collecting: ")
    expect(page.get_by_role("button", name="Promote cooler")).to_be_visible()
    screenshot(page, "experiment-desktop")
    assert axe_violations(page) == []

    log_in(phone, staff)
    phone.goto(f"/experiments/{experiment.pk}/")
    expect(phone.locator('tr[data-arm="control"] [data-requests]')).to_contain_text(f"{counts['control']} ")
    no_horizontal_scroll(phone)
    screenshot(phone, "experiment-phone")

    # The button promotes: every request of the experiment is served by the winner from the next one on.
    page.get_by_role("button", name="Promote cooler").click()
    expect(page.locator(".messages")).to_contain_text("cooler is promoted")
    expect(page.locator('tr[data-arm="cooler"]')).to_contain_text("Winner")
    sdk = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(staff), max_retries=0, timeout=20)
    answered = {sdk.chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], metadata={"experiment": "greeting-test"},
    ).headers["x-llmhub-model"] for _ in range(3)}
    assert answered == {"demo-backup"}
