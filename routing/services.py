"""Routing one request: gathers the plain data the policies need (the tier's pool of models, precomputed per
registry snapshot; the tier's plan; expected latency and success) and runs the live policy and its shadow."""

import random
from collections.abc import Mapping, Sequence

from llmhub.errors import ApplicationError
from registry.selectors import ModelSpec, Registry, TierSpec
from routing.policies import TASKS, Health, ModelStats, Needs, PolicySpec, Route, expected, route
from routing.selectors import Plan
from routing.stats import stats_view
from usage.quotas import quota_remaining

# The endpoints whose requests are translations; every other one generates (unless the request says otherwise).
TRANSLATION_ENDPOINTS = ("api.translate", "pages.translate")
TASK_HEADER = "x-llmhub-task"

_rng = random.Random()  # noqa: S311  (Thompson sampling, not secrets)
# The pools of the latest registry snapshot: kind -> its enabled models, in registry order.
_pools: tuple[Registry | None, dict[str, tuple[ModelSpec, ...]]] = (None, {})


def task_resolve(*, endpoint: str, hint: object = None) -> str:
    """The request's task type: its hint (`x-llmhub-task`, or `metadata.task` on /v1) when it names a known
    one, else the endpoint's (translation on /api/translate, generation everywhere else)."""
    if isinstance(hint, str) and hint.strip().lower() in TASKS:
        return hint.strip().lower()
    return "translation" if endpoint in TRANSLATION_ENDPOINTS else "generation"


def registry_pool(registry: Registry, kind: str) -> tuple[ModelSpec, ...]:
    """The enabled registry models of `kind`, computed once per registry snapshot: the policies skip those the
    caller's tier may not use, and say so in the explanation."""
    global _pools
    cached_registry, pools = _pools
    if cached_registry is not registry:
        pools = {}
        _pools = (registry, pools)
    pool = pools.get(kind)
    if pool is None:
        pool = pools[kind] = tuple(model for model in registry.models.values() if model.enabled and model.kind == kind)
    return pool


def plan_needs_counts(plan: Plan) -> bool:
    return any(policy is not None and policy.name == "preference" for policy in plan)


def plan_needs_budget(plan: Plan) -> bool:
    return any(policy is not None and policy.name in ("cost", "preference") for policy in plan)


async def budget_remaining(*, user_id: int | None, api_key_id: int | None, tier_slug: str) -> float | None:
    """The least cost the caller may still spend this period under their cost limits (every model), or None when
    no cost limit applies or the quota back end does not answer (the reservation then decides, failing closed)."""
    if user_id is None:
        return None
    try:
        limits = await quota_remaining(user_id=user_id, api_key_id=api_key_id, tier_slug=tier_slug)
    except ApplicationError:
        return None
    left = [float(limit["remaining"]) for limit in limits if limit["metric"] == "cost" and not limit["model"]]
    return min(left) if left else None


def route_request(*, primary: ModelSpec, pinned: str | None, registry: Registry, tier: TierSpec,
                  user_id: int | None, task: str, needs: Needs, health: Health, plan: Plan,
                  counts: Mapping[str, tuple[int, int]] | None = None, budget: float | None = None,
                  stats: Mapping[str, ModelStats] | None = None, rng: random.Random | None = None) -> Route:
    """The live policy's route, with what the shadow policy would have chosen beside it (changing nothing)."""
    pool: Sequence[ModelSpec] = registry_pool(registry, primary.kind)
    own = registry.own_models(user_id)
    if own:
        pool = (*pool, *(model for model in own.values() if model.kind == primary.kind))
    by_id = {**registry.models, **own} if own else registry.models
    stats = stats_view() if stats is None else stats
    live, shadow = plan
    rng = rng or _rng
    common = dict(primary=primary, pinned=pinned, pool=pool, tier=tier, needs=needs, health=health, stats=stats,
                  task=task, counts=counts, budget=budget, fallbacks=by_id, memo={})
    chosen = route(policy=live, rng=rng, **common)
    if shadow is not None and shadow.name != live.name:
        other = route(policy=shadow, rng=rng, explain=False, **common)
        chosen.shadow = shadow_compare(chosen, other, shadow=shadow, needs=needs, stats=stats, now=health.now)
    return chosen


def shadow_compare(live: Route, other: Route, *, shadow: PolicySpec, needs: Needs,
                   stats: Mapping[str, ModelStats], now: float) -> dict:
    """What the shadow policy would have chosen, and the expectations of both winners."""
    def summary(winner: ModelSpec | None) -> tuple[float | None, float | None]:
        if winner is None:
            return None, None
        scored = expected(winner, needs=needs, stats=stats, now=now)
        return round(scored.cost, 8), round(scored.latency_ms, 1)

    live_cost, live_latency = summary(live.winner)
    cost, latency = summary(other.winner)
    return {"policy": shadow.name, "winner": other.winner.id if other.winner else None, "reason": other.reason,
            "agree": (live.winner is not None and other.winner is not None and live.winner.key == other.winner.key),
            "cost": cost, "latency_ms": latency, "live_cost": live_cost, "live_latency_ms": live_latency}
