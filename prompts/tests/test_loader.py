"""The `prompts` section of the registry file: validated whole with the rest of the file (every problem by its
path, nothing changed), applied in the same transaction, idempotent; a stored version is immutable."""

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from conftest import FIXTURE_FILE
from prompts.models import PromptLabel, PromptTemplate, PromptVersion
from registry.loader import RegistryFileInvalid
from registry.models import LLMModel
from registry.services import registry_load

GREETING = {"name": "greeting", "labels": {"production": 1, "candidate": 2}, "versions": [
    {"version": 1, "system": "Greet {{ who }}.", "variables": {"who": {"type": "str", "default": "everyone"}}},
    {"version": 2, "system": "Greet {{ who }} warmly.", "variables": {"who": {"type": "str"}},
     "params": {"temperature": 0.2}, "variants": [{"provider": "local", "system": "Hi {{ who }}"}]},
]}


def write(tmp_path: Path, prompts: list, name: str = "models.json") -> Path:
    data = json.loads(FIXTURE_FILE.read_text())
    data["prompts"] = [*data["prompts"], *prompts]
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def stored() -> dict:
    return {"versions": sorted(PromptVersion.objects.values_list("template__name", "version", "system")),
            "labels": sorted(PromptLabel.objects.values_list("template__name", "name", "version__version"))}


def test_it_seeds_the_translation_template_from_the_shipped_file(db):
    registry_load(path=FIXTURE_FILE)

    assert stored()["labels"] == [("translation", "production", 1)]
    assert PromptTemplate.objects.get(name="translation").from_fixture


def test_it_loads_a_prompts_section_idempotently(db, tmp_path):
    path = write(tmp_path, [GREETING])
    first = registry_load(path=path)
    before = stored()
    second = registry_load(path=path)

    assert before["labels"] == [("greeting", "candidate", 2), ("greeting", "production", 1),
                                ("translation", "production", 1)]
    assert first.created >= 2  # the two prompts (besides tiers, providers and models)
    assert (second.created, second.updated) == (0, 0) and stored() == before

    moved = {**GREETING, "labels": {"production": 2}}
    report = registry_load(path=write(tmp_path, [moved], "moved.json"))
    assert report.updated == 1
    assert ("greeting", "production", 2) in stored()["labels"]


def test_it_refuses_an_invalid_section_naming_every_problem_and_changes_nothing(db, tmp_path):
    registry_load(path=FIXTURE_FILE)
    before, models = stored(), list(LLMModel.objects.values_list("public_id", "enabled"))
    bad = [{"name": "bad", "labels": {"production": 3}, "versions": [
        {"version": 1, "system": "Hello {{ request.user }}"},
        {"version": 1, "user": "{% load static %}{{ missing }}"},
    ]}, {"name": "translation", "versions": [{"version": 1, "system": "x"}]}]

    with pytest.raises(RegistryFileInvalid) as refused:
        registry_load(path=write(tmp_path, bad))

    assert refused.value.problems == [
        "prompts[1].versions[0].system: '{{ request.user }}' is not allowed: only a declared variable's name, with "
        "no attribute, index, call or filter",
        "prompts[1].versions[1].version: duplicate version 1",
        "prompts[1].versions[1].user: template tags ({% %}) are not allowed, only {{ variable }} (at character 0)",
        "prompts[1].versions[1].user: '{{ missing }}' names 'missing', which is not a declared variable",
        "prompts[1].labels.production: version 3 is not among this prompt's versions",
        'prompts[2].name: duplicate prompt "translation"',
    ]
    assert stored() == before and list(LLMModel.objects.values_list("public_id", "enabled")) == models


def test_it_refuses_a_file_that_changes_a_stored_version(db, tmp_path):
    registry_load(path=write(tmp_path, [GREETING]))
    before = stored()
    changed = {**GREETING, "versions": [{**GREETING["versions"][0], "system": "Greet {{ who }}!"},
                                        GREETING["versions"][1]]}

    with pytest.raises(RegistryFileInvalid) as refused:
        registry_load(path=write(tmp_path, [changed], "changed.json"))

    assert refused.value.problems == [
        'prompts[1].versions[0]: version 1 of prompt "greeting" differs from the stored one: a version is immutable, '
        "give the change a new version number"]
    assert stored() == before


def test_it_refuses_a_schema_violation_by_path(db, tmp_path):
    path = write(tmp_path, [{"name": "Bad Name", "versions": [{"version": 0, "system": 5}]}])

    with pytest.raises(RegistryFileInvalid) as refused:
        registry_load(path=path)

    assert any(problem.startswith("prompts[1].name:") for problem in refused.value.problems)
    assert any(problem.startswith("prompts[1].versions[0].version:") for problem in refused.value.problems)
    assert any(problem.startswith("prompts[1].versions[0].system:") for problem in refused.value.problems)


def test_it_loads_through_the_command(db, tmp_path, capsys):
    call_command("load_models", str(write(tmp_path, [GREETING])))

    assert ("greeting", "production", 1) in stored()["labels"]
