import copy
import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from conftest import FIXTURE_FILE
from llmhub.crypto import secret_decrypt
from registry.loader import RegistryFileInvalid, registry_file_parse
from registry.models import LLMModel, Provider, Tier
from registry.selectors import registry_get
from registry.services import registry_load
from registry.tests.admin_forms import admin_post

pytestmark = pytest.mark.django_db


def fixture_data() -> dict:
    return json.loads(FIXTURE_FILE.read_text())


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    return path


def db_state() -> list:
    return [
        list(Tier.objects.values_list("slug", "rank", "default_model_id").order_by("slug")),
        list(Provider.objects.values_list("slug", "base_url", "api_key_encrypted").order_by("slug")),
        list(LLMModel.objects.values_list("public_id", "enabled", "upstream_model", "api_key_encrypted", "updated_at",
                                          "is_default").order_by("public_id")),
    ]


def test_it_loads_the_shipped_fixture_with_tiers_providers_models_and_defaults(registry):
    assert set(registry.tiers) == {"free", "pro", "premium", "enterprise"}
    assert {"gpt-5-pro", "deepseek-v3.2", "qwen3-coder-plus", "kimi-k2-0905", "demo"} <= set(registry.models)
    assert registry.models["gpt-5-pro"].base_url == "https://api.openai.com/v1"
    assert registry.models["gpt-5-pro"].allowed_tiers == ("premium", "enterprise")
    assert registry.models["demo"].fallbacks == ("demo-backup",)
    assert registry.default_model_id == "demo"
    assert registry.tier_default_ids["pro"] == "demo-pro"
    assert registry.models["demo-embed"].kind == "embedding" and registry.models["demo"].kind == "chat"
    gpt = registry.models["gpt-5-pro"].request_params
    assert "temperature" in gpt.unsupported and ("max_tokens", "max_completion_tokens") in gpt.renamed
    assert not gpt.refuse


def assert_refused(tmp_path, mutate, expected: str) -> str:
    """`load_models` refuses the shipped fixture changed by `mutate`, saying `expected`, and changes nothing;
    returns its message."""
    data = fixture_data()
    mutate(data)
    before = db_state()

    with pytest.raises(CommandError) as error:
        load(write(tmp_path, data))

    assert expected in str(error.value)
    assert db_state() == before
    return str(error.value)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["models"][2]["allowed_tiers"].append("gold"), 'models[2].allowed_tiers: unknown tier "gold"'),
    (lambda d: d["models"][1].update(provider="nowhere"), 'models[1].provider: unknown provider "nowhere"'),
    (lambda d: d["models"][0].pop("display_name"), "models[0]: 'display_name' is a required property"),
    (lambda d: d["models"][0].update(context_window="big"), "models[0].context_window: 'big' is not of type 'integer'"),
    (lambda d: d["models"][0].update(base_url="ftp://x"), "models[0].base_url: 'ftp://x' does not match"),
    (lambda d: d["models"][3].update(id="demo"), 'models[3].id: duplicate model id "demo"'),
    (lambda d: d["models"][0].update(fallbacks=["nope"]), 'models[0].fallbacks[0]: unknown model "nope"'),
    (lambda d: d["models"][4].update(fallbacks=["demo"]), "models[4].fallbacks[0]: a model cannot fall back to itself"),
    (lambda d: d["models"][4].update(api="grpc"), "models[4].api: 'grpc' is not one of ['chat', 'responses']"),
    (lambda d: d.update(default_model="ghost"), 'default_model: unknown model "ghost"'),
    (lambda d: d["default_model"]["tiers"].update(gold="demo"), 'default_model.tiers.gold: unknown tier "gold"'),
    (lambda d: d["tiers"][1].update(rank=0), "tiers[1].rank: duplicate rank 0"),
    (lambda d: d.update(colour="blue"), "(root): Additional properties are not allowed ('colour' was unexpected)"),
    (lambda d: d["provider_configs"]["openai"].update(headers={"X-Team": "a\r\nX-Evil: 1"}),
     "provider_configs.openai.headers.X-Team: 'a\\r\\nX-Evil: 1' does not match"),
    (lambda d: d["provider_configs"]["openai"].update(headers={"X Team": "a"}),
     "provider_configs.openai.headers: 'X Team' does not match"),
    (lambda d: d["provider_configs"]["openai"].update(base_url="${NO_SUCH_URL_VAR}"),
     'provider_configs.openai.base_url: environment variable "NO_SUCH_URL_VAR" is not set'),
    (lambda d: d["models"][4].update(kind="image"), "models[4].kind: 'image' is not one of ['chat', 'embedding']"),
    (lambda d: d["models"][4].update(fallbacks=["demo-embed"]),
     'models[4].fallbacks[0]: "demo-embed" is of kind embedding and "demo" of kind chat'),
    (lambda d: d.update(default_model="demo-embed"), 'default_model: model "demo-embed" is an embedding model'),
    (lambda d: d["models"][0].update(request_params={"on_unsupported": "ignore"}),
     "models[0].request_params.on_unsupported: 'ignore' is not one of ['drop', 'refuse']"),
    (lambda d: d["models"][0].update(request_params={"renamed": {"a": "b"}, "unsupported": ["b"]}),
     'models[0].request_params.renamed: "b" is both a rename target and unsupported'),
])
def test_it_refuses_an_invalid_file_whole_listing_the_problem_by_path(tmp_path, registry, mutate, expected):
    message = assert_refused(tmp_path, mutate, expected)
    assert "nothing was changed" in message


