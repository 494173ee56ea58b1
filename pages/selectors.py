"""Reads behind the pages: the models a user sees, grouped, each with its status; a model's tests."""

from dataclasses import dataclass
from itertools import groupby

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.utils import timezone

from registry.health import HealthSpec, model_status, model_status_of
from registry.models import LLMModel, ModelTest, UserLLMConfig
from registry.selectors import ModelSpec, Registry, TierSpec, user_model_get

REGISTRY, MINE = "registry", "mine"


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One model as a page shows it. `ref` ("registry/demo", "mine/demo") names it in URLs and in the DOM:
    a user's own model may share its id with a registry model."""

    model: ModelSpec
    ref: str
    allowed: bool
    health: HealthSpec

    @property
    def status_title(self) -> str:
        return health_title(self.health)


def health_title(health: HealthSpec) -> str:
    """The hover text of a status dot: the status, when it was last checked, the latency then."""
    parts = [health.status.capitalize()]
    if health.last_checked_at is None:
        parts.append("never checked")
    else:
        parts.append(f"last checked {timezone.localtime(health.last_checked_at):%Y-%m-%d %H:%M:%S %Z}")
    if health.last_latency_ms is not None:
        parts.append(f"{health.last_latency_ms:.0f} ms")
    return " · ".join(parts)


def model_rows(*, registry: Registry, tier: TierSpec, owner_id: int) -> list[ModelRow]:
    """Every enabled registry model that some tier may use (those above `tier` marked not allowed), then the
    owner's own enabled models."""
    rows = [ModelRow(model, f"{REGISTRY}/{model.id}", model.allows(tier), model_status(model))
            for model in registry.models.values() if model.enabled and model.required_tier is not None]
    rows += [ModelRow(model, f"{MINE}/{model.id}", True, model_status(model))
             for model in registry.own_models(owner_id).values()]
    return rows


def model_groups(rows: list[ModelRow]) -> list[tuple[str, list[ModelRow]]]:
    """Rows grouped by provider, registry providers first, in the registry's order."""
    return [(name, list(group)) for name, group in groupby(rows, key=lambda row: row.model.provider_name)]


def own_models_list(*, owner: AbstractBaseUser) -> QuerySet[UserLLMConfig]:
    return UserLLMConfig.objects.filter(owner=owner).order_by("display_name", "slug")


def statuses(*, registry: Registry, tier: TierSpec, owner: AbstractBaseUser) -> dict[str, dict[str, str]]:
    """`ref` → status and hover text of every model the picker and the management page show (own models that
    are disabled too)."""
    shown = {row.ref: row.health for row in model_rows(registry=registry, tier=tier, owner_id=owner.pk)}
    for config in own_models_list(owner=owner):
        shown.setdefault(f"{MINE}/{config.slug}", model_status_of(config))
    return {ref: {"status": health.status, "title": health_title(health)} for ref, health in shown.items()}


def test_target(*, kind: str, model_id: str, registry: Registry, tier: TierSpec,
                owner: AbstractBaseUser) -> LLMModel | UserLLMConfig | None:
    """The model a user may test and see the tests of: their own, or a registry model their tier allows."""
    if kind == MINE:
        return user_model_get(owner_id=owner.pk, model_id=model_id)
    spec = registry.models.get(model_id)
    if spec is None or not spec.enabled or not spec.allows(tier):
        return None
    return LLMModel.objects.filter(pk=spec.pk).first()


def test_visible_get(*, test_id: int, registry: Registry, tier: TierSpec,
                     owner: AbstractBaseUser) -> ModelTest | None:
    """A test of a model the user may test (see `test_target`)."""
    test = ModelTest.objects.select_related("llm_model", "user_model").filter(pk=test_id).first()
    if test is None:
        return None
    if test.user_model_id is not None:
        return test if test.user_model.owner_id == owner.pk else None
    target = test_target(kind=REGISTRY, model_id=test.llm_model.public_id, registry=registry, tier=tier, owner=owner)
    return test if target is not None else None


def test_target_ref(test: ModelTest) -> str:
    if test.user_model_id is not None:
        return f"{MINE}/{test.user_model.slug}"
    return f"{REGISTRY}/{test.llm_model.public_id}"
