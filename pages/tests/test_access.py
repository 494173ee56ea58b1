"""Every page needs a login except the login page itself; every form needs its CSRF token."""

import pytest
from django.test import Client
from django.urls import reverse

from pages.urls import urlpatterns

pytestmark = pytest.mark.django_db

SAMPLE_ARGUMENTS = {"kind": "registry", "model_id": "demo", "test_id": 1, "key_id": 1, "request_id": "req_1", "experiment_id": 1}
PUBLIC = {"login", "logout"}


def page_urls(*, public: bool) -> list[str]:
    """Every URL of the pages app (with sample arguments), so a page added later is covered too."""
    urls = []
    for pattern in urlpatterns:
        if (pattern.name in PUBLIC) != public:
            continue
        kwargs = {name: SAMPLE_ARGUMENTS[name] for name in pattern.pattern.regex.groupindex}
        urls.append(reverse(f"pages:{pattern.name}", kwargs=kwargs))
    return urls


PRIVATE_URLS = page_urls(public=False)


def test_it_covers_every_page():
    assert {"/", "/models/", "/models/mine/", "/playground/", "/playground/stream/", "/models/status/", "/keys/",
            "/keys/1/revoke/"} <= set(PRIVATE_URLS)


@pytest.mark.parametrize("url", PRIVATE_URLS)
@pytest.mark.parametrize("method", ["get", "post"])
def test_it_sends_a_visitor_to_the_login_page(client, registry, url, method):
    response = getattr(client, method)(url)

    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"


def test_it_serves_the_login_page_to_anyone(client, registry):
    response = client.get("/accounts/login/")

    assert response.status_code == 200
    assert b'name="csrfmiddlewaretoken"' in response.content
    assert b'<label for="id_username">' in response.content


def test_it_logs_in_and_out(client, registry, make_user):
    make_user("ann", tier="pro")

    response = client.post("/accounts/login/", {"username": "ann", "password": "pw-ann"})
    assert response.status_code == 302 and response["Location"] == "/"
    page = client.get("/models/")
    assert page.status_code == 200 and b"Pro tier" in page.content

    assert client.post("/accounts/logout/")["Location"] == "/accounts/login/"
    assert client.get("/models/").status_code == 302


def test_it_refuses_a_wrong_password_on_the_styled_page(client, registry, make_user):
    make_user("ann")

    response = client.post("/accounts/login/", {"username": "ann", "password": "wrong"})

    assert response.status_code == 200
    assert b'class="form-error" role="alert"' in response.content
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize("url", [*PRIVATE_URLS, *page_urls(public=True)])
def test_it_refuses_a_post_without_its_csrf_token(registry, make_user, url):
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("ann", tier="enterprise", is_staff=True))

    response = client.post(url, {"default_model": "demo", "prompt": "hi", "id": "x"})

    assert response.status_code == 403
