"""/models/mine/: add, edit and delete own models with the API's validation (same messages as /api/models/), the key
write-only, another user's model as absent as a missing one."""

import html
import re

import pytest

from llmhub.crypto import secret_decrypt
from pages.forms import advised
from pages.tests.conftest import OWN_KEY, own_model
from registry.models import UserLLMConfig

pytestmark = pytest.mark.django_db


def form(base_url: str, /, **fields) -> dict[str, str]:
    values = {"id": "mine", "display_name": "My model", "model": "demo", "base_url": base_url, "api_key": OWN_KEY,
              "capabilities.streaming": "on", "context_window": "16000", "input_price_per_million": "1.5",
              "output_price_per_million": "2", "enabled": "on"}
    return {name: value for name, value in {**values, **fields}.items() if value is not None}


def api_body(base_url: str, /, **fields) -> dict:
    """The same input as the API receives it."""
    values = {"id": "mine", "display_name": "My model", "model": "demo", "base_url": base_url, "api_key": OWN_KEY,
              "capabilities": {"streaming": True, "json_mode": False, "tools": False, "vision": False},
              "context_window": 16000, "input_price_per_million": "1.5", "output_price_per_million": "2",
              "enabled": True}
    return {**values, **fields}


def field_errors(content: bytes) -> dict[str, str]:
    """The error under each field of a page: input id → its text."""
    found = re.findall(r'<small class="field-error" id="id_(\w+?)_(?:help|errors)">(.*?)</small>', content.decode(), re.S)
    return {name: html.unescape(text).strip() for name, text in found}


def test_it_adds_an_own_model(registry, make_user, page_client, allow_simulator):
    user = make_user("olga")

    response = page_client(user).post("/models/mine/", form(allow_simulator))

    model = UserLLMConfig.objects.get(owner=user)
    assert response.status_code == 302 and response["Location"] == f"/models/mine/?tested={model.tests.get().pk}"
    assert (model.slug, model.display_name, model.upstream_model, model.base_url) == (
        "mine", "My model", "demo", allow_simulator)
    assert (model.supports_streaming, model.supports_json_mode, model.context_window) == (True, False, 16000)
    assert secret_decrypt(model.api_key_encrypted) == OWN_KEY
    page = page_client(user).get("/models/mine/").content.decode()
    assert "Added My model." in page and 'data-status-ref="mine/mine"' in page
    assert OWN_KEY not in page


@pytest.mark.parametrize(("fields", "api_fields"), [
    ({"base_url": "not a url"}, {"base_url": "not a url"}),
    ({"base_url": "http://10.0.0.1/v1"}, {"base_url": "http://10.0.0.1/v1"}),
    ({"id": "demo"}, {"id": "demo"}),
    ({"id": "has space", "display_name": ""}, {"id": "has space", "display_name": ""}),
    ({"api_key": "sk-abc\ndef"}, {"api_key": "sk-abc\ndef"}),
    ({"context_window": "0", "input_price_per_million": "-1"}, {"context_window": 0, "input_price_per_million": "-1"}),
])
def test_it_shows_the_apis_field_errors(registry, make_user, page_client, client_for, allow_simulator, fields,
                                        api_fields):
    user = make_user("olga")

    response = page_client(user).post("/models/mine/", form(allow_simulator, **fields))
    api = client_for(user).post("/api/models/", api_body(allow_simulator, **api_fields), format="json")

    assert response.status_code == 400
    assert api.status_code == (409 if api_fields.get("id") == "demo" else 400)  # a taken id: a conflict
    expected = {name: " ".join(advised(name, message) for message in messages)
                for name, messages in api.json()["error"]["fields"].items()}
    assert field_errors(response.content) == expected
    assert not UserLLMConfig.objects.exists()
    assert OWN_KEY not in response.content.decode()  # not even the key just typed comes back


def test_it_refuses_a_model_id_the_user_already_has(registry, make_user, page_client, allow_simulator):
    user = make_user("olga")
    own_model(user, base_url=allow_simulator, slug="mine")

    response = page_client(user).post("/models/mine/", form(allow_simulator))

    assert response.status_code == 400
    assert field_errors(response.content) == {"id": "You already have a model 'mine'."}
    assert "data-key-retype" in response.content.decode()  # the key typed is gone: the page says so
    assert UserLLMConfig.objects.count() == 1


def test_it_edits_an_own_model_keeping_the_key_unless_replaced(registry, make_user, page_client, allow_simulator):
    user = make_user("olga")
    model = own_model(user, base_url=allow_simulator, slug="mine")
    client = page_client(user)

    page = client.get("/models/mine/mine/edit/").content.decode()
    assert 'value="Mine"' in page and "Replace API key" in page and OWN_KEY not in page
    assert 'name="api_key" value=""' in page

    response = client.post("/models/mine/mine/edit/", form(allow_simulator, id=None, api_key="", display_name="Renamed",
                                                            enabled=None))
    assert response.status_code == 302
    model.refresh_from_db()
    assert (model.display_name, model.enabled) == ("Renamed", False)
    assert secret_decrypt(model.api_key_encrypted) == OWN_KEY

    client.post("/models/mine/mine/edit/", form(allow_simulator, id=None, api_key="sk-replaced-key-0000"))
    model.refresh_from_db()
    assert secret_decrypt(model.api_key_encrypted) == "sk-replaced-key-0000"


