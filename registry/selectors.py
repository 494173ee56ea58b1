"""Reads of the model registry, served from an in-memory snapshot (no query once warm)."""

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from llmhub.crypto import secret_decrypt
from llmhub.db import db_read_in_thread
from llmhub.errors import ConfigurationError, NotFound, TierRequired
from llmhub.snapshot import LocalSnapshot
from registry.models import (
    ApiKey,
    LLMModel,
    ModelFallback,
    Provider,
    QuotaLimit,
    Tier,
    UserLLMConfig,
    UserModelPreferences,
)
from registry.params import NO_PARAMS, RequestParams, request_params_parse

logger = logging.getLogger(__name__)

CAPABILITIES = ("streaming", "json_mode", "tools", "vision")


@dataclass(frozen=True, slots=True)
class TierSpec:
    slug: str
    name: str
    rank: int


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything needed to authorise and call one model, decoupled from the ORM."""

    id: str
    pk: int
    display_name: str
    upstream_model: str
    provider: str
    provider_name: str
    base_url: str
    api_key: str = field(repr=False)
    timeout: float
    connect_timeout: float
    headers: Mapping[str, str]
    allowed_tiers: tuple[str, ...]
    required_tier: TierSpec | None
    enabled: bool
    capabilities: frozenset[str]
    context_window: int
    input_price_per_million: Decimal
    output_price_per_million: Decimal
    fallbacks: tuple[str, ...]
    owner_id: int | None = None
    kind: str = "chat"  # or "embedding"
    request_params: RequestParams = NO_PARAMS
    api: str = "chat"  # the upstream API: "chat" (/chat/completions) or "responses" (/responses)
    fallbacks_auto: bool = False  # fall back to equivalent models (routing/policies.py) instead of `fallbacks`
    # Unique across registry and users' models (two users may both own a 'my-model'). Stored, not a property: the
    # router reads it for every candidate of every request.
    key: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"user:{self.owner_id}:{self.id}" if self.owner_id is not None else self.id)

    @property
    def owned(self) -> bool:
        return self.owner_id is not None

    def allows(self, tier: TierSpec) -> bool:
        # Any tier ranked at or above the lowest allowed tier may use the model.
        return self.required_tier is not None and tier.rank >= self.required_tier.rank


@dataclass(frozen=True, slots=True)
class Registry:
    tiers: Mapping[str, TierSpec]
    models: Mapping[str, ModelSpec]
    default_model_id: str | None
    tier_default_ids: Mapping[str, str]
    # Users' own models: owner id → model id → model. Only their owner ever resolves them.
    user_models: Mapping[int, Mapping[str, ModelSpec]] = field(default_factory=dict)

    def own_models(self, owner_id: int | None) -> Mapping[str, ModelSpec]:
        return self.user_models.get(owner_id, {}) if owner_id is not None else {}

    @property
    def lowest_tier(self) -> TierSpec | None:
        return min(self.tiers.values(), key=lambda tier: tier.rank, default=None)


def _key_or_blank(token: str, *, model: str) -> str:
    """One key that no configured encryption key opens must not take every model down: that model gets
    no key (its upstream answers 401, so requests to it fail as misconfigured) and the operator is told."""
    try:
        return secret_decrypt(token)
    except ConfigurationError:
        logger.error("The stored API key of %s cannot be decrypted with LLMHUB_ENCRYPTION_KEYS; re-enter it.", model)
        return ""


def _traits(row: LLMModel | UserLLMConfig) -> dict:
    """The ModelSpec fields a registry model and a user's own model fill alike (their ModelTraits)."""
    return {
        "pk": row.pk,
        "display_name": row.display_name,
        "upstream_model": row.upstream_model,
        "enabled": row.enabled,
        "capabilities": frozenset(name for name in CAPABILITIES if getattr(row, f"supports_{name}")),
        "context_window": row.context_window,
        "input_price_per_million": row.input_price_per_million,
        "output_price_per_million": row.output_price_per_million,
    }


