"""Reads of prompt templates, from an in-memory snapshot of every version compiled (llmhub.snapshot): the hot
path resolves and renders a prompt without a query once warm; any change (a new version, a label moved, from any
process) invalidates the snapshot in every process."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from llmhub.snapshot import LocalSnapshot
from prompts.builtin import BUILTIN_TEMPLATES
from prompts.rendering import CompiledVersion, TemplateRefused, version_compile


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    name: str
    versions: Mapping[int, CompiledVersion]
    labels: Mapping[str, int] = field(default_factory=dict)

    @property
    def latest(self) -> int:
        return max(self.versions)


def _compiled(name: str, row: dict) -> CompiledVersion | None:
    try:
        return version_compile(name=name, version=row["version"], system=row["system"], user=row["user"],
                               variables=row["variables"], params=row["params"], variants=row["variants"])
    except TemplateRefused:
        return None  # saved around the checks (raw SQL): never served


def _build() -> Mapping[str, TemplateSpec]:
    from prompts.models import PromptLabel, PromptVersion

    versions: dict[str, dict[int, CompiledVersion]] = {}
    for row in PromptVersion.objects.values("template__name", "version", "system", "user", "variables", "params",
                                            "variants"):
        compiled = _compiled(row["template__name"], row)
        if compiled is not None:
            versions.setdefault(row["template__name"], {})[row["version"]] = compiled
    labels: dict[str, dict[str, int]] = {}
    for template, label, version in PromptLabel.objects.values_list("template__name", "name", "version__version"):
        labels.setdefault(template, {})[label] = version
    templates = {name: TemplateSpec(name, by_number, labels.get(name, {})) for name, by_number in versions.items()}
    for name, builtin in BUILTIN_TEMPLATES.items():
        if name not in templates:
            templates[name] = TemplateSpec(name, {builtin["version"]: _compiled(name, {
                "params": None, "variants": None, **builtin})})
    return templates


prompt_snapshot: LocalSnapshot[Mapping[str, TemplateSpec]] = LocalSnapshot("prompts", _build, immediate=True)
