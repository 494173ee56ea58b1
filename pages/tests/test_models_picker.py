"""/models/: every model grouped by provider, the ones above the tier greyed; the defaults form saves preferences
through the API's serializer and service, refuses what they refuse, and the API uses the choice at once."""

import re

import pytest

from health.status import health_note
from pages.tests.conftest import own_model
from registry.models import UserModelPreferences
from registry.selectors import registry_get

pytestmark = pytest.mark.django_db


def rows(html: str) -> dict[str, str]:
    """The model rows of a page by ref, each as its HTML."""
    return dict(re.findall(r'<tr data-model-ref="([^"]+)"(.*?)</tr>', html, flags=re.S))


def test_it_lists_every_model_grouped_by_provider_greying_the_ones_above_the_tier(registry, make_user, page_client,
                                                                                  allow_simulator):
    user = make_user("fred", tier="free")
    own_model(user, base_url=allow_simulator, slug="mine", display_name="My model")

    html = page_client(user).get("/models/").content.decode()

    shown = rows(html)
    enabled = [model for model in registry_get().models.values() if model.enabled]
    assert set(shown) == {f"registry/{model.id}" for model in enabled} | {"mine/mine"}
    for model in enabled:
        row = shown[f"registry/{model.id}"]
        assert model.display_name in row
        assert (f"Requires {model.required_tier.name}" in row) != (model.required_tier.slug == "free")
        assert row.startswith(' class="locked"') != (model.required_tier.slug == "free")
    assert "Requires" not in shown["mine/mine"]
    for provider in ("OpenAI", "DeepSeek", "Simulated upstream (local)", "Your models"):
        assert f'<th colspan="6" scope="colgroup" class="provider">{provider}</th>' in html
    demo = shown["registry/demo"]
    assert "8,192" in demo and "$0.50 / $1.50" in demo and '<span class="cap">streaming</span>' in demo
    assert 'data-status="unknown" title="Unknown · never checked"' in demo
    # The greyed models cannot be chosen in the defaults form; the others show their status and price.
    assert re.search(r'<option value="demo-premium" disabled [^>]*>Demo Premium \(simulated\) · requires Premium<', html)
    assert re.search(r'<option value="demo" [^>]*>Demo \(simulated\) · unknown · \$0.50 / \$1.50<', html)


def test_it_saves_the_defaults_and_the_api_uses_them_at_once(registry, make_user, page_client, client_for):
    user = make_user("fred", tier="pro")
    api = client_for(user)
    assert api.get("/api/models/").json()["default_model"] == "demo-pro"

    response = page_client(user).post("/models/", {
        "default_model": "demo-backup", "task_defaults.generation": "", "task_defaults.translation": "demo",
        "task_defaults.code": "qwen3-coder-plus"})

    assert response.status_code == 302 and response["Location"] == "/models/"
    preferences = UserModelPreferences.objects.get(user=user)
    assert preferences.default_model == "demo-backup"
    assert preferences.task_defaults == {"translation": "demo", "code": "qwen3-coder-plus"}
    assert api.get("/api/models/").json()["default_model"] == "demo-backup"
    assert api.post("/api/generate/", {"prompt": "hi"}, format="json").json()["model"] == "demo-backup"
    page = page_client(user).get("/models/").content.decode()
    assert "Your defaults are saved." in page
    assert '<span class="badge">default</span>' in rows(page)["registry/demo-backup"]
    assert '<option value="demo-backup" selected ' in page


@pytest.mark.parametrize("field", ["default_model", "task_defaults.code"])
def test_it_refuses_a_model_above_the_tier_posted_directly(registry, make_user, page_client, field):
    user = make_user("fred", tier="free")

    response = page_client(user).post("/models/", {field: "demo-premium"})

    assert response.status_code == 400
    assert "requires the Premium tier or higher; your tier is Free." in response.content.decode()
    assert 'aria-invalid="true"' in response.content.decode()
    assert not UserModelPreferences.objects.filter(user=user).exists()


def test_it_refuses_another_users_model_as_unknown(registry, make_user, page_client, allow_simulator):
    own_model(make_user("owner"), base_url=allow_simulator, slug="theirs")
    user = make_user("fred")

    response = page_client(user).post("/models/", {"default_model": "theirs"})

    assert response.status_code == 400
    assert "The model &#x27;theirs&#x27; does not exist." in response.content.decode()


def test_it_reports_every_shown_models_status(registry, make_user, page_client, allow_simulator):
    user = make_user("fred")
    own_model(user, base_url=allow_simulator, slug="off", enabled=False)

    body = page_client(user).get("/models/status/").json()

    assert set(body["models"]) == {f"registry/{model.id}" for model in registry.models.values() if model.enabled} | {
        "mine/off"}
    assert body["models"]["registry/demo"] == {"status": "unknown", "title": "Unknown · never checked"}


def test_it_asks_before_saving_a_default_that_is_down(registry, make_user, page_client):
    user = make_user("fred", tier="pro")
    for _ in range(3):  # three failures in a row: Down
        health_note(registry.models["demo-backup"], ok=False)
    choice = {"default_model": "demo-backup", "task_defaults.translation": "demo"}

    response = page_client(user).post("/models/", choice)

    html = response.content.decode()
    assert response.status_code == 200 and "data-down-warning" in html
    assert "<strong>Demo backup (simulated) is down</strong>." in html
    assert '<button type="submit" name="confirm_down" value="1"' in html
    assert '<option value="demo-backup" selected ' in html  # the choice is kept for the second click
    assert not UserModelPreferences.objects.filter(user=user).exists()

    response = page_client(user).post("/models/", {**choice, "confirm_down": "1"})

    assert response.status_code == 302
    assert UserModelPreferences.objects.get(user=user).default_model == "demo-backup"
