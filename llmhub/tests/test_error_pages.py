import pytest


@pytest.mark.parametrize("path", ["/api/models/a%2fb/extra/", "/api/no-such-route/"])
def test_it_answers_an_unknown_api_route_with_the_json_error_shape(client, db, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not found."}}


def test_it_keeps_the_html_404_for_pages(client, db):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


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
