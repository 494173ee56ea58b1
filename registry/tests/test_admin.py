"""The Django admin: the demo admin, editing models, filters, search, bulk actions, hub API keys."""

import io
import re

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from llmhub.crypto import secret_decrypt
from llmhub.errors import NotFound
from registry.models import ApiKey, LLMModel, Provider, Tier, UserProfile
from registry.selectors import get_model_by_id, registry_get
from registry.services import api_key_hash, secret_assign
from registry.tests.admin_forms import admin_post

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/registry/llmmodel/"


def change_url(instance) -> str:
    return f"/admin/{instance._meta.app_label}/{instance._meta.model_name}/{instance.pk}/change/"


def listed(client: Client, query: str = "") -> set[str]:
    response = client.get(CHANGELIST + query)
    assert response.status_code == 200
    return {model.public_id for model in response.context["cl"].result_list}


def api_client(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


@pytest.fixture
def demo_admin(registry) -> tuple[str, str, str]:
    """`ensure_demo_user`'s username, password and API key, read from what it prints."""
    out = io.StringIO()
    call_command("ensure_demo_user", stdout=out)
    printed = out.getvalue()
    username, password = re.search(r"username '([^']+)', password '([^']+)'", printed).groups()
    raw_key = re.search(r"API key \(shown once\): (\S+)", printed).group(1)
    return username, password, raw_key


@pytest.fixture
def demo_client(demo_admin) -> Client:
    username, password, _ = demo_admin
    client = Client()
    response = client.post("/admin/login/?next=/admin/", {"username": username, "password": password, "next": "/admin/"})
    assert response.status_code == 302
    assert response.url == "/admin/"
    return client


def test_it_creates_a_demo_admin_whose_printed_password_logs_in(demo_client, demo_admin):
    response = demo_client.get("/admin/")

    assert response.status_code == 200
    assert response.context["user"].username == demo_admin[0]
    assert response.context["user"].is_superuser
    assert b"LLM models" in response.content


def test_it_gives_the_demo_admin_the_top_tier_and_a_working_api_key(demo_admin):
    response = api_client(demo_admin[2]).get("/api/models/")

    assert response.status_code == 200
    assert response.json()["tier"]["slug"] == "enterprise"


def test_it_creates_the_demo_admin_only_once(demo_admin):
    username, password, _ = demo_admin
    out = io.StringIO()

    call_command("ensure_demo_user", stdout=out)

    assert "exists" in out.getvalue()
    assert password not in out.getvalue()
    assert get_user_model().objects.filter(username=username).count() == 1
    assert get_user_model().objects.get(username=username).check_password(password)
    assert ApiKey.objects.filter(user__username=username).count() == 1


def test_it_refuses_a_wrong_password_and_a_non_staff_user(demo_admin, make_user):
    make_user("mallory", tier="free")

    for username, password in ((demo_admin[0], "wrong"), ("mallory", "pw-mallory")):
        client = Client()
        response = client.post("/admin/login/", {"username": username, "password": password, "next": "/admin/"})
        assert response.status_code == 200
        assert client.get("/admin/").status_code == 302


def test_it_lets_the_admin_edit_a_model_and_keeps_its_key_when_the_field_is_blank(demo_client):
    model = LLMModel.objects.get(public_id="demo-pro")
    secret_assign(model, "sk-admin-edit-key-123456")
    model.save()
    free = Tier.objects.get(slug="free")

    response = admin_post(
        demo_client, change_url(model),
        display_name="Demo Pro, edited", context_window="65536",
        allowed_tiers=[free.pk, *model.allowed_tiers.values_list("pk", flat=True)],
        supports_vision="on", api_key="",
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    model.refresh_from_db()
    assert model.display_name == "Demo Pro, edited"
    assert model.context_window == 65536
    assert model.supports_vision
    assert secret_decrypt(model.api_key_encrypted) == "sk-admin-edit-key-123456"
    spec = get_model_by_id("demo-pro")
    assert spec.display_name == "Demo Pro, edited"
    assert "free" in spec.allowed_tiers
    assert "vision" in spec.capabilities
    assert spec.api_key == "sk-admin-edit-key-123456"


def test_it_lets_the_admin_serve_a_model_on_the_responses_api(demo_client):
    model = LLMModel.objects.get(public_id="demo-pro")

    response = admin_post(demo_client, change_url(model), api="responses")

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert get_model_by_id("demo-pro").api == "responses"
    assert admin_post(demo_client, change_url(model), api="grpc").status_code == 200  # the form's error


@pytest.mark.parametrize(("public_id", "accepted"), [("deepseek-v3.2", True), ("gpt 4.1", False), ("-x", False)])
def test_it_lets_the_admin_save_a_model_id_with_dots_as_the_fixture_does(demo_client, public_id, accepted):
    model = LLMModel.objects.get(public_id="deepseek-v3.2")

    response = admin_post(demo_client, change_url(model), public_id=public_id, display_name="DeepSeek, edited")

    assert response.status_code == (302 if accepted else 200), response.context and response.context["adminform"].form.errors
    model.refresh_from_db()
    assert (model.display_name == "DeepSeek, edited") is accepted
    if not accepted:
        assert "public_id" in response.context["adminform"].form.errors


def test_it_lets_the_admin_edit_a_models_fallbacks(demo_client):
    model = LLMModel.objects.get(public_id="demo-pro")
    backup = LLMModel.objects.get(public_id="demo-backup")
    assert get_model_by_id("demo-pro").fallbacks == ("demo", "demo-backup")

    response = admin_post(demo_client, change_url(model), **{"fallback_links-0-DELETE": "on"})

    assert response.status_code == 302
    assert get_model_by_id("demo-pro").fallbacks == ("demo-backup",)
    assert list(model.fallback_links.values_list("fallback", flat=True)) == [backup.pk]


def test_it_lets_the_admin_add_a_model(demo_client):
    url = "/admin/registry/llmmodel/add/"
    local = Provider.objects.get(slug="local")

    response = admin_post(
        demo_client, url, public_id="demo-new", display_name="Demo new", upstream_model="demo-new", provider=local.pk,
        allowed_tiers=[Tier.objects.get(slug="pro").pk], api_key="sk-brand-new-key-0001",
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    spec = get_model_by_id("demo-new")
    assert spec.allowed_tiers == ("pro",)
    assert spec.api_key == "sk-brand-new-key-0001"
    assert LLMModel.objects.get(public_id="demo-new").api_key_last4 == "0001"


def test_it_refuses_extra_headers_that_are_not_a_mapping_of_strings(demo_client):
    provider = Provider.objects.get(slug="local")

    # Not a mapping of strings; then what an HTTP header cannot carry (a line break, non-ASCII, a bad name).
    for bad in ('"x-team: a"', '["x-team"]', '{"x-team": 1}', '{"x-team": "a\\r\\nX-Evil: 1"}',
                '{"x-team": "\u00e9quipe"}', '{"x team": "a"}', '{"": "a"}'):
        response = admin_post(demo_client, change_url(provider), extra_headers=bad)
        assert response.status_code == 200, bad
        assert "extra_headers" in response.context["adminform"].form.errors

    provider.refresh_from_db()
    assert provider.extra_headers == {}
    assert admin_post(demo_client, change_url(provider), extra_headers='{"X-Team": "a"}').status_code == 302
    assert get_model_by_id("demo").headers == {"X-Team": "a"}


@pytest.mark.parametrize(("query", "expected"), [
    ("?enabled__exact=1", {"gpt-5-pro", "deepseek-v3.2", "qwen3-coder-plus", "kimi-k2-0905", "demo-pro", "demo-premium",
                           "demo-embed"}),
    ("?kind__exact=embedding", {"demo-embed"}),
    ("?enabled__exact=0", {"demo", "demo-backup"}),
    ("?q=kimi", {"kimi-k2-0905"}),
    ("?q=demo-pr", {"demo-pro", "demo-premium"}),
    ("?q=deepseek-chat", {"deepseek-v3.2"}),
])
def test_it_filters_by_enabled_and_searches(demo_client, query, expected):
    LLMModel.objects.filter(public_id__in=["demo", "demo-backup"]).update(enabled=False)

    assert listed(demo_client, query) == expected


def test_it_filters_by_provider(demo_client):
    local = Provider.objects.get(slug="local")

    assert listed(demo_client, f"?provider__id__exact={local.pk}") == {"demo", "demo-backup", "demo-pro", "demo-premium",
                                                                       "demo-embed"}


@pytest.mark.parametrize(("tier", "expected"), [
    ("free", {"deepseek-v3.2", "demo", "demo-backup", "demo-embed"}),
    ("premium", {"gpt-5-pro", "deepseek-v3.2", "qwen3-coder-plus", "kimi-k2-0905", "demo", "demo-backup", "demo-pro",
                 "demo-premium", "demo-embed"}),
])
def test_it_filters_by_tier(demo_client, tier, expected):
    tier_pk = Tier.objects.get(slug=tier).pk

    assert listed(demo_client, f"?allowed_tiers__id__exact={tier_pk}") == expected


def test_it_combines_filters_and_search(demo_client):
    local = Provider.objects.get(slug="local")
    pro = Tier.objects.get(slug="pro")

    assert listed(demo_client, f"?provider__id__exact={local.pk}&allowed_tiers__id__exact={pro.pk}&q=backup") == {
        "demo-backup"
    }


def test_it_disables_and_enables_selected_models_in_bulk(demo_client):
    selected = list(LLMModel.objects.filter(public_id__in=["demo", "demo-pro"]).values_list("pk", flat=True))
    assert get_model_by_id("demo")

    response = demo_client.post(CHANGELIST, {"action": "disable_models", "_selected_action": selected}, follow=True)

    assert response.status_code == 200
    assert "Disabled 2 model(s)." in [str(message) for message in response.context["messages"]]
    assert not LLMModel.objects.filter(pk__in=selected, enabled=True).exists()
    for model_id in ("demo", "demo-pro"):
        with pytest.raises(NotFound):
            get_model_by_id(model_id)
    assert registry_get().models["demo-backup"].enabled

    response = demo_client.post(CHANGELIST, {"action": "enable_models", "_selected_action": selected}, follow=True)

    assert "Enabled 2 model(s)." in [str(message) for message in response.context["messages"]]
    assert get_model_by_id("demo").enabled
    assert get_model_by_id("demo-pro").enabled


def test_it_creates_an_api_key_in_the_admin_and_shows_it_once(demo_client, make_user):
    owner = make_user("dave", tier="pro")

    response = demo_client.post("/admin/registry/apikey/add/", {"user": owner.pk, "name": "laptop"})

    assert response.status_code == 200
    raw_key = re.search(r'<code id="new-api-key"[^>]*>([^<]+)</code>', response.content.decode()).group(1)
    api_key = ApiKey.objects.get(user=owner)
    assert api_key.key_hash == api_key_hash(raw_key)
    assert api_key.name == "laptop"
    assert api_client(raw_key).get("/api/models/").json()["tier"]["slug"] == "pro"
    entry = LogEntry.objects.get(action_flag=ADDITION, content_type__model="apikey")
    assert entry.object_id == str(api_key.pk)
    for page in ("/admin/registry/apikey/", change_url(api_key), f"/admin/registry/apikey/{api_key.pk}/history/"):
        html = demo_client.get(page).content.decode()
        assert raw_key not in html
        assert api_key.prefix in html


def test_it_does_not_let_the_admin_hand_a_key_to_another_user(demo_client, make_user, api_key_for):
    owner, other = make_user("erin", tier="free"), make_user("frank", tier="enterprise")
    raw_key = api_key_for(owner)
    api_key = ApiKey.objects.get(user=owner)

    html = demo_client.get(change_url(api_key)).content.decode()
    response = admin_post(demo_client, change_url(api_key), user=other.pk, name="renamed")  # with the limits inline

    assert 'name="user"' not in html
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert (api_key.user, api_key.name) == (owner, "renamed")
    assert api_client(raw_key).get("/api/models/").json()["tier"]["slug"] == "free"


def test_it_sets_a_keys_expiry_in_the_admin_and_the_key_is_refused_from_then_on(demo_client, make_user, api_key_for):
    client = api_client(api_key_for(make_user("ivy", tier="free")))
    api_key = ApiKey.objects.get(user__username="ivy")
    assert client.get("/api/models/").status_code == 200  # remembered by this process from now on

    response = admin_post(demo_client, change_url(api_key), expires_at_0="2020-01-01", expires_at_1="00:00:00")

    assert response.status_code == 302
    assert ApiKey.objects.get(pk=api_key.pk).expires_at is not None
    refused = client.get("/api/models/")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "api_key_expired"


def test_it_revokes_selected_keys(demo_client, make_user, api_key_for):
    raw_key = api_key_for(make_user("gina", tier="free"))
    client = api_client(raw_key)
    assert client.get("/api/models/").status_code == 200

    response = demo_client.post("/admin/registry/apikey/", {
        "action": "revoke_keys", "_selected_action": list(ApiKey.objects.values_list("pk", flat=True)),
    })

    assert response.status_code == 302
    assert client.get("/api/models/").status_code == 401


def test_it_changes_a_users_tier_in_the_admin(demo_client, make_user, api_key_for):
    user = make_user("hank", tier="free")
    client = api_client(api_key_for(user))
    assert client.get("/api/models/demo-premium/").status_code == 403
    premium = Tier.objects.get(slug="premium")

    response = admin_post(demo_client, change_url(user), **{"llm_profile-0-tier": premium.pk})

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert UserProfile.objects.get(user=user).tier == premium
    assert client.get("/api/models/demo-premium/").status_code == 200


def test_it_filters_users_by_tier(demo_client, make_user):
    make_user("ivy", tier="pro")
    make_user("jack", tier="free")

    response = demo_client.get(f"/admin/auth/user/?llm_profile__tier__id__exact={Tier.objects.get(slug='pro').pk}")

    assert response.status_code == 200
    assert {user.username for user in response.context["cl"].result_list} == {"ivy"}


def test_it_renders_the_key_field_as_an_empty_password_input(demo_client):
    provider, model = Provider.objects.get(slug="openai"), LLMModel.objects.get(public_id="demo")
    for instance in (provider, model):
        secret_assign(instance, "sk-rendered-never-9876")
        instance.save()

    for instance in (provider, model):
        html = demo_client.get(change_url(instance)).content.decode()
        inputs = re.findall(r'<input[^>]*name="api_key"[^>]*>', html)
        assert len(inputs) == 1
        assert 'type="password"' in inputs[0]
        assert "value=" not in inputs[0]
        assert "sk-rendered-never-9876" not in html
        assert "9876" in html  # the last 4 characters tell which key is stored


@pytest.mark.parametrize("page", [
    "/admin/registry/tier/", "/admin/registry/provider/", "/admin/registry/llmmodel/", "/admin/registry/apikey/",
    "/admin/auth/user/", "/admin/registry/llmmodel/add/", "/admin/registry/provider/add/", "/admin/registry/apikey/add/",
])
def test_it_serves_every_registry_admin_page(demo_client, page):
    assert demo_client.get(page).status_code == 200
