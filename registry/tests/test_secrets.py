"""Upstream keys are write-only and encrypted at rest; hub API keys are stored hashed."""

import io
import logging

import pytest
from cryptography.fernet import Fernet
from django.apps import apps
from django.core.management import CommandError, call_command
from django.db import connection
from rest_framework.test import APIClient

from conftest import FIXTURE_FILE
from llmhub import crypto
from llmhub.errors import ConfigurationError
from registry.models import ApiKey, LLMModel, Provider, UserLLMConfig
from registry.selectors import get_model_by_id, registry_snapshot
from registry.services import registry_load, secret_assign
from registry.tests.admin_forms import admin_post

pytestmark = pytest.mark.django_db

CANARY = "sk-canary-7f3a9c1e5b2d4f60"
OTHER_CANARY = "sk-canary-other-0c4e8a2b6d1f3e57"
OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()


def admin_url(instance, action: str = "change") -> str:
    return f"/admin/registry/{instance._meta.model_name}/{instance.pk}/{action}/"


def db_cells_containing(needle: str, *, except_columns: frozenset[str] = frozenset()) -> list[str]:
    """Every table.column whose text holds `needle`, found by reading every row of every table."""
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            columns = [column[0] for column in cursor.description]
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    if column in except_columns or value is None:
                        continue
                    text = value.decode(errors="replace") if isinstance(value, bytes | memoryview) else str(value)
                    if needle in text:
                        found.append(f"{table}.{column}")
    return found


def encrypted_models() -> list[type]:
    return [model for model in apps.get_models() if any(f.name == "api_key_encrypted" for f in model._meta.fields)]


@pytest.fixture
def encryption_keys(settings):
    """Sets LLMHUB_ENCRYPTION_KEYS for the test (newest first) and forgets the cached keys afterwards."""

    def use(*keys: str) -> None:
        settings.ENCRYPTION_KEYS = list(keys)
        crypto.reset_cache()

    yield use
    crypto.reset_cache()


