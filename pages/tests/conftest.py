import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.conf import settings
from django.db import connections
from django.test import Client

from health.models import ModelTest
from health.status import health_flush, health_reset
from llmhub.celery import app
from registry.models import UserLLMConfig
from registry.services import secret_assign

# Any 32 letters are a valid CSRF secret: a test sends the same one as cookie and header, as the pages' script does.
CSRF_TOKEN = "pagestestcsrftoken0123456789abcd"
OWN_KEY = "sk-own-model-key-of-pages-1234"


@pytest.fixture(autouse=True)
def _fresh_health(django_db_blocker):
    # Live counters are per process: a status one test drove down must not colour the next one's dots. This
    # fixture outlives the test's database access: the writer thread's last save may still need it.
    health_reset()
    yield
    with django_db_blocker.unblock():
        health_flush()
    health_reset()


@pytest.fixture
def allow_simulator(settings, simulated_upstream) -> str:
    """Users' base URLs may reach the session's simulated upstream (and nothing else local)."""
    settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": [f"127.0.0.1:{simulated_upstream.port}"]}
    return simulated_upstream.base_url


@pytest.fixture
def page_client(client) -> Callable[..., Client]:
    """A Django test client logged in as `user`."""

    def make(user) -> Client:
        client.force_login(user)
        return client

    return make


@pytest.fixture
def http_as(live_hub) -> Callable[..., httpx2.Client]:
    """A real HTTP client of the live hub, logged in as `user` (a session cookie) with a CSRF token."""
    clients = []

    def make(user) -> httpx2.Client:
        login = Client()
        login.force_login(user)
        http = httpx2.Client(base_url=live_hub, timeout=30, headers={"X-CSRFToken": CSRF_TOKEN},
                             cookies={"sessionid": login.cookies["sessionid"].value, "csrftoken": CSRF_TOKEN})
        clients.append(http)
        return http

    yield make
    for http in clients:
        http.close()


def own_model(owner, *, base_url: str, slug: str = "mine", upstream_model: str = "demo", key: str = OWN_KEY,
              **fields) -> UserLLMConfig:
    model = UserLLMConfig(owner=owner, slug=slug, display_name=fields.pop("display_name", slug.title()),
                          upstream_model=upstream_model, base_url=base_url, **fields)
    secret_assign(model, key)
    model.save()
    return model


@pytest.fixture
def celery_worker(transactional_db, _celery_worker_thread) -> Iterator[None]:
    """A real Celery worker in a thread, on the configured broker (in memory when embedded, Redis under CI): a
    connectivity test is queued, then running, then finished, as under `make run`, rather than run inside the
    request that starts it."""
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = False
    try:
        yield
        tests_wait_finished()
    finally:
        app.conf.task_always_eager = eager


@pytest.fixture(scope="module")
def _celery_worker_thread() -> Iterator[None]:
    """The worker of `celery_worker`, one for a module's tests: stopping one takes seconds. Between tests it is idle
    (each test waits for its connectivity tests to finish)."""
    # The worker's threads must not keep database sessions open: the test database is dropped at the end.
    task_postrun.connect(_connections_close, dispatch_uid="pages-test-worker")
    try:
        app.control.purge()  # messages left by earlier runs name rows that do not exist here
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=30):
            yield
    finally:
        task_postrun.disconnect(dispatch_uid="pages-test-worker")


def _connections_close(**kwargs) -> None:
    connections.close_all()


FINISHED = (ModelTest.State.SUCCEEDED, ModelTest.State.FAILED)


def tests_wait_finished(timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while ModelTest.objects.exclude(state__in=FINISHED).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


# --- Browser tests: Debian's headless Chromium through Playwright, one browser per module ----------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
RESULTS = Path(settings.BASE_DIR) / "test-results"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# axe-core from npm (`npm pack axe-core@4.14.1`), injected by the tests only: the pages never serve it.
AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"
# Generous waits: the machine may be busy with other test runs; a passing check returns as soon as it holds.
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser():
    # Sync Playwright drives its event loop from this thread (in a greenlet), so Django takes the test thread for
    # an async context and refuses its ORM calls (the tests' own, and the database flush after each test). They
    # are plain synchronous calls: the guard is lifted for this module only, and only once Playwright runs.
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright, pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _page_open(browser, live_hub: str, viewport: dict[str, int]):
    """A page of a fresh context that reaches only the app: any other address is refused (the pages, the docs and
    the admin must work offline), and the test fails naming it."""
    context = browser.new_context(base_url=live_hub, viewport=viewport)
    context.set_default_timeout(TIMEOUT_MS)
    app = urlsplit(live_hub).netloc
    errors: list[str] = []

    def only_the_app(route) -> None:
        if urlsplit(route.request.url).netloc == app:
            route.continue_()
        else:
            errors.append(f"request outside the app: {route.request.url}")
            route.abort()

    context.route(re.compile(r"^(https?|wss?)://"), only_the_app)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    # A form answered 400 is logged as a failed load, and what a page's own Content-Security-Policy refuses as a
    # refusal: anything else in the console is a bug of the page.
    page.on("console", lambda message: message.type == "error" and not message.text.startswith(
        "Failed to load resource") and "violates the following Content Security Policy" not in message.text
        and errors.append(message.text))
    return context, page, errors


@pytest.fixture
def page(browser, live_hub):
    """A desktop page (1280x800)."""
    context, page, errors = _page_open(browser, live_hub, DESKTOP)
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture
def phone(browser, live_hub):
    """A phone-sized page (390x844)."""
    context, page, errors = _page_open(browser, live_hub, PHONE)
    yield page
    context.close()
    assert not errors, errors


def screenshot(page, name: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    page.screenshot(path=RESULTS / f"{name}.png", full_page=True)


def log_in(page, user, *, shot: str | None = None) -> None:
    from playwright.sync_api import expect

    page.goto("/models/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/models/$"))
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill("pw-" + user.username)
    if shot:
        screenshot(page, shot)
    page.get_by_label("Password").press("Enter")
    expect(page).to_have_url(re.compile(r"/models/$"))


def mark_page(page) -> None:
    """A reload would lose this mark: `assert_not_reloaded` checks it is still there."""
    page.evaluate("window.__llmhubMark = 'kept'")


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__llmhubMark") == "kept"


def dot(page, ref: str):
    return page.locator(f'.status[data-status-ref="{ref}"]').first


def axe_violations(page, *, impacts: tuple[str, ...] = ("serious", "critical")) -> list[str]:
    """axe-core's violations of the page as it is now, of the given impacts: one line each, with the elements."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=AXE.read_text())
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ["violations"]})).violations.map(
        v => ({id: v.id, impact: v.impact, help: v.help,
               nodes: v.nodes.slice(0, 8).map(n => n.target.join(" ") + " (" + (n.any[0]?.message || "") + ")")}))""")
    return [f"{v['impact']} {v['id']}: {v['help']} at {v['nodes']}" for v in found if v["impact"] in impacts]


def horizontal_overflow(page) -> int:
    """How many pixels the page is wider than the window (0: it never scrolls sideways)."""
    return page.evaluate("() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
                         " - window.innerWidth")


@pytest.fixture(params=["desktop", "phone"])
def sized_page(request, browser, live_hub):
    """The test once at 1280x800 and once at 390x844; `sized_page.size` names which."""
    context, page, errors = _page_open(browser, live_hub, DESKTOP if request.param == "desktop" else PHONE)
    page.size = request.param
    yield page
    context.close()
    assert not errors, errors