def test_it_lists_every_problem_not_just_the_first(tmp_path, db):
    data = fixture_data()
    data["models"][0]["allowed_tiers"] = ["gold"]
    data["models"][1]["allowed_tiers"] = ["silver"]
    with pytest.raises(RegistryFileInvalid) as error:
        registry_load(path=write(tmp_path, data))
    assert error.value.problems == ['models[0].allowed_tiers: unknown tier "gold"',
                                    'models[1].allowed_tiers: unknown tier "silver"']
    assert LLMModel.objects.count() == 0


def test_it_refuses_a_file_that_is_not_json(tmp_path, db):
    path = tmp_path / "broken.json"
    path.write_text("{ not json")
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("load_models", str(path))


def test_it_changes_nothing_when_loaded_twice(registry, capsys):
    before = db_state()
    call_command("load_models", str(FIXTURE_FILE))
    assert db_state() == before
    assert "created 0, updated 0" in capsys.readouterr().out


def test_it_disables_a_model_that_left_the_file_and_keeps_its_row(tmp_path, registry):
    data = fixture_data()
    data["models"] = [m for m in data["models"] if m["id"] != "kimi-k2-0905"]
    report = registry_load(path=write(tmp_path, data))

    assert report.disabled == 1
    assert LLMModel.objects.get(public_id="kimi-k2-0905").enabled is False
    assert not registry_get().models["kimi-k2-0905"].enabled


def test_it_leaves_models_created_in_admin_alone(tmp_path, registry):
    LLMModel.objects.create(public_id="in-house", display_name="In house", upstream_model="x",
                            provider=Provider.objects.get(slug="local"))
    registry_load(path=FIXTURE_FILE)
    assert LLMModel.objects.get(public_id="in-house").enabled


def test_it_updates_a_changed_field_on_reload(tmp_path, registry):
    data = fixture_data()
    data["models"][4]["display_name"] = "Demo, renamed"
    report = registry_load(path=write(tmp_path, data))
    assert report.updated == 1
    assert registry_get().models["demo"].display_name == "Demo, renamed"


def test_it_loads_each_models_upstream_api_chat_by_default(tmp_path, registry):
    assert registry.models["gpt-5-pro"].api == "responses"  # served only on /responses
    assert registry.models["demo"].api == "chat"
    data = fixture_data()
    data["models"][4]["api"] = "responses"
    assert registry_load(path=write(tmp_path, data)).updated == 1
    assert registry_get().models["demo"].api == "responses"
    data["models"][4].pop("api")
    registry_load(path=write(tmp_path, data))
    assert registry_get().models["demo"].api == "chat"


def test_it_expands_environment_references_in_keys(monkeypatch, registry):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek-from-env-123456")
    registry_load(path=FIXTURE_FILE)
    assert registry_get().models["deepseek-v3.2"].api_key == "sk-deepseek-from-env-123456"


def test_it_falls_back_to_the_provider_variable_for_an_absent_or_unset_key(monkeypatch):
    data = fixture_data()
    data["provider_configs"]["deepseek"]["api_key"] = "${UNSET_VARIABLE_FOR_TEST}"
    data["models"][1]["api_key"] = "${ANOTHER_UNSET_VARIABLE}"
    del data["models"][2]["api_key"]
    environ = {"DEEPSEEK_API_KEY": "sk-provider-fallback-0001", "DASHSCOPE_API_KEY": "sk-dashscope-fallback-01"}

    spec = registry_file_parse(data, environ=environ)

    providers = {p.slug: p for p in spec.providers}
    models = {m.public_id: m for m in spec.models}
    assert providers["deepseek"].api_key == "sk-provider-fallback-0001"
    assert models["deepseek-v3.2"].api_key == "sk-provider-fallback-0001"
    assert models["qwen3-coder-plus"].api_key is None  # inherits the provider's key
    assert providers["dashscope"].api_key == "sk-dashscope-fallback-01"


