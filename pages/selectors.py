"""Reads behind the pages: the models a user sees, grouped, each with its status; a model's tests."""

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import groupby

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from health.models import ModelTest
from health.status import HealthSpec, model_status, model_status_of
from llmhub.crypto import secret_decrypt
from llmhub.errors import ConfigurationError
from registry.models import LLMModel, UserLLMConfig, UserModelPreferences
from registry.selectors import (
    CAPABILITIES,
    ModelSpec,
    PreferencesSpec,
    Registry,
    TierSpec,
    get_default_model,
    get_usable_model,
    user_model_get,
)

REGISTRY, MINE = "registry", "mine"


def ref_of(kind: str, model_id: str) -> str:
    """How pages name a model in URLs and in the DOM: "registry/demo", "mine/demo" (an own model may share its id
    with a registry model)."""
    return f"{kind}/{model_id}"


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One model as the picker shows it."""

    model: ModelSpec
    kind: str
    allowed: bool
    health: HealthSpec
    badges: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return ref_of(self.kind, self.model.id)

    @property
    def status_title(self) -> str:
        return health_title(self.health)

    @property
    def capabilities(self) -> list[str]:
        return [name for name in CAPABILITIES if name in self.model.capabilities]


def health_title(health: HealthSpec) -> str:
    """The hover text of a status dot: the status, when it was last checked, the latency then."""
    parts = [health.status.capitalize()]
    if health.last_checked_at is None:
        parts.append("never checked")
    else:
        parts.append(f"last checked {timezone.localtime(health.last_checked_at):%Y-%m-%d %H:%M:%S %Z}")
    if health.last_latency_ms is not None:
        parts.append(f"{health.last_latency_ms:.0f} ms")
    if health.breaker.state != "closed":
        since = f" since {timezone.localtime(health.breaker.since):%Y-%m-%d %H:%M:%S %Z}" if health.breaker.since else ""
        parts.append(f"circuit breaker {health.breaker.state.replace('_', '-')}{since}: {health.breaker.reason}")
    if health.breaker.cooled_until is not None:
        parts.append(f"rate limited until {timezone.localtime(health.breaker.cooled_until):%H:%M:%S}")
    return " · ".join(parts)


def model_rows(*, registry: Registry, tier: TierSpec, owner_id: int,
               badges: Mapping[str, tuple[str, ...]] | None = None) -> list[ModelRow]:
    """Every enabled registry model that some tier may use (those above `tier` marked not allowed), then the
    owner's own enabled models. `badges`: labels by ref (see `preference_badges`)."""
    badges = badges or {}
    shared = [model for model in registry.models.values() if model.enabled and model.required_tier is not None]
    own = list(registry.own_models(owner_id).values())
    return [ModelRow(model, kind, kind == MINE or model.allows(tier), model_status(model),
                     badges.get(ref_of(kind, model.id), ()))
            for kind, models in ((REGISTRY, shared), (MINE, own)) for model in models]


def model_ref(model: ModelSpec) -> str:
    return ref_of(MINE if model.owned else REGISTRY, model.id)


def preference_badges(*, preferences: PreferencesSpec, default: ModelSpec | None, registry: Registry,
                      tier: TierSpec, owner_id: int) -> dict[str, tuple[str, ...]]:
    """Which model is the default (the one a request naming none gets) and which are a task's default."""
    badges: dict[str, list[str]] = {}
    if default is not None:
        badges.setdefault(model_ref(default), []).append("default")
    for task in UserModelPreferences.TASK_TYPES:
        model = get_usable_model(preferences.task_defaults.get(task), tier=tier, registry=registry, owner_id=owner_id)
        if model is not None:
            badges.setdefault(model_ref(model), []).append(task)
    return {ref: tuple(labels) for ref, labels in badges.items()}


def task_defaults_resolved(*, preferences: PreferencesSpec, tier: TierSpec, registry: Registry, owner_id: int,
                           tasks: tuple[str, ...]) -> dict[str, ModelSpec | None]:
    """The model a request of each task that names none gets: the first usable of the task's default and the
    user's default, else the tier's (as generation resolves it)."""
    return {task: next((model for model_id in preferences.preferred_order(task)
                        if (model := get_usable_model(model_id, tier=tier, registry=registry, owner_id=owner_id))),
                       None) or get_default_model(tier, registry=registry)
            for task in tasks}