def _registry_build() -> Registry:
    # Every query reads whole tables: prefetching by id would send one parameter per model, which SQLite refuses
    # for a large registry ("Expression tree is too large"). Their number and size do not grow with the models.
    tier_rows = list(Tier.objects.all())
    tiers = {tier.slug: TierSpec(tier.slug, tier.name, tier.rank) for tier in tier_rows}
    tier_by_pk = {tier.pk: tiers[tier.slug] for tier in tier_rows}
    providers = {provider.pk: provider for provider in Provider.objects.all()}
    rows = list(LLMModel.objects.all())
    public_ids = {row.pk: row.public_id for row in rows}
    tier_default_ids = {tier.slug: public_ids[tier.default_model_id] for tier in tier_rows
                        if tier.default_model_id in public_ids}
    allowed_by_model: dict[int, list[TierSpec]] = {}
    for model_pk, tier_pk in LLMModel.allowed_tiers.through.objects.values_list("llmmodel_id", "tier_id"):
        allowed_by_model.setdefault(model_pk, []).append(tier_by_pk[tier_pk])
    fallbacks_by_model: dict[int, list[str]] = {}
    for model_pk, fallback_pk in ModelFallback.objects.order_by("model_id", "position", "pk").values_list(
            "model_id", "fallback_id"):
        fallbacks_by_model.setdefault(model_pk, []).append(public_ids[fallback_pk])

    decrypted: dict[str, str] = {}  # most models share their provider's key: decrypted once

    def key_of(token: str, model: str) -> str:
        if token not in decrypted:
            decrypted[token] = key = _key_or_blank(token, model=model)
            return key
        return decrypted[token]

    models: dict[str, ModelSpec] = {}
    default_model_id = None
    for row in rows:
        provider = providers[row.provider_id]
        allowed = sorted(allowed_by_model.get(row.pk, ()), key=lambda tier: tier.rank)
        models[row.public_id] = ModelSpec(
            **_traits(row),
            id=row.public_id,
            provider=provider.slug,
            provider_name=provider.display_name,
            base_url=(row.base_url or provider.base_url).rstrip("/"),
            api_key=key_of(row.api_key_encrypted or provider.api_key_encrypted, row.public_id),
            timeout=provider.timeout_seconds,
            connect_timeout=provider.connect_timeout_seconds,
            headers=dict(provider.extra_headers or {}),
            allowed_tiers=tuple(tier.slug for tier in allowed),
            required_tier=allowed[0] if allowed else None,
            fallbacks=tuple(fallbacks_by_model.get(row.pk, ())),
            kind=row.kind,
            request_params=request_params_parse(row.request_params),
            api=row.api,
            fallbacks_auto=row.fallbacks_auto,
        )
        if row.is_default:
            default_model_id = row.public_id
    return Registry(tiers=tiers, models=models, default_model_id=default_model_id, tier_default_ids=tier_default_ids,
                    user_models=_user_models_build(tiers))


def _user_models_build(tiers: Mapping[str, TierSpec]) -> dict[int, dict[str, ModelSpec]]:
    ordered = sorted(tiers.values(), key=lambda tier: tier.rank)
    user_models: dict[int, dict[str, ModelSpec]] = {}
    for row in UserLLMConfig.objects.filter(enabled=True):
        user_models.setdefault(row.owner_id, {})[row.slug] = ModelSpec(
            **_traits(row),
            id=row.slug,
            provider="user",
            provider_name="Your models",
            base_url=row.base_url.rstrip("/"),
            api_key=_key_or_blank(row.api_key_encrypted, model=f"user model {row.pk}"),
            timeout=settings.LLMHUB["USER_MODEL_TIMEOUT_SECONDS"],
            connect_timeout=min(5.0, settings.LLMHUB["USER_MODEL_TIMEOUT_SECONDS"]),
            headers={},
            # The owner's tier applies: any tier may use an own model, its limits still count.
            allowed_tiers=tuple(tier.slug for tier in ordered),
            required_tier=ordered[0] if ordered else None,
            fallbacks=(),
            owner_id=row.owner_id,
        )
    return user_models


