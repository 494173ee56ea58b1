"""The `prompts` section of the registry file (fixtures/llm_models.json), loaded by `load_models` with the rest of
the file: validated whole first (every problem by its JSON path), then applied in the load's transaction; loading
the same file twice changes nothing. The registry knows the section only through `file_section_register`.

    "prompts": [{"name": "support", "description": "...", "labels": {"production": 1},
                 "versions": [{"version": 1, "system": "You help with {{ product }}.", "user": "{{ question }}",
                               "variables": {"product": {"type": "str", "default": "llmhub"},
                                             "question": {"type": "str"}},
                               "params": {"temperature": 0.2}, "variants": [{"provider": "openai", "system": "..."}]}]}]

A version is immutable: a stored version the file gives differently is refused (add a version with a new number).
Templates that left the file, and versions or labels added in admin, are left alone.
"""

from dataclasses import dataclass, field
from typing import Any

from prompts.rendering import TemplateRefused, version_compile

_VERSION_FIELDS = ("system", "user", "variables", "params", "variants")


@dataclass
class TemplateEntry:
    where: str
    name: str
    description: str
    versions: list[tuple[str, dict[str, Any]]]  # (path, fields with "version")
    labels: dict[str, int] = field(default_factory=dict)


def _stored_form(item: dict[str, Any]) -> dict[str, Any]:
    return {"version": item["version"], "system": item.get("system") or "", "user": item.get("user") or "",
            "variables": item.get("variables") or {}, "params": item.get("params") or {},
            "variants": item.get("variants") or [], "note": item.get("note", "")}


def prompts_section_parse(value: Any, problems: list[str]) -> list[TemplateEntry]:
    """The section's templates; the JSON Schema has checked its shape already."""
    entries: list[TemplateEntry] = []
    names = [item.get("name") for item in value]
    for index, item in enumerate(value):
        where = f"prompts[{index}]"
        if item["name"] in names[:index]:
            problems.append(f'{where}.name: duplicate prompt "{item["name"]}"')
        numbers = [version["version"] for version in item["versions"]]
        versions = []
        for position, version in enumerate(item["versions"]):
            at = f"{where}.versions[{position}]"
            if version["version"] in numbers[:position]:
                problems.append(f"{at}.version: duplicate version {version['version']}")
            try:
                version_compile(name=item["name"], version=version["version"], where=at,
                                **{name: version.get(name) for name in _VERSION_FIELDS})
            except TemplateRefused as error:
                problems.extend(error.problems)
            versions.append((at, _stored_form(version)))
        for label, number in item.get("labels", {}).items():
            if number not in numbers:
                problems.append(f'{where}.labels.{label}: version {number} is not among this prompt\'s versions')
        entries.append(TemplateEntry(where, item["name"], item.get("description", ""), versions,
                                     dict(item.get("labels", {}))))
    return entries


def prompts_section_sync(entries: list[TemplateEntry], problems: list[str]) -> list[tuple[str, str, str]]:
    """Upserts the templates (inside `registry_sync`'s transaction); a stored version that differs is a problem."""
    from prompts.models import PromptLabel, PromptTemplate, PromptVersion
    from prompts.selectors import prompt_snapshot

    states = []
    for entry in entries:
        template, created = PromptTemplate.objects.get_or_create(
            name=entry.name, defaults={"description": entry.description, "from_fixture": True})
        changed = False
        if not created and template.description != entry.description:
            PromptTemplate.objects.filter(pk=template.pk).update(description=entry.description)
            changed = True
        stored = {row["version"]: row for row in template.versions.values("pk", "version", *_VERSION_FIELDS)}
        by_number = {}
        for at, fields in entry.versions:
            row = stored.get(fields["version"])
            if row is None:
                by_number[fields["version"]] = PromptVersion.objects.create(template=template, **fields).pk
                changed = True
            elif any(row[name] != fields[name] for name in _VERSION_FIELDS):
                problems.append(f'{at}: version {fields["version"]} of prompt "{entry.name}" differs from the stored '
                                "one: a version is immutable, give the change a new version number")
            else:
                by_number[fields["version"]] = row["pk"]
        for label, number in entry.labels.items():
            if number not in by_number:
                continue  # refused above
            current = PromptLabel.objects.filter(template=template, name=label).values_list("version_id", flat=True)
            if list(current) != [by_number[number]]:
                PromptLabel.objects.update_or_create(template=template, name=label,
                                                     defaults={"version_id": by_number[number]})
                changed = True
        states.append(("prompt", entry.name, "created" if created else "updated" if changed else "unchanged"))
    prompt_snapshot.invalidate()
    return states


def section_register() -> None:
    from registry.loader import file_section_register

    file_section_register("prompts", parse=prompts_section_parse, sync=prompts_section_sync)
