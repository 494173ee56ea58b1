"""Reading and validating the registry fixture (fixtures/llm_models.json).

`registry_file_parse` turns a file into a `RegistryFile` or raises `RegistryFileInvalid` listing every
problem by its JSON path; it never touches the database. `registry.services.registry_sync` applies it.
"""

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings

from registry.limits import LimitSpec, tiers_quota_parse
from registry.params import request_params_problems

SCHEMA_PATH = Path(settings.BASE_DIR) / "fixtures" / "llm_models.schema.json"
DEFAULT_MODELS_FILE = Path(settings.BASE_DIR) / "fixtures" / "llm_models.json"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NOT_IN_ID = re.compile(r"[^a-z0-9._-]+")
MODEL_ID_MAX_LENGTH = 100  # LLMModel.public_id

LEGACY_PROVIDER = "openai"
LEGACY_BASE_URL = "https://api.openai.com/v1"
LEGACY_MODEL = "gpt-4o-mini"


class RegistryFileInvalid(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class RegistryFileMissing(Exception):
    """A registry file was named (argument or LLMHUB_MODELS_FILE) and is not there."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} does not exist")
        self.path = path


@dataclass
class TierEntry:
    slug: str
    name: str
    rank: int
    description: str = ""
    limits: list[LimitSpec] = field(default_factory=list)
    max_own_models: int | None = None
    own_models_metered: bool = False


@dataclass
class ProviderEntry:
    slug: str
    display_name: str
    base_url: str
    # None: the file gives no key (absent, or its variables are unset); a stored key is then kept.
    api_key: str | None = field(repr=False)
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 5.0
    extra_headers: dict[str, str] = field(default_factory=dict)
    no_key_reason: str = ""


@dataclass
class ModelEntry:
    public_id: str
    display_name: str
    upstream_model: str
    provider: str
    base_url: str
    # None: the file gives no key of the model's own; a stored one is kept, else the provider's is used.
    api_key: str | None = field(repr=False)
    allowed_tiers: list[str] = field(default_factory=list)
    enabled: bool = True
    supports_streaming: bool = True
    supports_json_mode: bool = False
    supports_tools: bool = False
    supports_vision: bool = False
    context_window: int = 8192
    input_price_per_million: Decimal = Decimal(0)
    output_price_per_million: Decimal = Decimal(0)
    fallbacks: list[str] = field(default_factory=list)
    fallbacks_auto: bool = False  # "fallbacks": "auto"
    no_key_reason: str = ""
    kind: str = "chat"
    request_params: dict[str, Any] = field(default_factory=dict)
    api: str = "chat"


@dataclass
class RegistryFile:
    tiers: list[TierEntry]
    providers: list[ProviderEntry]
    models: list[ModelEntry]
    default_model: str | None
    tier_defaults: dict[str, str]
    # Things that are valid but probably not what the operator meant; `load_models` prints them.
    warnings: list[str] = field(default_factory=list)
    # Sections other apps own (see `file_section_register`), as their `parse` returned them.
    sections: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileSection:
    """A section of the registry file that another app owns (prompts; routing, in each tier): `parse(value,
    problems)` checks it without the database (appending path-precise problems) and returns what `sync(parsed,
    problems)` applies inside the load's transaction; `sync` returns a (kind, key, state) for each thing it counts,
    state being created, updated or unchanged. A section `per_tier` is a key of tier objects: its `value` is then a
    list of (path, tier slug, the tier's value), e.g. ("tiers[1].routing", "pro", {...}), for the tiers that have it."""

    parse: Callable[[Any, list[str]], Any]
    sync: Callable[[Any, list[str]], list[tuple[str, str, str]]]
    per_tier: bool = False


# Registered by the owning apps' AppConfig.ready(): the registry imports none of them.
FILE_SECTIONS: dict[str, FileSection] = {}


def file_section_register(name: str, *, parse: Callable[[Any, list[str]], Any],
                          sync: Callable[[Any, list[str]], list[tuple[str, str, str]]], per_tier: bool = False) -> None:
    FILE_SECTIONS[name] = FileSection(parse, sync, per_tier)


def _sections_parse(data: Any, problems: list[str]) -> dict[str, Any]:
    sections = {}
    for name, section in FILE_SECTIONS.items():
        if section.per_tier:
            found = [(f"tiers[{index}].{name}", tier["slug"], tier[name])
                     for index, tier in enumerate(data.get("tiers", [])) if name in tier]
            if found:
                sections[name] = section.parse(found, problems)
        elif name in data:
            sections[name] = section.parse(data[name], problems)
    return sections


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"


def _expand(value: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand ${VAR} and ${VAR:-default}; returns the text and the names that were unset."""
    missing: list[str] = []

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if environ.get(name):
            return environ[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    return _ENV_REFERENCE.sub(replace, value), missing


def _provider_variable(provider_slug: str) -> str:
    return f"{provider_slug.upper().replace('-', '_')}_API_KEY"


def _resolve_key(raw: str | None, provider_slug: str, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """An absent key, or one naming an unset variable, falls back to <PROVIDER>_API_KEY. Returns the key, or
    None and why the file gives none."""
    unset: list[str] = []
    if raw:
        key, unset = _expand(raw, environ)
        if not unset and key:
            return key, ""
    variable = _provider_variable(provider_slug)
    if environ.get(variable):
        return environ[variable], ""
    return None, ", ".join(dict.fromkeys([*unset, variable])) + " unset"


def model_id_derive(upstream_model: str) -> str:
    """The public id of a model that names none: its upstream name in lower case, dots kept (`gpt-4.1`), every
    other run of characters outside [a-z0-9._-] a dash. May be empty (`模型`): the caller refuses that."""
    return _NOT_IN_ID.sub("-", upstream_model.lower()).strip("-._")


def _schema_problems(data: Any) -> list[str]:
    # Imported here: only `load_models` validates, and jsonschema costs every app process about 5 MB.
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA_PATH.read_text())
    errors = sorted(Draft202012Validator(schema).iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_path(error.absolute_path)}: {error.message}" for error in errors]


def _tiers_parse(data: Any, *, known_tiers: list[TierEntry], problems: list[str]) -> list[TierEntry]:
    tiers = [TierEntry(t["slug"], t["name"], t["rank"], t.get("description", "")) for t in data.get("tiers", [])]
    slugs = {tier.slug for tier in tiers}
    # Tiers are matched by slug and a rank belongs to one tier: a stored tier the file leaves out keeps its rank.
    held = {tier.rank: tier.slug for tier in known_tiers if tier.slug not in slugs}
    for index, tier in enumerate(tiers):
        if [t.slug for t in tiers].count(tier.slug) > 1:
            problems.append(f'tiers[{index}].slug: duplicate tier "{tier.slug}"')
        if [t.rank for t in tiers].count(tier.rank) > 1:
            problems.append(f"tiers[{index}].rank: duplicate rank {tier.rank}")
        elif tier.rank in held:
            problems.append(
                f'tiers[{index}].rank: rank {tier.rank} is held by tier "{held[tier.rank]}", which is not in this file '
                f'(tiers are matched by slug): keep "{held[tier.rank]}" in the file, or give it another rank or '
                "delete it in admin first"
            )
    return tiers


def _providers_parse(data: Any, *, environ: Mapping[str, str], problems: list[str]) -> list[ProviderEntry]:
    providers: list[ProviderEntry] = []
    for slug, config in data.get("provider_configs", {}).items():
        base_url, missing = _expand(config["base_url"], environ)
        problems += [f'provider_configs.{slug}.base_url: environment variable "{name}" is not set' for name in missing]
        api_key, no_key_reason = _resolve_key(config.get("api_key"), slug, environ)
        providers.append(ProviderEntry(
            slug=slug,
            display_name=config.get("display_name", slug),
            base_url=base_url,
            api_key=api_key,
            no_key_reason=no_key_reason,
            timeout_seconds=config.get("timeout", 60.0),
            connect_timeout_seconds=config.get("connect_timeout", 5.0),
            extra_headers=config.get("headers", {}),
        ))
    return providers


def _models_parse(data: Any, *, providers: list[ProviderEntry], tier_slugs: set[str], environ: Mapping[str, str],
                  problems: list[str]) -> list[ModelEntry]:
    provider_by_url = {p.base_url.rstrip("/"): p.slug for p in providers}
    provider_slugs = {p.slug for p in providers}
    models: list[ModelEntry] = []
    for index, item in enumerate(data["models"]):
        where = f"models[{index}]"
        base_url, missing = _expand(item.get("base_url", ""), environ)
        problems += [f'{where}.base_url: environment variable "{name}" is not set' for name in missing]
        provider = item.get("provider") or provider_by_url.get(base_url.rstrip("/"))
        if provider is None:
            problems.append(f"{where}.provider: no provider given and none in provider_configs has base URL {base_url!r}")
            continue
        if provider not in provider_slugs:
            problems.append(f'{where}.provider: unknown provider "{provider}"')
        for tier in item["allowed_tiers"]:
            if tier not in tier_slugs:
                problems.append(f'{where}.allowed_tiers: unknown tier "{tier}"')
        public_id = item.get("id") or model_id_derive(item["model"])
        if not public_id:
            problems.append(f'{where}.model: no id can be derived from "{item["model"]}": give the model an "id"')
        elif len(public_id) > MODEL_ID_MAX_LENGTH:
            problems.append(f"{where}.id: the id derived from the model name is longer than {MODEL_ID_MAX_LENGTH} "
                            'characters: give the model a shorter "id"')
        api_key, no_key_reason = (
            _resolve_key(item["api_key"], provider, environ) if item.get("api_key") else (None, "no api_key")
        )
        capabilities = item.get("capabilities", {})
        models.append(ModelEntry(
            public_id=public_id,
            display_name=item["display_name"],
            upstream_model=item["model"],
            provider=provider,
            base_url=base_url,
            api_key=api_key,
            no_key_reason=no_key_reason,
            allowed_tiers=list(item["allowed_tiers"]),
            enabled=item.get("enabled", True),
            supports_streaming=capabilities.get("streaming", True),
            supports_json_mode=capabilities.get("json_mode", False),
            supports_tools=capabilities.get("tools", False),
            supports_vision=capabilities.get("vision", False),
            context_window=item.get("context_window", 8192),
            input_price_per_million=Decimal(str(item.get("input_price_per_million", 0))),
            output_price_per_million=Decimal(str(item.get("output_price_per_million", 0))),
            fallbacks=[] if item.get("fallbacks") == "auto" else list(item.get("fallbacks", [])),
            fallbacks_auto=item.get("fallbacks") == "auto",
            kind=item.get("kind", "chat"),
            request_params=dict(item.get("request_params", {})),
            api=item.get("api", "chat"),
        ))
        problems += request_params_problems(item.get("request_params", {}), where=f"{where}.request_params")

    model_ids = [m.public_id for m in models]
    for index, (model, item) in enumerate(zip(models, data["models"], strict=False)):
        if model.public_id and model_ids.count(model.public_id) > 1:
            derived = "" if item.get("id") else f' (derived from model "{item["model"]}")'
            problems.append(f'models[{index}].id: duplicate model id "{model.public_id}"{derived}')
        for position, fallback in enumerate(model.fallbacks):
            if fallback == model.public_id:
                problems.append(f"models[{index}].fallbacks[{position}]: a model cannot fall back to itself")
            elif fallback not in model_ids:
                problems.append(f'models[{index}].fallbacks[{position}]: unknown model "{fallback}"')
            elif (other := models[model_ids.index(fallback)]).kind != model.kind:
                problems.append(f'models[{index}].fallbacks[{position}]: "{fallback}" is of kind {other.kind} and '
                                f'"{model.public_id}" of kind {model.kind}: a fallback must be of the same kind')
    return models



def _defaults_parse(data: Any, *, models: list[ModelEntry], tiers: list[TierEntry], problems: list[str],
                    warnings: list[str]) -> tuple[str | None, dict[str, str]]:
    """The global and per-tier defaults. A default must be able to serve: a disabled one, or a tier's default
    the tier may not use, is refused; a global default some tier without its own default may not use is a warning
    (that tier's users get the first model they may use)."""
    default = data.get("default_model")
    if isinstance(default, str) or default is None:
        default_model, tier_defaults, global_path = default, {}, "default_model"
    else:
        default_model, tier_defaults, global_path = default.get("global"), dict(default.get("tiers", {})), \
            "default_model.global"
    by_id = {model.public_id: model for model in models}
    rank_of = {tier.slug: tier.rank for tier in tiers}

    def required_tier(model: ModelEntry) -> TierEntry | None:
        allowed = [tier for tier in tiers if tier.slug in model.allowed_tiers]
        return min(allowed, key=lambda tier: tier.rank, default=None)

    def check(path: str, model_id: str, tier_slug: str | None) -> None:
        model = by_id.get(model_id)
        if model is None:
            problems.append(f'{path}: unknown model "{model_id}"')
            return
        if not model.enabled:
            problems.append(f'{path}: model "{model_id}" is disabled')
        if model.kind != "chat":
            problems.append(f'{path}: model "{model_id}" is an {model.kind} model: a default must be a chat model')
        if tier_slug is None or tier_slug not in rank_of:
            return
        needed = required_tier(model)
        if needed is None or rank_of[tier_slug] < needed.rank:
            needs = f'it needs tier "{needed.slug}" or higher' if needed else "no tier may use it"
            problems.append(f'{path}: model "{model_id}" is not available to tier "{tier_slug}" ({needs})')

    if default_model is not None:
        check(global_path, default_model, None)
    for tier, model_id in tier_defaults.items():
        if tier not in rank_of:
            problems.append(f'default_model.tiers.{tier}: unknown tier "{tier}"')
        check(f"default_model.tiers.{tier}", model_id, tier)
    if default_model in by_id and not problems:
        needed = required_tier(by_id[default_model])
        unserved = [t.slug for t in tiers if t.slug not in tier_defaults and (needed is None or t.rank < needed.rank)]
        if unserved:
            warnings.append(f'{global_path}: model "{default_model}" is not available to tier(s) '
                            f"{', '.join(unserved)}, which have no default of their own: their users get the first "
                            "model they may use")
    return default_model, tier_defaults


def registry_file_parse(
    data: Any, *, environ: Mapping[str, str] | None = None, known_tiers: list[TierEntry] = ()
) -> RegistryFile:
    """`known_tiers` are the stored tiers: those a file without a `tiers` section refers to, and whose ranks a
    file's tiers may not take."""
    environ = os.environ if environ is None else environ
    problems = _schema_problems(data)
    if problems:
        raise RegistryFileInvalid(problems)

    warnings: list[str] = []
    tiers = _tiers_parse(data, known_tiers=list(known_tiers), problems=problems)
    providers = _providers_parse(data, environ=environ, problems=problems)
    models = _models_parse(data, providers=providers, tier_slugs={t.slug for t in tiers or known_tiers},
                           environ=environ, problems=problems)
    problems += tiers_quota_parse(data, tiers, model_ids={model.public_id for model in models})
    default_model, tier_defaults = _defaults_parse(data, models=models, tiers=tiers or list(known_tiers),
                                                   problems=problems, warnings=warnings)
    sections = _sections_parse(data, problems)
    if problems:
        raise RegistryFileInvalid(problems)
    return RegistryFile(tiers=tiers, providers=providers, models=models, default_model=default_model,
                        tier_defaults=tier_defaults, warnings=warnings, sections=sections)


def registry_file_read(path: Path, **kwargs: Any) -> RegistryFile:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        problem = f"(root): not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        raise RegistryFileInvalid([problem]) from None
    return registry_file_parse(data, **kwargs)


def registry_file_from_legacy_env(environ: Mapping[str, str] | None = None, *, known_tiers: list[TierEntry]) -> RegistryFile:
    """Old deployments configured one model with OPENAI_API_KEY / OPENAI_BASE_URL / LLM_MODEL."""
    environ = os.environ if environ is None else environ
    model = environ.get("LLM_MODEL") or LEGACY_MODEL
    tiers = known_tiers or [TierEntry("free", "Free", 0)]
    base_url = environ.get("OPENAI_BASE_URL") or LEGACY_BASE_URL
    provider = ProviderEntry(slug=LEGACY_PROVIDER, display_name="OpenAI", base_url=base_url,
                             api_key=environ.get("OPENAI_API_KEY") or None, no_key_reason="OPENAI_API_KEY unset")
    entry = ModelEntry(public_id=model_id_derive(model) or model_id_derive(LEGACY_MODEL), display_name=model,
                       upstream_model=model, provider=LEGACY_PROVIDER, base_url="", api_key=None,
                       allowed_tiers=[t.slug for t in tiers])
    return RegistryFile(tiers=list(tiers), providers=[provider], models=[entry], default_model=entry.public_id,
                        tier_defaults={})