def test_it_uses_a_default_in_an_environment_reference(monkeypatch):
    data = copy.deepcopy(fixture_data())
    spec = registry_file_parse(data, environ={})
    local = next(p for p in spec.providers if p.slug == "local")
    assert local.base_url == "http://127.0.0.1:9100/v1"
    assert local.api_key == "sk-local-simulator"


def test_it_configures_one_working_model_from_legacy_variables_without_a_file(monkeypatch, tmp_path, db):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-legacy-key-abcdefgh")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9999/v1")
    monkeypatch.setenv("LLM_MODEL", "legacy-model")

    registry_load(path=None, default_path=tmp_path / "missing.json")

    registry = registry_get()
    model = registry.models["legacy-model"]
    assert model.upstream_model == "legacy-model"
    assert model.base_url == "http://127.0.0.1:9999/v1"
    assert model.api_key == "sk-legacy-key-abcdefgh"
    assert registry.default_model_id == "legacy-model"
    assert model.allows(registry.lowest_tier)


# --- Issue 16: what an operator runs into ------------------------------------------------------------------

def load(path: Path) -> tuple[str, str]:
    """`manage.py load_models PATH`: what it printed on stdout and on stderr."""
    out, err = io.StringIO(), io.StringIO()
    call_command("load_models", str(path), stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def admin_client(db) -> Client:
    from django.contrib.auth import get_user_model

    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", password="pw-root-0123"))
    return client


def change_url(instance) -> str:
    return f"/admin/{instance._meta.app_label}/{instance._meta.model_name}/{instance.pk}/change/"


def test_it_refuses_a_named_path_that_does_not_exist_and_changes_nothing(registry):
    before = db_state()

    with pytest.raises(CommandError) as error:
        call_command("load_models", "/nonexistent/file.json")

    assert "/nonexistent/file.json does not exist; nothing was changed" in str(error.value)
    assert db_state() == before


def test_it_refuses_a_models_file_variable_naming_no_file_and_changes_nothing(registry, settings, tmp_path):
    settings.LLMHUB = {**settings.LLMHUB, "MODELS_FILE": str(tmp_path / "etc" / "models.json")}
    before = db_state()

    with pytest.raises(CommandError, match="does not exist; nothing was changed"):
        call_command("load_models")

    assert db_state() == before


def test_it_falls_back_to_the_legacy_variables_only_without_a_named_path_and_says_so(monkeypatch, tmp_path, db, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-legacy-key-abcdefgh")
    monkeypatch.setenv("LLM_MODEL", "gpt-4.1")

    report = registry_load(path=None, default_path=tmp_path / "absent.json")

    assert registry_get().default_model_id == "gpt-4.1"
    assert any("legacy OPENAI_*" in warning for warning in report.warnings)
    assert "legacy OPENAI_*" in caplog.text


def test_it_keeps_a_provider_key_entered_in_admin_when_the_file_gives_none(registry, admin_client, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    openai = Provider.objects.get(slug="openai")
    assert admin_post(admin_client, change_url(openai), api_key="sk-entered-in-admin-0001").status_code == 302

    out, err = load(FIXTURE_FILE)

    assert secret_decrypt(Provider.objects.get(slug="openai").api_key_encrypted) == "sk-entered-in-admin-0001"
    assert registry_get().models["gpt-5-pro"].api_key == "sk-entered-in-admin-0001"
    assert "updated 0" in out
    assert "provider_configs.openai.api_key" in err and "keeping the stored key" in err
    assert "sk-entered-in-admin-0001" not in out + err


def test_it_keeps_a_model_key_entered_in_admin_when_the_file_gives_none(registry, admin_client, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    demo_pro, gpt = LLMModel.objects.get(public_id="demo-pro"), LLMModel.objects.get(public_id="gpt-5-pro")
    assert admin_post(admin_client, change_url(demo_pro), api_key="sk-model-key-in-admin-01").status_code == 302
    assert admin_post(admin_client, change_url(gpt), api_key="sk-model-key-in-admin-02").status_code == 302

    out, err = load(FIXTURE_FILE)

    assert registry_get().models["demo-pro"].api_key == "sk-model-key-in-admin-01"
    assert registry_get().models["gpt-5-pro"].api_key == "sk-model-key-in-admin-02"
    assert "updated 0" in out
    assert "models[6].api_key" in err and "models[0].api_key" in err


def test_it_still_replaces_a_stored_key_with_one_the_file_gives(registry, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment-01")
    registry_load(path=FIXTURE_FILE)
    assert registry_get().models["gpt-5-pro"].api_key == "sk-from-the-environment-01"


def test_it_swaps_two_tiers_ranks_in_one_load(tmp_path, registry):
    data = fixture_data()
    data["tiers"][1]["rank"], data["tiers"][2]["rank"] = 20, 10

    out, _ = load(write(tmp_path, data))

    assert dict(Tier.objects.values_list("slug", "rank")) == {"free": 0, "pro": 20, "premium": 10, "enterprise": 30}
    assert "updated 2" in out
    assert registry_get().tiers["pro"].rank == 20


def test_it_refuses_a_renamed_tier_whose_rank_the_old_one_still_holds(tmp_path, registry):
    data = json.loads(FIXTURE_FILE.read_text().replace('"pro"', '"plus"'))
    before = db_state()

    with pytest.raises(CommandError) as error:
        load(write(tmp_path, data))

    assert 'tiers[1].rank: rank 10 is held by tier "pro", which is not in this file' in str(error.value)
    assert db_state() == before


@pytest.mark.parametrize(("upstream", "expected"), [
    ("gpt-4.1", "gpt-4.1"), ("GPT 4.1 mini", "gpt-4.1-mini"), ("org/Model_v2.5", "org-model_v2.5"),
])
def test_it_derives_a_model_id_that_keeps_dots(tmp_path, registry, upstream, expected):
    data = fixture_data()
    data["models"][0].pop("id")
    data["models"][0]["model"] = upstream
    data["default_model"]["global"] = "demo"

    registry_load(path=write(tmp_path, data))

    assert registry_get().models[expected].upstream_model == upstream


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: (d["models"][0].pop("id"), d["models"][0].update(model="模型")),
     'models[0].model: no id can be derived from "模型": give the model an "id"'),
    (lambda d: (d["models"][0].pop("id"), d["models"][0].update(model="Demo")),
     'models[0].id: duplicate model id "demo" (derived from model "Demo")'),
    (lambda d: d["models"][0].update(id="x" * 101), "models[0].id: "),
])
def test_it_refuses_a_model_whose_id_would_be_empty_clash_or_be_too_long(tmp_path, registry, mutate, expected):
    assert_refused(tmp_path, mutate, expected)


@pytest.mark.parametrize("mutate", [
    lambda d: d["models"][4].update(fallbacks=[]),
    lambda d: d["models"][6].update(fallbacks=["demo-backup", "demo"]),
    lambda d: d["default_model"]["tiers"].update(pro="demo"),
    lambda d: d["default_model"].update({"global": "demo-backup"}),
])
def test_it_reports_a_change_of_fallbacks_or_defaults_as_an_update(tmp_path, registry, mutate):
    data = fixture_data()
    mutate(data)

    out, _ = load(write(tmp_path, data))
    again, _ = load(write(tmp_path, data))

    assert "updated 0" not in out
    assert "updated 0" in again


def test_it_counts_a_model_changed_in_several_ways_once(tmp_path, registry):
    data = fixture_data()
    data["models"][4].update(display_name="Demo, renamed", fallbacks=[], allowed_tiers=["pro"])
    data["default_model"]["tiers"]["free"] = "demo-backup"
    data["default_model"]["global"] = "demo-backup"

    report = registry_load(path=write(tmp_path, data))

    # demo (fields, tiers, fallbacks, no longer the default), demo-backup (now the default), the free tier's default
    assert (report.created, report.updated) == (0, 3)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["models"][4].update(enabled=False), 'default_model.global: model "demo" is disabled'),
    (lambda d: (d["models"][5].update(enabled=False), d.update(default_model="demo-backup")),
     'default_model: model "demo-backup" is disabled'),
    (lambda d: d["default_model"]["tiers"].update(free="demo-pro"),
     'default_model.tiers.free: model "demo-pro" is not available to tier "free" (it needs tier "pro" or higher)'),
])
def test_it_refuses_defaults_that_cannot_serve_their_tier(tmp_path, registry, mutate, expected):
    assert_refused(tmp_path, mutate, expected)


def test_it_refuses_to_send_a_kept_key_to_a_new_base_url(tmp_path, registry, admin_client, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    openai = Provider.objects.get(slug="openai")
    assert admin_post(admin_client, change_url(openai), api_key="sk-entered-in-admin-0001").status_code == 302
    data = fixture_data()
    data["provider_configs"]["openai"]["base_url"] = "https://elsewhere.example.com/v1"
    before = db_state()

    with pytest.raises(CommandError) as error:
        load(write(tmp_path, data))

    assert "provider_configs.openai.base_url: Changing the base URL requires entering the API key again." in str(
        error.value)
    assert db_state() == before


def test_it_warns_when_the_global_default_cannot_serve_a_tier_without_its_own(tmp_path, registry):
    data = fixture_data()
    data["default_model"] = "demo-pro"

    _, err = load(write(tmp_path, data))

    assert 'WARNING: default_model: model "demo-pro" is not available to tier(s) free' in err