@pytest.fixture
def everything_logged(caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("django", "django.db.backends", "django.request", "registry", "llmhub"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.fixture(params=["service", "admin"])
def canaries(request, registry, admin_client):
    """CANARY stored on the `openai` provider (used by gpt-5-pro) and OTHER_CANARY on the `demo` model."""
    provider = Provider.objects.get(slug="openai")
    model = LLMModel.objects.get(public_id="demo")
    if request.param == "service":
        for instance, key in ((provider, CANARY), (model, OTHER_CANARY)):
            secret_assign(instance, key)
            instance.save()
    else:
        for instance, key in ((provider, CANARY), (model, OTHER_CANARY)):
            response = admin_post(admin_client, admin_url(instance), api_key=key)
            assert response.status_code == 302, response.content.decode()
    assert get_model_by_id("gpt-5-pro").api_key == CANARY
    assert get_model_by_id("demo").api_key == OTHER_CANARY
    return request.param


def assert_no_canary(text: str) -> None:
    assert CANARY not in text
    assert OTHER_CANARY not in text


def test_it_never_shows_a_stored_key_in_the_api(everything_logged, canaries, make_user, client_for):
    enterprise = client_for(make_user("boss", tier="enterprise"))
    free = client_for(make_user("newbie", tier="free"))
    browser = APIClient()
    browser.force_login(make_user("browser", tier="enterprise"))
    responses = [
        enterprise.get("/api/models/"),
        enterprise.get("/api/models/gpt-5-pro/"),
        enterprise.get("/api/models/demo/"),
        free.get("/api/models/gpt-5-pro/"),  # 403
        free.get("/api/models/nope/"),  # 404
        APIClient().get("/api/models/demo/"),  # 401
        APIClient().get("/api/schema/"),
        APIClient().get("/api/schema/", HTTP_ACCEPT="application/json"),
        APIClient().get("/api/docs/"),
        browser.get("/api/models/", HTTP_ACCEPT="text/html"),
        browser.get("/api/models/gpt-5-pro/", HTTP_ACCEPT="text/html"),
        browser.get("/api/models/demo/", HTTP_ACCEPT="text/html"),
    ]

    assert [response.status_code for response in responses] == [200, 200, 200, 403, 404, 401, 200, 200, 200, 200, 200, 200]
    for response in responses:
        assert_no_canary(response.content.decode())
        assert_no_canary(str(response.headers))
    assert_no_canary(everything_logged.text)


def test_it_never_shows_a_stored_key_in_the_admin(everything_logged, canaries, admin_client):
    provider = Provider.objects.get(slug="openai")
    model = LLMModel.objects.get(public_id="demo")
    pages = [
        "/admin/registry/provider/",
        "/admin/registry/llmmodel/",
        "/admin/registry/llmmodel/?q=demo",
        admin_url(provider),
        admin_url(model),
        admin_url(provider, "history"),
        admin_url(model, "history"),
        "/admin/",
    ]

    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        assert_no_canary(response.content.decode())
    change_page = admin_client.get(admin_url(provider)).content.decode()
    assert "…4f60" in change_page  # the last 4 characters, and no more
    assert_no_canary(everything_logged.text)


def test_it_does_not_echo_a_key_typed_into_a_refused_admin_form(registry, admin_client):
    model = LLMModel.objects.get(public_id="demo")

    response = admin_post(admin_client, admin_url(model), api_key=CANARY, context_window="not a number")

    assert response.status_code == 200
    assert "context_window" in response.context["adminform"].form.errors
    assert_no_canary(response.content.decode())
    assert LLMModel.objects.get(pk=model.pk).api_key_encrypted == model.api_key_encrypted


def test_it_stores_a_key_only_in_its_encrypted_column_which_decrypts_back(everything_logged, canaries):
    assert db_cells_containing(CANARY) == []
    assert db_cells_containing(OTHER_CANARY) == []
    provider = Provider.objects.get(slug="openai")
    model = LLMModel.objects.get(public_id="demo")
    assert crypto.secret_decrypt(provider.api_key_encrypted) == CANARY
    assert crypto.secret_decrypt(model.api_key_encrypted) == OTHER_CANARY
    assert provider.api_key_last4 == "4f60"
    assert_no_canary(everything_logged.text)


def test_it_keeps_the_stored_key_when_the_admin_leaves_the_field_blank(canaries, admin_client):
    model = LLMModel.objects.get(public_id="demo")

    response = admin_post(admin_client, admin_url(model), display_name="Demo, edited")

    assert response.status_code == 302
    model.refresh_from_db()
    assert model.display_name == "Demo, edited"
    assert crypto.secret_decrypt(model.api_key_encrypted) == OTHER_CANARY
    assert get_model_by_id("demo").api_key == OTHER_CANARY


def test_it_removes_a_key_only_when_asked(canaries, admin_client):
    model = LLMModel.objects.get(public_id="demo")

    assert admin_post(admin_client, admin_url(model), clear_api_key="on").status_code == 302

    model.refresh_from_db()
    assert model.api_key_encrypted == ""
    assert model.api_key_last4 == ""


def test_it_refuses_to_decrypt_with_another_key_without_showing_the_ciphertext(db, encryption_keys):
    encryption_keys(OLD_KEY)
    token = crypto.secret_encrypt(CANARY)
    encryption_keys(NEW_KEY)

    with pytest.raises(ConfigurationError) as error:
        crypto.secret_decrypt(token)

    assert error.value.code == "undecryptable_secret"
    assert token not in str(error.value)
    assert token not in repr(error.value.extra)
    assert error.value.__cause__ is None
    assert error.value.__suppress_context__


def test_it_keeps_serving_the_other_models_when_one_key_cannot_be_decrypted(registry, make_user, client_for,
                                                                            encryption_keys, caplog):
    client = client_for(make_user(tier="free"))
    provider = Provider.objects.get(slug="openai")
    encryption_keys(OLD_KEY)
    secret_assign(provider, CANARY)
    provider.save()
    token = provider.api_key_encrypted
    encryption_keys(NEW_KEY)
    local = Provider.objects.get(slug="local")
    secret_assign(local, "sk-local-simulator")  # stored again under the new key
    local.save()
    registry_snapshot.invalidate()

    response = client.get("/api/models/")

    assert response.status_code == 200
    models = registry_snapshot.get().models
    assert models["gpt-5-pro"].api_key == ""  # its requests fail as misconfigured
    assert models["demo"].api_key == "sk-local-simulator"
    assert "gpt-5-pro" in caplog.text and "cannot be decrypted" in caplog.text
    assert token not in caplog.text and token not in response.content.decode()
    assert_no_canary(response.content.decode() + caplog.text)


def test_it_lets_an_operator_replace_a_key_that_cannot_be_decrypted_any_more(registry, encryption_keys):
    provider = Provider.objects.get(slug="openai")
    encryption_keys(OLD_KEY)
    secret_assign(provider, "sk-lost-with-the-old-key-000")
    provider.save()
    encryption_keys(NEW_KEY)

    assert secret_assign(provider, CANARY)
    provider.save()

    assert crypto.secret_decrypt(Provider.objects.get(pk=provider.pk).api_key_encrypted) == CANARY


def stored_keys() -> dict[tuple[str, int], str]:
    """Every stored upstream key, decrypted, by (model label, pk)."""
    return {
        (model_class._meta.label, pk): crypto.secret_decrypt(token)
        for model_class in encrypted_models()
        for pk, token in model_class.objects.exclude(api_key_encrypted="").values_list("pk", "api_key_encrypted")
    }


@pytest.fixture
def keys_under_old_key(db, encryption_keys, monkeypatch, make_user) -> dict[tuple[str, int], str]:
    """The fixture loaded with keys for its providers, a model key and a user's own model key, all under OLD_KEY."""
    encryption_keys(OLD_KEY)
    for name in ("OPENAI_API_KEY", "DEEPSEEK_API_KEY", "LOCAL_API_KEY"):
        monkeypatch.setenv(name, f"sk-{name.lower()}-value-123456")
    registry_load(path=FIXTURE_FILE)
    model = LLMModel.objects.get(public_id="demo")
    secret_assign(model, CANARY)
    model.save()
    own = UserLLMConfig(owner=make_user("owner", tier="pro"), slug="mine", display_name="Mine", upstream_model="m",
                        base_url="https://llm.example.com/v1")
    secret_assign(own, OTHER_CANARY)
    own.save()
    keys = stored_keys()
    assert {label for label, _ in keys} == {"registry.Provider", "registry.LLMModel", "registry.UserLLMConfig"}
    return keys


def test_it_rotates_every_stored_key_to_the_new_encryption_key(keys_under_old_key, encryption_keys):
    encryption_keys(NEW_KEY, OLD_KEY)
    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    encryption_keys(NEW_KEY)

    assert f"Re-encrypted {len(keys_under_old_key)} key(s)" in out.getvalue()
    assert stored_keys() == keys_under_old_key
    registry_snapshot.invalidate()
    assert get_model_by_id("demo").api_key == CANARY
    assert get_model_by_id("deepseek-v3.2").api_key == "sk-deepseek_api_key-value-123456"


def test_it_rotates_nothing_when_a_key_cannot_be_decrypted_and_says_which(keys_under_old_key, encryption_keys):
    provider = Provider.objects.get(slug="deepseek")
    encryption_keys(Fernet.generate_key().decode())
    secret_assign(provider, "sk-under-a-forgotten-key-0")
    provider.save()
    forgotten = provider.api_key_encrypted
    tokens_before = list(Provider.objects.values_list("api_key_encrypted", flat=True).order_by("pk"))

    encryption_keys(NEW_KEY, OLD_KEY)
    with pytest.raises(CommandError) as error:
        call_command("rotate_encryption_key", stdout=io.StringIO())

    assert f"#{provider.pk}" in str(error.value)
    assert "Nothing was rotated" in str(error.value)
    assert forgotten not in str(error.value)
    assert list(Provider.objects.values_list("api_key_encrypted", flat=True).order_by("pk")) == tokens_before


def test_it_refuses_a_new_base_url_for_a_models_own_key_unless_the_key_is_entered_again(canaries, admin_client):
    model = LLMModel.objects.get(public_id="demo")

    response = admin_post(admin_client, admin_url(model), base_url="https://evil.example.com/v1")

    assert response.status_code == 200
    assert "api_key" in response.context["adminform"].form.errors
    model.refresh_from_db()
    assert model.base_url == ""
    assert get_model_by_id("demo").base_url != "https://evil.example.com/v1"

    response = admin_post(admin_client, admin_url(model), base_url="https://new.example.com/v1", api_key="sk-new-key-1234")
    assert response.status_code == 302
    assert get_model_by_id("demo").base_url == "https://new.example.com/v1"
    assert get_model_by_id("demo").api_key == "sk-new-key-1234"


def test_it_refuses_a_new_base_url_for_a_model_that_uses_its_providers_key(canaries, admin_client):
    model = LLMModel.objects.get(public_id="gpt-5-pro")
    assert model.api_key_encrypted == ""  # it sends the openai provider's key

    response = admin_post(admin_client, admin_url(model), base_url="https://evil.example.com/v1")

    assert response.status_code == 200
    assert "api_key" in response.context["adminform"].form.errors
    assert get_model_by_id("gpt-5-pro").base_url == "https://api.openai.com/v1"


def test_it_refuses_moving_a_model_with_its_own_key_to_another_provider(canaries, admin_client):
    model = LLMModel.objects.get(public_id="demo")  # its own key, its provider's base URL
    deepseek = Provider.objects.get(slug="deepseek")

    response = admin_post(admin_client, admin_url(model), provider=deepseek.pk)

    assert response.status_code == 200
    assert "api_key" in response.context["adminform"].form.errors
    assert get_model_by_id("demo").provider == "local"


def test_it_lets_a_model_without_its_own_key_move_to_another_provider_and_its_key(canaries, admin_client):
    model = LLMModel.objects.get(public_id="demo-backup")
    openai = Provider.objects.get(slug="openai")

    response = admin_post(admin_client, admin_url(model), provider=openai.pk)

    assert response.status_code == 302
    assert get_model_by_id("demo-backup").base_url == "https://api.openai.com/v1"


def test_it_refuses_a_new_base_url_for_a_providers_key_unless_the_key_is_entered_again(canaries, admin_client):
    provider = Provider.objects.get(slug="openai")

    response = admin_post(admin_client, admin_url(provider), base_url="https://evil.example.com/v1")

    assert response.status_code == 200
    assert "api_key" in response.context["adminform"].form.errors
    provider.refresh_from_db()
    assert provider.base_url == "https://api.openai.com/v1"


def test_it_refuses_a_providers_new_base_url_that_would_carry_a_models_own_key(canaries, admin_client):
    provider = Provider.objects.get(slug="local")  # demo uses its URL with a key of its own

    response = admin_post(admin_client, admin_url(provider), base_url="https://evil.example.com/v1",
                          api_key="sk-fresh-provider-key")

    assert response.status_code == 200
    form = response.context["adminform"].form
    assert "base_url" in form.errors
    assert "demo" in str(form.errors["base_url"])
    assert get_model_by_id("demo").base_url != "https://evil.example.com/v1"


def test_it_stores_hub_api_keys_hashed_and_prints_them_once(registry, make_user):
    make_user("carol", tier="pro")
    out = io.StringIO()

    call_command("create_api_key", "--user", "carol", stdout=out)

    raw_key = out.getvalue().strip()
    assert raw_key.startswith("lh-")
    assert len(raw_key) > 30
    assert db_cells_containing(raw_key) == []
    assert db_cells_containing(raw_key[10:]) == []
    stored = ApiKey.objects.get(user__username="carol")
    assert raw_key not in str(stored.__dict__)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    response = client.get("/api/models/")
    assert response.status_code == 200
    assert response.json()["tier"]["slug"] == "pro"
    assert raw_key not in response.content.decode()


def test_it_refuses_to_create_a_key_for_an_unknown_user(db):
    with pytest.raises(CommandError, match="No user named"):
        call_command("create_api_key", "--user", "nobody", stdout=io.StringIO())
    assert ApiKey.objects.count() == 0


def test_it_revokes_a_key_by_its_prefix_and_refuses_it_at_once(registry, make_user, api_key_for):
    user = make_user("dave", tier="pro")
    kept = api_key_for(user)
    client, kept_client = APIClient(), APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_for(user)}")
    kept_client.credentials(HTTP_AUTHORIZATION=f"Bearer {kept}")
    assert client.get("/api/models/").status_code == 200
    revoked = ApiKey.objects.exclude(prefix=kept[:10]).get(user=user)
    out = io.StringIO()

    call_command("revoke_api_key", revoked.prefix, stdout=out)

    assert f"Revoked the API key {revoked.prefix}" in out.getvalue()
    assert kept not in out.getvalue()
    revoked.refresh_from_db()
    assert revoked.revoked_at is not None
    assert client.get("/api/models/").status_code == 401
    assert kept_client.get("/api/models/").status_code == 200


@pytest.mark.parametrize("case", ["unknown", "already_revoked", "ambiguous"])
def test_it_refuses_to_revoke_a_key_it_cannot_tell_apart(registry, make_user, api_key_for, case):
    user = make_user("erin", tier="pro")
    api_key_for(user)
    first = ApiKey.objects.get(user=user)
    if case == "already_revoked":
        call_command("revoke_api_key", first.prefix, stdout=io.StringIO())
    elif case == "ambiguous":
        api_key_for(user)
        ApiKey.objects.exclude(pk=first.pk).update(prefix=first.prefix)
    prefix = "lh-nothing" if case == "unknown" else first.prefix
    before = list(ApiKey.objects.order_by("pk").values_list("pk", "revoked_at"))

    with pytest.raises(CommandError, match="No active API key" if case != "ambiguous" else "Several active"):
        call_command("revoke_api_key", prefix, stdout=io.StringIO())

    assert list(ApiKey.objects.order_by("pk").values_list("pk", "revoked_at")) == before
