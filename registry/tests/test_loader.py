import copy
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from conftest import FIXTURE_FILE
from registry.loader import RegistryFileInvalid, registry_file_parse
from registry.models import LLMModel, Provider, Tier
from registry.selectors import registry_get
from registry.services import registry_load

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


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["models"][2]["allowed_tiers"].append("gold"), 'models[2].allowed_tiers: unknown tier "gold"'),
    (lambda d: d["models"][1].update(provider="nowhere"), 'models[1].provider: unknown provider "nowhere"'),
    (lambda d: d["models"][0].pop("display_name"), "models[0]: 'display_name' is a required property"),
    (lambda d: d["models"][0].update(context_window="big"), "models[0].context_window: 'big' is not of type 'integer'"),
    (lambda d: d["models"][0].update(base_url="ftp://x"), "models[0].base_url: 'ftp://x' does not match"),
    (lambda d: d["models"][3].update(id="demo"), 'models[3].id: duplicate model id "demo"'),
    (lambda d: d["models"][0].update(fallbacks=["nope"]), 'models[0].fallbacks[0]: unknown model "nope"'),
    (lambda d: d["models"][4].update(fallbacks=["demo"]), "models[4].fallbacks[0]: a model cannot fall back to itself"),
    (lambda d: d.update(default_model="ghost"), 'default_model: unknown model "ghost"'),
    (lambda d: d["default_model"]["tiers"].update(gold="demo"), 'default_model.tiers.gold: unknown tier "gold"'),
    (lambda d: d["tiers"][1].update(rank=0), "tiers[1].rank: duplicate rank 0"),
    (lambda d: d.update(colour="blue"), "(root): Additional properties are not allowed ('colour' was unexpected)"),
    (lambda d: d["provider_configs"]["openai"].update(base_url="${NO_SUCH_URL_VAR}"),
     'provider_configs.openai.base_url: environment variable "NO_SUCH_URL_VAR" is not set'),
])
def test_it_refuses_an_invalid_file_whole_listing_the_problem_by_path(tmp_path, registry, mutate, expected):
    data = fixture_data()
    mutate(data)
    before = db_state()

    with pytest.raises(CommandError) as error:
        call_command("load_models", str(write(tmp_path, data)))

    assert expected in str(error.value)
    assert "nothing was changed" in str(error.value)
    assert db_state() == before


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
    assert models["qwen3-coder-plus"].api_key == ""  # inherits the provider's key
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

    call_command("load_models", str(tmp_path / "missing.json"))

    registry = registry_get()
    model = registry.models["legacy-model"]
    assert model.upstream_model == "legacy-model"
    assert model.base_url == "http://127.0.0.1:9999/v1"
    assert model.api_key == "sk-legacy-key-abcdefgh"
    assert registry.default_model_id == "legacy-model"
    assert model.allows(registry.lowest_tier)