def test_it_requires_the_key_again_with_a_new_base_url(registry, make_user, page_client, allow_simulator):
    user = make_user("olga")
    model = own_model(user, base_url=allow_simulator, slug="mine")

    response = page_client(user).post("/models/mine/mine/edit/", form(allow_simulator + "/other", id=None, api_key=""))

    assert response.status_code == 400
    assert field_errors(response.content) == {"api_key": "Changing the base URL requires entering the API key again."}
    model.refresh_from_db()
    assert model.base_url == allow_simulator


def test_it_deletes_an_own_model_after_asking(registry, make_user, page_client, allow_simulator):
    user = make_user("olga")
    own_model(user, base_url=allow_simulator, slug="mine")
    client = page_client(user)

    confirm = client.get("/models/mine/mine/delete/")
    assert confirm.status_code == 200 and b"Delete Mine?" in confirm.content
    assert UserLLMConfig.objects.exists()

    response = client.post("/models/mine/mine/delete/")

    assert response.status_code == 302 and response["Location"] == "/models/mine/"
    assert not UserLLMConfig.objects.exists()


@pytest.mark.parametrize(("method", "url"), [
    ("get", "/models/mine/theirs/edit/"), ("post", "/models/mine/theirs/edit/"),
    ("get", "/models/mine/theirs/delete/"), ("post", "/models/mine/theirs/delete/"),
    ("get", "/models/mine/theirs/tests/"), ("post", "/models/mine/theirs/tests/"),
])
def test_it_hides_another_users_model(registry, make_user, page_client, allow_simulator, method, url):
    theirs = own_model(make_user("owner"), base_url=allow_simulator, slug="theirs")
    client = page_client(make_user("olga", tier="enterprise", is_staff=True))

    response = getattr(client, method)(url, form(allow_simulator, id=None))

    assert response.status_code == 404
    assert UserLLMConfig.objects.filter(pk=theirs.pk, display_name="Theirs").exists()
    assert "theirs" not in client.get("/models/mine/").content.decode()


def test_it_reports_every_problem_in_one_round_trip_with_advice(registry, make_user, page_client):
    user = make_user("olga")

    response = page_client(user).post("/models/mine/", form("https://169.254.169.254/v1", id="demo", display_name="",
                                                            context_window="0"))

    assert response.status_code == 400
    errors = field_errors(response.content)
    assert set(errors) == {"id", "display_name", "context_window", "base_url"}  # the service's and the serializer's
    assert errors["id"] == "'demo' is the id of a registry model: choose another."
    assert errors["base_url"].startswith("The host '169.254.169.254' is a cloud metadata address.")
    assert errors["base_url"].endswith("use the provider's public URL (e.g. https://api.openai.com/v1).")
    assert not UserLLMConfig.objects.exists()


def test_it_adds_a_model_without_a_key_and_tests_it_at_once(registry, make_user, page_client, allow_simulator):
    user = make_user("olga")
    client = page_client(user)

    response = client.post("/models/mine/", form(allow_simulator, api_key=""))

    model = UserLLMConfig.objects.get(owner=user)
    assert model.api_key_encrypted == ""
    test = model.tests.get()  # eager in tests: already finished
    assert response.status_code == 302 and response["Location"] == f"/models/mine/?tested={test.pk}"
    page = client.get(response["Location"]).content.decode()
    assert f'data-follow-test="/models/tests/{test.pk}/"' in page and "Test succeeded" in page
    assert "none" in re.search(r'<td data-label="Key">(.*?)</td>', page, re.S).group(1)


def test_it_applies_the_capabilities_a_test_detected(registry, make_user, page_client, allow_simulator):
    user = make_user("olga")
    client = page_client(user)
    client.post("/models/mine/", form(allow_simulator))  # streaming only; the simulator does JSON mode and tools too
    model = UserLLMConfig.objects.get(owner=user)
    test = model.tests.get()
    page = client.get(f"/models/mine/?tested={test.pk}").content.decode()
    assert "Apply detected capabilities" in page and "json_mode on, tools on" in page

    response = client.post("/models/mine/mine/capabilities/", {"test": str(test.pk)})

    assert response.status_code == 302
    model.refresh_from_db()
    assert (model.supports_streaming, model.supports_json_mode, model.supports_tools, model.supports_vision) == (
        True, True, True, False)
    assert "Apply detected capabilities" not in client.get(f"/models/mine/?tested={test.pk}").content.decode()


def test_it_lists_the_models_an_endpoint_offers(registry, make_user, page_client, allow_simulator):
    user = make_user("olga")
    client = page_client(user)

    listed = client.post("/models/mine/endpoint-models/", {"base_url": allow_simulator, "api_key": OWN_KEY})
    metadata = client.post("/models/mine/endpoint-models/", {"base_url": "https://169.254.169.254/v1"})
    unreachable = client.post("/models/mine/endpoint-models/", {"base_url": allow_simulator.replace("/v1", "/nope")})

    assert listed.status_code == 200 and {"demo", "demo-backup"} <= set(listed.json()["models"])
    assert metadata.status_code == 400 and "cloud metadata" in metadata.json()["error"]["message"]
    assert unreachable.status_code == 502
    assert unreachable.json()["error"]["message"] == "The endpoint answered HTTP 404 (not found)."