registry_snapshot: LocalSnapshot[Registry] = LocalSnapshot("registry", _registry_build)
# Memo of hub API keys, users' tiers (filled by registry.authentication) and preferences, emptied on any change.
api_key_snapshot: LocalSnapshot[dict] = LocalSnapshot("api-keys", dict)
_MEMO_LIMIT = 50_000


def memo_put(memo: dict, key: Any, value: Any) -> None:
    """Adds to the memo of `api_key_snapshot`, within one bound for all it holds."""
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value


def registry_get() -> Registry:
    return registry_snapshot.get()


def get_model_by_id(model_id: str, *, registry: Registry | None = None, owner_id: int | None = None) -> ModelSpec:
    """A registry model, or one of `owner_id`'s own models (which take precedence for their owner).
    Another user's model is as unknown as a model that does not exist."""
    registry = registry or registry_get()
    model = registry.own_models(owner_id).get(model_id) or registry.models.get(model_id)
    if model is None or not model.enabled:
        raise NotFound(f"The model '{model_id}' does not exist.", code="model_not_found")
    return model


def check_model_access(user_tier: TierSpec, model: ModelSpec) -> None:
    if model.allows(user_tier):
        return
    required = model.required_tier
    if required is None:
        raise TierRequired(f"The model '{model.id}' is not available to any tier.", extra={"required_tier": None})
    raise TierRequired(
        f"The model '{model.id}' requires the {required.name} tier or higher; your tier is {user_tier.name}.",
        extra={"required_tier": required.slug, "your_tier": user_tier.slug},
    )


def get_available_models(tier: TierSpec, *, registry: Registry | None = None,
                         owner_id: int | None = None) -> list[ModelSpec]:
    """The registry models the tier may use, then the owner's own models."""
    registry = registry or registry_get()
    shared = [model for model in registry.models.values() if model.enabled and model.allows(tier)]
    return shared + list(registry.own_models(owner_id).values())


def get_default_model(tier: TierSpec, *, registry: Registry | None = None) -> ModelSpec | None:
    """The tier's default, else the global default, else the first model the tier may use."""
    registry = registry or registry_get()
    for model_id in (registry.tier_default_ids.get(tier.slug), registry.default_model_id):
        model = registry.models.get(model_id) if model_id else None
        if model is not None and model.enabled and model.allows(tier):
            return model
    available = get_available_models(tier, registry=registry)
    return available[0] if available else None


def get_usable_model(model_id: str | None, *, tier: TierSpec, registry: Registry | None = None,
                     owner_id: int | None = None) -> ModelSpec | None:
    """The model `model_id` names when the caller may use it (one of their own, or a registry model their tier
    allows), else None: for preferences, which fall back quietly rather than fail a request."""
    if not model_id:
        return None
    registry = registry or registry_get()
    model = registry.own_models(owner_id).get(model_id) or registry.models.get(model_id)
    return model if model is not None and model.enabled and model.allows(tier) else None


def user_model_get(*, owner_id: int, model_id: str) -> UserLLMConfig | None:
    """One of the owner's models (enabled or not); another user's is as absent as one that does not exist."""
    return UserLLMConfig.objects.filter(owner_id=owner_id, slug=model_id).first()


# --- Status ---------------------------------------------------------------------------------------------

UNKNOWN_STATUS = MappingProxyType({
    "status": "unknown", "last_checked_at": None, "last_latency_ms": None,
    "breaker": MappingProxyType({"state": "closed", "reason": "", "since": None, "retry_at": None,
                                 "cooled_until": None}),
})
# What is known of a model's health is the health app's: it installs its reader here as it starts (health/apps.py),
# the registry importing no app above it. Without one every model is "unknown".
_status_reader: Callable[[ModelSpec], Any] | None = None