def model_filters(rows: list[ModelRow]) -> dict[str, list[str]]:
    """The choices of the models page's filters: the providers and capabilities its rows have."""
    capabilities = {name for row in rows for name in row.capabilities}
    return {"providers": list(dict.fromkeys(row.model.provider_name for row in rows)),
            "capabilities": [name for name in CAPABILITIES if name in capabilities]}


def defaults_down(*, data: Mapping, registry: Registry, tier: TierSpec, owner_id: int) -> list[tuple[ModelSpec, HealthSpec]]:
    """The models a preferences form chooses as defaults (`data`, validated) that are Down now, each once."""
    task_defaults = data.get("task_defaults") or {}
    chosen = dict.fromkeys(filter(None, [data.get("default_model"), *task_defaults.values()]))
    found = []
    for model_id in chosen:
        model = get_usable_model(model_id, tier=tier, registry=registry, owner_id=owner_id)
        health = model_status(model) if model is not None else None
        if health is not None and health.status == "down":
            found.append((model, health))
    return found


def model_groups(rows: list[ModelRow]) -> list[tuple[str, list[ModelRow]]]:
    """Rows grouped by provider, registry providers first, in the registry's order."""
    return [(name, list(group)) for name, group in groupby(rows, key=lambda row: row.model.provider_name)]


@dataclass(frozen=True, slots=True)
class OwnModelRow:
    """One of the user's own models, enabled or not, as the management page shows it."""

    config: UserLLMConfig
    health: HealthSpec

    @property
    def ref(self) -> str:
        return ref_of(MINE, self.config.slug)

    @property
    def status_title(self) -> str:
        return health_title(self.health)

    @property
    def capabilities(self) -> list[str]:
        return [name for name in CAPABILITIES if getattr(self.config, f"supports_{name}")]


def stored_key_of(model: UserLLMConfig) -> str:
    """An own model's stored key, for a call to its own endpoint ("" when none, or when it cannot be decrypted)."""
    try:
        return secret_decrypt(model.api_key_encrypted) if model.api_key_encrypted else ""
    except ConfigurationError:
        return ""


def own_model_rows(*, owner: AbstractBaseUser) -> list[OwnModelRow]:
    configs = UserLLMConfig.objects.filter(owner=owner).order_by("display_name", "slug")
    return [OwnModelRow(config, model_status_of(config)) for config in configs]


def statuses(*, registry: Registry, tier: TierSpec, owner: AbstractBaseUser) -> dict[str, dict[str, str]]:
    """`ref` → status and hover text of every model the picker and the management page show."""
    shown = {row.ref: row.health for row in model_rows(registry=registry, tier=tier, owner_id=owner.pk)}
    shown.update((row.ref, row.health) for row in own_model_rows(owner=owner))
    return {ref: {"status": health.status, "title": health_title(health)} for ref, health in shown.items()}


def model_test_target(*, kind: str, model_id: str, registry: Registry, user: AbstractBaseUser) -> LLMModel | UserLLMConfig | None:
    """The model whose tests `user` may start and read: their own, or (staff only, as in the API) a registry model."""
    if kind == MINE:
        return user_model_get(owner_id=user.pk, model_id=model_id)
    spec = registry.models.get(model_id)
    if not user.is_staff or spec is None or not spec.enabled:
        return None
    return LLMModel.objects.filter(pk=spec.pk).first()


def model_test_visible_get(*, test_id: int, user: AbstractBaseUser) -> ModelTest | None:
    """A test of a model whose tests `user` may read (see `model_test_target`)."""
    test = ModelTest.objects.select_related("llm_model", "user_model").filter(pk=test_id).first()
    if test is None:
        return None
    if test.user_model_id is not None:
        return test if test.user_model.owner_id == user.pk else None
    return test if user.is_staff else None


def detected_capabilities_changes(test: ModelTest) -> dict[str, bool]:
    """What a finished test of an own model found that its configuration says otherwise: capability → found."""
    if test.user_model_id is None or test.state != ModelTest.State.SUCCEEDED:
        return {}
    model = test.user_model
    return {name: found for name in CAPABILITIES if isinstance(found := test.capabilities.get(name), bool)
            and found != getattr(model, f"supports_{name}")}


def model_test_ref(test: ModelTest) -> str:
    """The ref of the model a test tested."""
    if test.user_model_id is not None:
        return ref_of(MINE, test.user_model.slug)
    return ref_of(REGISTRY, test.llm_model.public_id)
