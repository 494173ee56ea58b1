import time
from collections.abc import Callable, Iterator

import httpx2
import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.db import connections
from django.test import Client

from llmhub.celery import app
from registry.health import health_flush, health_reset
from registry.models import ModelTest, UserLLMConfig
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
def celery_worker(transactional_db) -> Iterator[None]:
    """A real Celery worker in a thread, on the configured broker (in memory when embedded, Redis under CI): a
    connectivity test is queued, then running, then finished, as under `make run`, rather than run inside the
    request that starts it."""
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = False
    # The worker's threads must not keep database sessions open: the test database is dropped at the end.
    task_postrun.connect(_connections_close, dispatch_uid="pages-test-worker")
    try:
        app.control.purge()  # messages left by earlier runs name rows that do not exist here
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=30):
            yield
            tests_wait_finished()
    finally:
        task_postrun.disconnect(dispatch_uid="pages-test-worker")
        app.conf.task_always_eager = eager


def _connections_close(**kwargs) -> None:
    connections.close_all()


FINISHED = (ModelTest.State.SUCCEEDED, ModelTest.State.FAILED)


def tests_wait_finished(timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while ModelTest.objects.exclude(state__in=FINISHED).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
