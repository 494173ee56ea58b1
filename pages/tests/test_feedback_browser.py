"""Thumbs on answers in a real browser (headless Chromium): in the playground after an answer, and on the usage page's
recent requests and request detail; they call /api/feedback/ with the session's CSRF token and show the vote."""

import re

import pytest
from playwright.sync_api import expect

from conftest import usage_rows
from feedback.models import Feedback
from pages.tests.conftest import log_in, screenshot

pytestmark = pytest.mark.browser


def stored_score(request_id: str) -> int | None:
    feedback = Feedback.objects.filter(request_id=request_id).first()
    return None if feedback is None else feedback.score


def rate_in_playground(page, user, shot: str) -> str:
    log_in(page, user)
    page.goto("/playground/")
    page.get_by_role("textbox", name="Message").fill("rate this answer")
    page.get_by_role("button", name="Send").click()
    answer = page.locator('.pg-turn[data-role="assistant"]').last
    expect(answer.locator(".pg-text")).to_have_text("Simulated reply from demo: rate this answer")
    widget = answer.locator("[data-feedback]")
    thumbs = widget.get_by_role("group", name="Rate this answer")
    expect(thumbs).to_be_visible()
    request_id = widget.get_attribute("data-request-id")
    assert re.fullmatch(r"req_[0-9a-f]{32}", request_id)

    thumbs.get_by_role("button", name="Bad answer").click()
    expect(widget).to_contain_text("Thanks: bad answer noted.")
    expect(thumbs.get_by_role("button", name="Bad answer")).to_have_attribute("aria-pressed", "true")
    expect(thumbs.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "false")
    assert stored_score(request_id) == -1
    thumbs.get_by_role("button", name="Good answer").click()  # a second vote replaces the first
    expect(widget).to_contain_text("Thanks: good answer noted.")
    expect(thumbs.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "true")
    assert stored_score(request_id) == 1
    assert Feedback.objects.count() == 1
    screenshot(page, shot)
    return request_id


def rate_on_usage_pages(page, request_id: str, shot: str) -> None:
    usage_rows(1)
    page.goto("/usage/")
    row = page.locator(f'tr[data-request-id="{request_id}"]')
    thumbs = row.get_by_role("group", name="Rate this answer")
    expect(thumbs.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "true")
    thumbs.get_by_role("button", name="Bad answer").click()
    expect(row.locator("[data-feedback]")).to_contain_text("Thanks: bad answer noted.")
    expect(thumbs.get_by_role("button", name="Bad answer")).to_have_attribute("aria-pressed", "true")
    expect(thumbs.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "false")
    assert stored_score(request_id) == -1
    screenshot(page, f"{shot}-recent")

    row.get_by_role("link").first.click()
    expect(page.get_by_role("heading", name=re.compile("Request"))).to_contain_text(request_id)
    detail = page.get_by_role("group", name="Rate this answer")
    expect(detail.get_by_role("button", name="Bad answer")).to_have_attribute("aria-pressed", "true")
    detail.get_by_role("button", name="Good answer").click()
    expect(page.locator("[data-feedback]")).to_contain_text("Thanks: good answer noted.")
    assert stored_score(request_id) == 1
    screenshot(page, f"{shot}-request")


def test_it_rates_an_answer_in_the_playground_and_on_the_usage_pages(page, make_user):
    user = make_user("thumbs", tier="free")
    request_id = rate_in_playground(page, user, "feedback-playground")
    rate_on_usage_pages(page, request_id, "feedback-usage")


def test_it_rates_an_answer_at_phone_width(phone, make_user):
    user = make_user("thumbs-phone", tier="free")
    request_id = rate_in_playground(phone, user, "feedback-playground-phone")
    rate_on_usage_pages(phone, request_id, "feedback-usage-phone")