def model_status_reader_install(reader: Callable[[ModelSpec], Any]) -> None:
    """Makes `reader(model)` (an object or mapping with the fields of the API's model status) the source of the
    models' status."""
    global _status_reader
    _status_reader = reader


def model_status_read(model: ModelSpec | None) -> Any:
    """The status of a model the registry serves (None: a model it does not, such as a disabled one)."""
    if model is None or _status_reader is None:
        return UNKNOWN_STATUS
    return _status_reader(model)


# --- Preferences ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PreferencesSpec:
    """A user's default model, default per task type and favourites (model ids, unchecked: they are checked
    when saved, and a model that left since is skipped when used)."""

    default_model: str = ""
    task_defaults: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    favourites: tuple[str, ...] = ()

    def preferred_order(self, task: str) -> tuple[str, ...]:
        """The models to use for `task` when a request names none, the first usable one wins: its task default,
        then the default (the tier's comes after them)."""
        return tuple(dict.fromkeys(model_id for model_id in (self.task_defaults.get(task), self.default_model)
                                   if model_id))


NO_PREFERENCES = PreferencesSpec()


def _preferences_key(user_id: int) -> tuple[str, int]:
    return ("preferences", user_id)


def preferences_get(user_id: int | None) -> PreferencesSpec:
    """The user's preferences, memoised beside their API keys (query-free once warm; emptied on any change)."""
    if user_id is None:
        return NO_PREFERENCES
    memo = api_key_snapshot.get()
    spec = memo.get(_preferences_key(user_id))
    if spec is not None:
        return spec
    row = UserModelPreferences.objects.filter(user_id=user_id).first()
    spec = NO_PREFERENCES if row is None else PreferencesSpec(
        default_model=row.default_model,
        task_defaults=MappingProxyType({task: model_id for task, model_id in (row.task_defaults or {}).items()
                                        if task in UserModelPreferences.TASK_TYPES and model_id}),
        favourites=tuple(row.favourites or ()),
    )
    memo_put(memo, _preferences_key(user_id), spec)
    return spec


async def apreferences_get(user_id: int | None) -> PreferencesSpec:
    """`preferences_get` for an event loop: a warm memo is read in place, a cold one in a thread."""
    if user_id is None:
        return NO_PREFERENCES
    memo = await api_key_snapshot.aget()
    spec = memo.get(_preferences_key(user_id))
    if spec is not None:
        return spec
    return await db_read_in_thread(preferences_get)(user_id)


# --- Hub API keys ---------------------------------------------------------------------------------------------

def api_keys_list(*, user: AbstractBaseUser) -> QuerySet[ApiKey]:
    """The user's keys, newest first, with their own limits (never their hash: it is not selected)."""
    return (ApiKey.objects.filter(user=user).defer("key_hash").order_by("-created_at", "-pk")
            .prefetch_related(Prefetch("limits", queryset=QuotaLimit.objects.order_by("pk"))))


def api_key_own_get(*, user: AbstractBaseUser, key_id: int) -> ApiKey:
    """One of the user's keys; another user's is as unknown as a missing one (404)."""
    api_key = api_keys_list(user=user).filter(pk=key_id).first()
    if api_key is None:
        raise NotFound("No such API key.")
    return api_key


def api_keys_in_use(*, user: AbstractBaseUser) -> QuerySet[ApiKey]:
    """The user's keys that still authenticate: neither revoked nor expired."""
    return ApiKey.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()), user=user,
                                 revoked_at__isnull=True)


API_KEY_STATES = ["active", "expired", "revoked"]


def api_key_state(api_key: ApiKey) -> str:
    """"revoked", "expired" or "active"."""
    if api_key.revoked_at is not None:
        return "revoked"
    if api_key.expires_at is not None and api_key.expires_at <= timezone.now():
        return "expired"
    return "active"
