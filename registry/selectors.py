"""Reads of the model registry, served from an in-memory snapshot (no query once warm)."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings

from llmhub.crypto import secret_decrypt
from llmhub.errors import NotFound, TierRequired
from llmhub.snapshot import LocalSnapshot
from registry.models import LLMModel, Tier, UserLLMConfig

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

    @property
    def key(self) -> str:
        """Unique across registry and users' models (two users may both own a 'my-model')."""
        return f"user:{self.owner_id}:{self.id}" if self.owner_id is not None else self.id

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


def _registry_build() -> Registry:
    tiers = {tier.slug: TierSpec(tier.slug, tier.name, tier.rank) for tier in Tier.objects.all()}
    tier_default_ids = dict(
        Tier.objects.filter(default_model__isnull=False).values_list("slug", "default_model__public_id")
    )
    models: dict[str, ModelSpec] = {}
    default_model_id = None
    queryset = LLMModel.objects.select_related("provider").prefetch_related("allowed_tiers", "fallback_links__fallback")
    for row in queryset:
        provider = row.provider
        allowed = sorted((tiers[tier.slug] for tier in row.allowed_tiers.all()), key=lambda tier: tier.rank)
        capabilities = frozenset(name for name in CAPABILITIES if getattr(row, f"supports_{name}"))
        models[row.public_id] = ModelSpec(
            id=row.public_id,
            pk=row.pk,
            display_name=row.display_name,
            upstream_model=row.upstream_model,
            provider=provider.slug,
            provider_name=provider.display_name,
            base_url=(row.base_url or provider.base_url).rstrip("/"),
            api_key=secret_decrypt(row.api_key_encrypted or provider.api_key_encrypted),
            timeout=provider.timeout_seconds,
            connect_timeout=provider.connect_timeout_seconds,
            headers=dict(provider.extra_headers or {}),
            allowed_tiers=tuple(tier.slug for tier in allowed),
            required_tier=allowed[0] if allowed else None,
            enabled=row.enabled,
            capabilities=capabilities,
            context_window=row.context_window,
            input_price_per_million=row.input_price_per_million,
            output_price_per_million=row.output_price_per_million,
            fallbacks=tuple(link.fallback.public_id for link in row.fallback_links.all()),
        )
        if row.is_default:
            default_model_id = row.public_id
    return Registry(tiers=tiers, models=models, default_model_id=default_model_id, tier_default_ids=tier_default_ids,
                    user_models=_user_models_build(tiers))


def _user_models_build(tiers: Mapping[str, TierSpec]) -> dict[int, dict[str, ModelSpec]]:
    ordered = sorted(tiers.values(), key=lambda tier: tier.rank)
    user_models: dict[int, dict[str, ModelSpec]] = {}
    for row in UserLLMConfig.objects.filter(enabled=True):
        capabilities = frozenset(name for name in CAPABILITIES if getattr(row, f"supports_{name}"))
        user_models.setdefault(row.owner_id, {})[row.slug] = ModelSpec(
            id=row.slug,
            pk=row.pk,
            display_name=row.display_name,
            upstream_model=row.upstream_model,
            provider="user",
            provider_name="Your models",
            base_url=row.base_url.rstrip("/"),
            api_key=secret_decrypt(row.api_key_encrypted),
            timeout=settings.LLMHUB["USER_MODEL_TIMEOUT_SECONDS"],
            connect_timeout=min(5.0, settings.LLMHUB["USER_MODEL_TIMEOUT_SECONDS"]),
            headers={},
            # The owner's tier applies: any tier may use an own model, its limits still count.
            allowed_tiers=tuple(tier.slug for tier in ordered),
            required_tier=ordered[0] if ordered else None,
            enabled=row.enabled,
            capabilities=capabilities,
            context_window=row.context_window,
            input_price_per_million=row.input_price_per_million,
            output_price_per_million=row.output_price_per_million,
            fallbacks=(),
            owner_id=row.owner_id,
        )
    return user_models


registry_snapshot: LocalSnapshot[Registry] = LocalSnapshot("registry", _registry_build)
# Memo of hub API keys and users' tiers (filled by registry.authentication), emptied on any change.
api_key_snapshot: LocalSnapshot[dict] = LocalSnapshot("api-keys", dict)


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
