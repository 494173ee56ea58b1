import pytest
import redis
from django.db import InterfaceError, OperationalError
from django.test import Client
from django.urls import path
from rest_framework.views import APIView

from llmhub import urls


@pytest.mark.parametrize("path", ["/api/models/a%2fb/extra/", "/api/no-such-route/"])
def test_it_answers_an_unknown_api_route_with_the_json_error_shape(client, db, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not found."}}


def test_it_keeps_the_html_404_for_pages(client, db):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


# A dependency that does not answer is a 503 the client may retry, never a bare 500: whichever renderer answers.
def _database_gone(request):
    raise OperationalError("the connection is closed")


def _redis_gone(request):
    raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


class _DatabaseGoneApi(APIView):
    permission_classes = []

    def get(self, request):
        raise InterfaceError("connection already closed")


urlpatterns = [
    path("api/outage/django/", _database_gone),
    path("api/outage/redis/", _redis_gone),
    path("api/outage/drf/", _DatabaseGoneApi.as_view()),
    path("outage/page/", _database_gone),
    *urls.urlpatterns,
]
handler500 = urls.server_error


@pytest.mark.urls("llmhub.tests.test_error_pages")
@pytest.mark.parametrize(("path", "code"), [("/api/outage/django/", "database_unavailable"),
                                            ("/api/outage/redis/", "cache_unavailable"),
                                            ("/api/outage/drf/", "database_unavailable")])
def test_it_answers_503_with_retry_after_when_a_dependency_is_down(db, path, code):
    response = Client(raise_request_exception=False).get(path)

    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1
    assert response.json()["error"]["code"] == code


@pytest.mark.urls("llmhub.tests.test_error_pages")
def test_it_answers_a_page_503_with_retry_after_when_the_database_is_down(db):
    response = Client(raise_request_exception=False).get("/outage/page/")

    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1
    assert "unavailable" in response.content.decode()


# --- The DEBUG page never shows a stored key (issue 16, item 15) ---------------------------------------------

PLANTED = "sk-planted-canary-5f0c2a9e77d1"


def test_it_never_shows_a_stored_key_on_the_debug_page(live_hub, make_user, settings, simulated_upstream,
                                                       monkeypatch):
    import httpx2
    from django.test import Client

    from registry.models import UserLLMConfig
    from registry.services import secret_assign

    settings.DEBUG = True
    settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": [f"127.0.0.1:{simulated_upstream.port}"]}
    owner = make_user("owner", tier="free")
    model = UserLLMConfig(owner=owner, slug="planted", display_name="Planted", upstream_model="demo",
                          base_url=simulated_upstream.base_url)
    secret_assign(model, PLANTED)  # the stored key, decrypted in the frames of the failing call
    model.save()

    async def broken_send(self, request, **kwargs):  # the transport failing unexpectedly (not llmhub's code)
        raise RuntimeError("unplanned failure inside the HTTP client")

    monkeypatch.setattr(httpx2.AsyncClient, "send", broken_send)
    login = Client()
    login.force_login(owner)
    token = "pagestestcsrftoken0123456789abcd"
    # The key also travels in the request: an Authorization header and a posted field, as a confused client sends.
    response = httpx2.post(f"{live_hub}/playground/stream/", timeout=20,
                           data={"task": "generation", "prompt": "hi", "model": "planted", "api_key": PLANTED},
                           headers={"X-CSRFToken": token, "Authorization": f"Bearer {PLANTED}"},
                           cookies={"sessionid": login.cookies["sessionid"].value, "csrftoken": token})

    assert response.status_code == 500
    assert "RuntimeError" in response.text and "Traceback" in response.text  # the DEBUG page itself
    assert PLANTED not in response.text
    assert PLANTED[3:] not in response.text and PLANTED[-12:] not in response.text
