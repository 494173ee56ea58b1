from collections.abc import Callable

import httpx2
import pytest
from django.test import Client

from registry.health import health_flush, health_reset
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
