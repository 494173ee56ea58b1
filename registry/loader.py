"""Reading and validating the registry fixture (fixtures/llm_models.json).

`registry_file_parse` turns a file into a `RegistryFile` or raises `RegistryFileInvalid` listing every
problem by its JSON path; it never touches the database. `registry.services.registry_sync` applies it.
"""

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils.text import slugify
from jsonschema import Draft202012Validator

from registry.limits import LimitSpec, tiers_quota_parse

SCHEMA_PATH = Path(settings.BASE_DIR) / "fixtures" / "llm_models.schema.json"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

LEGACY_PROVIDER = "openai"
LEGACY_BASE_URL = "https://api.openai.com/v1"
LEGACY_MODEL = "gpt-4o-mini"


class RegistryFileInvalid(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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
    api_key: str = field(repr=False)
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 5.0
    extra_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelEntry:
    public_id: str
    display_name: str
    upstream_model: str
    provider: str
    base_url: str
    api_key: str = field(repr=False)
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


@dataclass
class RegistryFile:
    tiers: list[TierEntry]
    providers: list[ProviderEntry]
    models: list[ModelEntry]
    default_model: str | None
    tier_defaults: dict[str, str]


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


def _env_key(provider_slug: str, environ: Mapping[str, str]) -> str:
    return environ.get(f"{provider_slug.upper().replace('-', '_')}_API_KEY", "")


def _resolve_key(raw: str | None, provider_slug: str, environ: Mapping[str, str]) -> str:
    """An absent key, or one naming an unset variable, falls back to <PROVIDER>_API_KEY."""
    if raw:
        key, missing = _expand(raw, environ)
        if not missing and key:
            return key
    return _env_key(provider_slug, environ)


def _schema_problems(data: Any) -> list[str]:
    schema = json.loads(SCHEMA_PATH.read_text())
    errors = sorted(Draft202012Validator(schema).iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_path(error.absolute_path)}: {error.message}" for error in errors]


def registry_file_parse(
    data: Any, *, environ: Mapping[str, str] | None = None, known_tiers: list[TierEntry] = ()
) -> RegistryFile:
    environ = os.environ if environ is None else environ
    problems = _schema_problems(data)
    if problems:
        raise RegistryFileInvalid(problems)

    tiers = [TierEntry(t["slug"], t["name"], t["rank"], t.get("description", "")) for t in data.get("tiers", [])]
    for index, tier in enumerate(tiers):
        if [t.slug for t in tiers].count(tier.slug) > 1:
            problems.append(f'tiers[{index}].slug: duplicate tier "{tier.slug}"')
        if [t.rank for t in tiers].count(tier.rank) > 1:
            problems.append(f"tiers[{index}].rank: duplicate rank {tier.rank}")
    tier_slugs = {t.slug for t in tiers or known_tiers}

    providers: list[ProviderEntry] = []
    for slug, config in data.get("provider_configs", {}).items():
        base_url, missing = _expand(config["base_url"], environ)
        problems += [f'provider_configs.{slug}.base_url: environment variable "{name}" is not set' for name in missing]
        providers.append(ProviderEntry(
            slug=slug,
            display_name=config.get("display_name", slug),
            base_url=base_url,
            api_key=_resolve_key(config.get("api_key"), slug, environ),
            timeout_seconds=config.get("timeout", 60.0),
            connect_timeout_seconds=config.get("connect_timeout", 5.0),
            extra_headers=config.get("headers", {}),
        ))
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
        capabilities = item.get("capabilities", {})
        models.append(ModelEntry(
            public_id=item.get("id") or slugify(item["model"]),
            display_name=item["display_name"],
            upstream_model=item["model"],
            provider=provider,
            base_url=base_url,
            api_key=_resolve_key(item.get("api_key"), provider, environ) if "api_key" in item else "",
            allowed_tiers=list(item["allowed_tiers"]),
            enabled=item.get("enabled", True),
            supports_streaming=capabilities.get("streaming", True),
            supports_json_mode=capabilities.get("json_mode", False),
            supports_tools=capabilities.get("tools", False),
            supports_vision=capabilities.get("vision", False),
            context_window=item.get("context_window", 8192),
            input_price_per_million=Decimal(str(item.get("input_price_per_million", 0))),
            output_price_per_million=Decimal(str(item.get("output_price_per_million", 0))),
            fallbacks=list(item.get("fallbacks", [])),
        ))

    model_ids = [m.public_id for m in models]
    for index, model in enumerate(models):
        if model_ids.count(model.public_id) > 1:
            problems.append(f'models[{index}].id: duplicate model id "{model.public_id}"')
        for position, fallback in enumerate(model.fallbacks):
            if fallback == model.public_id:
                problems.append(f"models[{index}].fallbacks[{position}]: a model cannot fall back to itself")
            elif fallback not in model_ids:
                problems.append(f'models[{index}].fallbacks[{position}]: unknown model "{fallback}"')

    problems += tiers_quota_parse(data, tiers, model_ids=model_ids)

    default = data.get("default_model")
    default_model, tier_defaults = (default, {}) if isinstance(default, str) or default is None else (
        default.get("global"), dict(default.get("tiers", {}))
    )
    if default_model is not None and default_model not in model_ids:
        problems.append(f'default_model: unknown model "{default_model}"')
    for tier, model_id in tier_defaults.items():
        if tier not in tier_slugs:
            problems.append(f'default_model.tiers.{tier}: unknown tier "{tier}"')
        if model_id not in model_ids:
            problems.append(f'default_model.tiers.{tier}: unknown model "{model_id}"')

    if problems:
        raise RegistryFileInvalid(problems)
    return RegistryFile(tiers=tiers, providers=providers, models=models, default_model=default_model, tier_defaults=tier_defaults)


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
                             api_key=environ.get("OPENAI_API_KEY", ""))
    entry = ModelEntry(public_id=slugify(model), display_name=model, upstream_model=model, provider=LEGACY_PROVIDER,
                       base_url="", api_key="", allowed_tiers=[t.slug for t in tiers])
    return RegistryFile(tiers=list(tiers), providers=[provider], models=[entry], default_model=entry.public_id,
                        tier_defaults={})
