"""A key created on /keys/ in Chromium works with the openai SDK and stops working once revoked on the page: on the
app process that served the page at once, and on a second app process (a uvicorn child sharing the database, and
Redis in the services run) within its check interval. At 1280x800 and 390x844; screenshots in test-results/."""

import os
import re
import time
from collections.abc import Iterator

import openai
import pytest
from playwright.sync_api import Browser, Page, expect

from llmhub.testing import ServerProcess, database_url, free_port, production_env, uvicorn_command
from pages.tests.conftest import TIMEOUT_MS, log_in, screenshot
from registry.models import ApiKey, QuotaLimit, Tier

pytestmark = pytest.mark.browser

CHECK_SECONDS = 0.5
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def open_page(chromium: Browser, live_hub: str, viewport: dict) -> tuple[Page, list[str]]:
    context = chromium.new_context(base_url=live_hub, viewport=viewport)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_hub)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and "Failed to load resource" not in message.text
            and errors.append(message.text))
    return page, errors


@pytest.fixture
def desktop(browser, live_hub) -> Iterator[Page]:
    page, errors = open_page(browser, live_hub, DESKTOP)
    yield page
    page.context.close()
    assert not errors, errors


@pytest.fixture
def phone(browser, live_hub) -> Iterator[Page]:
    page, errors = open_page(browser, live_hub, PHONE)
    yield page
    page.context.close()
    assert not errors, errors


@pytest.fixture
def second_app(live_hub, simulated_upstream, tmp_path) -> Iterator[str]:
    """Another app process on the test's database (and its Redis, when the run has one), as `make serve` runs."""
    port = free_port()
    env = production_env(database_url=database_url(), redis_url=os.environ.get("REDIS_URL") or None,
                         LLMHUB_SIMULATOR_URL=simulated_upstream.base_url,
                         LLMHUB_REGISTRY_CACHE_CHECK_SECONDS=str(CHECK_SECONDS))
    app = ServerProcess(uvicorn_command("llmhub.asgi:application", port=port), env=env, log=tmp_path / "app.log")
    with app:
        app.wait_output(lambda text: "Application startup complete" in text)
        yield f"http://127.0.0.1:{port}"


def create_key_on_page(page: Page, name: str, shot: str) -> str:
    menu = page.get_by_role("button", name="Menu")
    if menu.is_visible():  # on a phone the links fold behind the header's Menu button
        menu.click()
    page.get_by_role("link", name="Keys").click()
    expect(page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()
    page.get_by_label("Name").fill(name)
    page.get_by_label("Expires").select_option("30")
    page.get_by_text("Limits of this key (optional)").click()
    page.get_by_label("Limit 1", exact=True).fill("20")
    page.get_by_label("Metric 1").select_option("requests")
    page.get_by_label("Per 1").select_option("hour")
    page.get_by_role("button", name="Create key").click()

    secret_box = page.get_by_label("Secret key")
    expect(secret_box).to_have_value(re.compile(r"^lh-[A-Za-z0-9_-]{40,}$"))
    expect(page.get_by_text("Copy it now: it is shown this once.")).to_be_visible()
    secret = secret_box.input_value()
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    row = page.locator(f'tr[data-key-id="{ApiKey.objects.get(name=name).pk}"]')
    expect(row).to_contain_text(secret[:10])
    expect(row).to_contain_text("20 requests per hour")
    expect(row).to_contain_text("never")  # not used yet
    assert secret not in row.inner_text()
    screenshot(page, f"{shot}-created")
    return secret


def revoke_on_page(page: Page, name: str, shot: str) -> None:
    page.goto("/keys/")  # a reload: the secret is gone for good
    assert page.locator("#new-key").count() == 0
    page.get_by_role("link", name=f"Revoke {name}").click()
    expect(page.get_by_role("heading", name=f"Revoke {name}?")).to_be_visible()
    screenshot(page, f"{shot}-revoke-confirm")
    page.get_by_role("button", name="Revoke key").click()
    expect(page.get_by_text(f"Revoked {name}")).to_be_visible()
    expect(page.locator(f'tr[data-key-id="{ApiKey.objects.get(name=name).pk}"]')).to_have_attribute(
        "data-state", "revoked")
    screenshot(page, f"{shot}-revoked")


def ask(root: str, secret: str) -> str:
    sdk = openai.OpenAI(base_url=f"{root}/v1", api_key=secret, max_retries=0, timeout=30)
    return sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content


def refused(root: str, secret: str) -> openai.AuthenticationError | None:
    try:
        ask(root, secret)
    except openai.AuthenticationError as error:
        return error
    return None


def test_it_creates_a_key_that_works_with_the_sdk_on_two_processes_until_revoked(desktop, live_hub, second_app,
                                                                                make_user):
    user = make_user("kim", tier="pro")
    log_in(desktop, user)

    secret = create_key_on_page(desktop, "laptop", "keys-desktop")

    assert ask(live_hub, secret)
    assert ask(second_app, secret)  # the other process learns the key from the database
    desktop.goto("/keys/")
    expect(desktop.locator("tr[data-state=active]")).to_contain_text("just now")  # last used

    revoke_on_page(desktop, "laptop", "keys-desktop")

    here = refused(live_hub, secret)
    assert here is not None and here.status_code == 401 and here.code == "invalid_api_key"
    assert secret not in str(here.body)
    started, there = time.monotonic(), None
    while there is None and time.monotonic() - started < 10:
        there = refused(second_app, secret)
    seen_after = time.monotonic() - started
    print(f"the second process refused the revoked key {seen_after:.2f} s after the page revoked it")
    assert there is not None and there.status_code == 401 and there.code == "invalid_api_key"
    assert seen_after < CHECK_SECONDS + 1.5


def test_it_works_on_a_phone_sized_screen(phone, live_hub, make_user):
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="requests", period="hour", limit=50)
    user = make_user("pia", tier="free")
    log_in(phone, user)
    phone.goto("/keys/")
    phone.get_by_text("Limits of this key (optional)").click()
    expect(phone.get_by_text("Yours: 50 requests per hour.")).to_be_visible()
    phone.get_by_label("Limit 1", exact=True).fill("500")
    phone.get_by_label("Per 1").select_option("hour")
    phone.get_by_role("button", name="Create key").click()
    expect(phone.locator("#id_limits_errors")).to_have_text(
        "Limit 1: requests per hour: 500 is above the owner's limit of 50.")
    expect(phone.get_by_label("Limit 1", exact=True)).to_have_value("500")  # kept, to be fixed
    screenshot(phone, "keys-phone-limit-refused")
    assert not ApiKey.objects.exists()
    phone.goto("/models/")

    secret = create_key_on_page(phone, "phone", "keys-phone")

    assert ask(live_hub, secret)
    # Nothing of this page's own scrolls sideways (its table scrolls inside its box; the header is the pages').
    assert phone.evaluate("document.querySelector('main').scrollWidth") <= PHONE["width"]
    revoke_on_page(phone, "phone", "keys-phone")
    error = refused(live_hub, secret)
    assert error is not None and error.status_code == 401
