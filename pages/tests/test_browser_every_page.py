"""Every page at 1280x800 and at 390x844, cut off from any address but the app's: it renders, never scrolls
sideways, and axe-core finds no violation of impact "serious" or "critical". Screenshots land in test-results/
as `every-<page>-<size>.png` (look at them)."""

import re

import httpx2
import pytest
from playwright.sync_api import expect

from conftest import usage_rows
from health.model_tests import model_test_start
from pages.tests.conftest import RESULTS, axe_violations, horizontal_overflow, log_in, own_model, screenshot
from registry.models import LLMModel

pytestmark = pytest.mark.browser

# (name, path, something the page must show once it has rendered)
USER_PAGES = [
    ("models", "/models/", "Your defaults"),
    ("own-models", "/models/mine/", "Add a model"),
    ("own-model-edit", "/models/mine/mine/edit/", "Edit My model"),
    ("own-model-delete", "/models/mine/mine/delete/", "Delete My model?"),
    ("own-model-tests", "/models/mine/mine/tests/", "Recent tests"),
    ("registry-model-tests", "/models/registry/demo/tests/", "Recent tests"),
    ("playground", "/playground/", 'h1:has-text("Playground")'),
    ("keys", "/keys/", 'h1:has-text("API keys")'),
    ("usage", "/usage/", 'h1:has-text("Usage")'),
    ("usage-all", "/usage/all/", 'h1:has-text("Usage of everyone")'),
    ("analytics", "/analytics/", 'h1:has-text("Model analytics")'),
    ("model-analytics", "/models/demo/analytics/", "Cost per 1,000 requests"),
    ("analytics-recommendations", "/analytics/recommendations/", 'h1:has-text("Recommendations")'),
    ("browsable-api", "/api/models/", "llmhub API"),
]
DOC_PAGES = [
    # Swagger UI draws an operation per endpoint from the schema: it ran, offline.
    ("api-docs", "/api/docs/", '.opblock-summary-path:has-text("/api/generate/")'),
    ("api-docs-v1", "/api/docs/v1/", '.opblock-summary-path:has-text("/v1/chat/completions")'),
    ("redoc", "/api/redoc/", 'main h1:has-text("llmhub API")'),
]
ADMIN_PAGES = [
    ("admin", "/admin/", "Registry, users, keys and usage"),
    ("admin-models", "/admin/registry/llmmodel/", "Select LLM model to change"),
    ("admin-usage", "/admin/usage/usagelog/?created_at__gte=2000-01-01+00:00:00%2B00:00", "Totals of these filters"),
    ("admin-model-change", "/admin/registry/llmmodel/{demo}/change/", "Change LLM model"),
]


def problems_of(page, name: str) -> list[str]:
    """What is wrong with the page as shown: sideways scrolling, serious or critical accessibility violations."""
    # A whole page, unless it is a very long one (ReDoc: 18,000 px): its first screen then.
    long = page.evaluate("() => document.documentElement.scrollHeight") > 6000
    page.screenshot(path=RESULTS / f"every-{name}-{page.size}.png", full_page=not long)
    if page.size == "phone":  # the whole page shrinks to be read: its first screen too, as a phone shows it
        page.screenshot(path=RESULTS / f"every-{name}-{page.size}-top.png")
    overflow = horizontal_overflow(page)
    problems = [f"{name}: scrolls sideways by {overflow} px"] if overflow > 0 else []
    return problems + [f"{name}: {violation}" for violation in axe_violations(page)]


@pytest.fixture
def ada(make_user, allow_simulator):
    """A staff member with a model of her own that was tested once."""
    user = make_user("ada", tier="pro", is_staff=True, is_superuser=True)
    mine = own_model(user, base_url=allow_simulator, slug="mine", display_name="My model")
    model_test_start(user_model=mine, requested_by=user)  # eager: a finished test in the history
    return user


def problems_on(page, pages: list[tuple[str, str, str]]) -> list[str]:
    problems = []
    for name, path, shown in pages:
        page.goto(path)
        expect(page.locator(shown).first if "(" in shown else page.get_by_text(shown).first).to_be_visible()
        problems += problems_of(page, name)
    return problems


def test_it_shows_the_login_and_every_users_page_tidy_and_accessible(sized_page, ada):
    sized_page.goto("/accounts/login/")
    expect(sized_page.get_by_role("button", name="Log in")).to_be_visible()
    problems = problems_of(sized_page, "login")
    log_in(sized_page, ada)
    problems += problems_on(sized_page, USER_PAGES)
    assert not problems, "\n".join(problems)


def test_it_shows_the_api_docs_offline_tidy_and_accessible(sized_page, ada):
    log_in(sized_page, ada)
    problems = problems_on(sized_page, DOC_PAGES)
    assert not problems, "\n".join(problems)


def test_it_shows_admin_tidy_and_accessible(sized_page, ada, registry, api_key_for, live_hub):
    with httpx2.Client(base_url=live_hub, headers={"Authorization": f"Bearer {api_key_for(ada)}"}) as api:
        assert api.post("/api/generate/", json={"prompt": "hi", "model": "demo"}).status_code == 200
    usage_rows(1)
    model_test_start(llm_model=LLMModel.objects.get(public_id="demo"), requested_by=ada)
    demo = LLMModel.objects.get(public_id="demo").pk
    log_in(sized_page, ada)
    problems = problems_on(sized_page, [(name, path.format(demo=demo), shown) for name, path, shown in ADMIN_PAGES])
    assert not problems, "\n".join(problems)
    if sized_page.size == "desktop":  # every column of the lists in view at 1280 px, none behind a sideways scroll
        for path in ("/admin/registry/llmmodel/", "/admin/usage/usagelog/"):
            sized_page.goto(path)
            assert sized_page.evaluate("() => { const table = document.getElementById('result_list');"
                                       " return table.scrollWidth <= table.parentElement.clientWidth; }"), path


def test_it_folds_the_header_into_a_menu_on_a_phone_and_shows_the_focus(page, phone, ada):
    log_in(phone, ada)
    links = phone.get_by_role("navigation", name="Main")
    menu = phone.get_by_role("button", name="Menu")
    expect(links.get_by_role("link", name="Playground")).to_be_hidden()
    expect(menu).to_have_attribute("aria-expanded", "false")
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    playground = links.get_by_role("link", name="Playground")
    expect(playground).to_be_visible()
    assert playground.bounding_box()["width"] > 300  # a whole line to tap, not a word
    phone.keyboard.press("Escape")
    expect(playground).to_be_hidden()
    expect(menu).to_be_focused()
    menu.click()
    playground.click()
    expect(phone).to_have_url(re.compile(r"/playground/$"))

    log_in(page, ada)
    expect(page.get_by_role("button", name="Menu")).to_be_hidden()
    desktop_link = page.get_by_role("navigation", name="Main").get_by_role("link", name="Playground")
    expect(desktop_link).to_be_visible()
    desktop_link.focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")  # focus from the keyboard: the ring shows
    ring = desktop_link.evaluate("element => getComputedStyle(element).outline")
    assert re.fullmatch(r"rgb\(26, 63, 184\) solid 3px", ring), ring
    screenshot(page, "focus-ring-desktop")
    icon = page.request.get("/favicon.ico")  # asked for by browsers on pages that name no icon (JSON answers)
    assert icon.ok and icon.url.endswith("/llmhub/favicon.svg") and icon.headers["content-type"] == "image/svg+xml"
