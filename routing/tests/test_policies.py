"""Unit tests of the pure routing functions, on registry objects built directly (no database)."""

import random
from decimal import Decimal

import pytest

from generation.routing import earliest_retry
from registry.selectors import ModelSpec, Registry, TierSpec
from routing.policies import DEFAULT_POLICY, Health, ModelStats, Needs, PolicySpec, request_needs, route

NEEDS = Needs()
FREE, PRO, PREMIUM = TierSpec("free", "Free", 0), TierSpec("pro", "Pro", 10), TierSpec("premium", "Premium", 20)
TIERS = {tier.slug: tier for tier in (FREE, PRO, PREMIUM)}


def spec(model_id: str, *fallbacks: str, tier: TierSpec = FREE, enabled: bool = True,
         owner_id: int | None = None, capabilities: tuple[str, ...] = ("streaming",), price: float = 1,
         context_window: int = 8192, auto: bool = False) -> ModelSpec:
    allowed = [t for t in TIERS.values() if t.rank >= tier.rank]
    return ModelSpec(
        id=model_id, pk=abs(hash(model_id)) % 10_000, display_name=model_id, upstream_model=model_id,
        provider="local", provider_name="Local", base_url="http://127.0.0.1:9100/v1", api_key="sk-test",
        timeout=30.0, connect_timeout=2.0, headers={}, allowed_tiers=tuple(t.slug for t in allowed),
        required_tier=tier, enabled=enabled, capabilities=frozenset(capabilities), context_window=context_window,
        input_price_per_million=Decimal(price), output_price_per_million=Decimal(price * 2), fallbacks=tuple(fallbacks),
        owner_id=owner_id, fallbacks_auto=auto,
    )


def registry_of(*models: ModelSpec) -> Registry:
    return Registry(tiers=TIERS, models={model.id: model for model in models}, default_model_id=None,
                    tier_default_ids={})


def ids(models: list[ModelSpec]) -> list[str]:
    return [model.id for model in models]


def candidate_models(*, primary: ModelSpec, registry: Registry, tier: TierSpec, cooled_until=None, now: float = 0.0,
                     unhealthy=frozenset(), needs: Needs = NEEDS, policy: PolicySpec = DEFAULT_POLICY,
                     stats=None, pinned: str | None = "explicit") -> list[ModelSpec]:
    """The route's models for a request naming `primary` (the order the hand-written fallbacks gave before)."""
    return routed(primary=primary, registry=registry, tier=tier, cooled_until=cooled_until, now=now,
                  unhealthy=unhealthy, needs=needs, policy=policy, stats=stats, pinned=pinned).models


def routed(*, primary: ModelSpec, registry: Registry, tier: TierSpec, cooled_until=None, now: float = 0.0,
           unhealthy=frozenset(), needs: Needs = NEEDS, policy: PolicySpec = DEFAULT_POLICY, stats=None,
           pinned: str | None = "explicit", counts=None, budget=None, rng=None):
    pool = [model for model in registry.models.values() if model.enabled]
    return route(primary=primary, pinned=pinned, pool=pool, tier=tier, needs=needs,
                 health=Health(open_keys=unhealthy, cooled_until=cooled_until or {}, now=now), stats=stats or {},
                 policy=policy, counts=counts, budget=budget, rng=rng or random.Random(1), fallbacks=registry.models)


def test_it_orders_the_primary_then_its_fallbacks_as_listed():
    primary = spec("a", "c", "b")
    registry = registry_of(primary, spec("b"), spec("c"))

    assert ids(candidate_models(primary=primary, registry=registry, tier=FREE)) == ["a", "c", "b"]


def test_it_skips_disabled_and_unknown_models():
    primary = spec("a", "off", "gone", "b")
    registry = registry_of(primary, spec("off", enabled=False), spec("b"))

    assert ids(candidate_models(primary=primary, registry=registry, tier=FREE)) == ["a", "b"]


@pytest.mark.parametrize("tier, expected", [
    (FREE, ["a", "b"]),
    (PRO, ["a", "pro", "b"]),
    (PREMIUM, ["a", "pro", "premium", "b"]),
])
def test_it_never_widens_access_through_a_fallback(tier, expected):
    primary = spec("a", "pro", "premium", "b")
    registry = registry_of(primary, spec("pro", tier=PRO), spec("premium", tier=PREMIUM), spec("b"))

    assert ids(candidate_models(primary=primary, registry=registry, tier=tier)) == expected


def test_it_leaves_out_a_primary_the_tier_may_not_use():
    primary = spec("premium", "b", tier=PREMIUM)
    registry = registry_of(primary, spec("b"))

    assert ids(candidate_models(primary=primary, registry=registry, tier=FREE)) == ["b"]


def test_it_skips_models_cooling_down_until_their_time_has_come():
    primary = spec("a", "b", "c")
    registry = registry_of(primary, spec("b"), spec("c"))
    cooled_until = {"a": 110.0, "b": 100.0}

    assert ids(candidate_models(primary=primary, registry=registry, tier=FREE, cooled_until=cooled_until,
                                now=99.0)) == ["c"]
    assert ids(candidate_models(primary=primary, registry=registry, tier=FREE, cooled_until=cooled_until,
                                now=100.0)) == ["b", "c"]
    assert ids(candidate_models(primary=primary, registry=registry, tier=FREE, cooled_until=cooled_until,
                                now=120.0)) == ["a", "b", "c"]


def test_it_returns_nothing_when_every_model_is_cooling_down():
    primary = spec("a", "b")
    registry = registry_of(primary, spec("b"))

    assert candidate_models(primary=primary, registry=registry, tier=FREE, cooled_until={"a": 5, "b": 5},
                            now=1) == []


def test_it_tries_unhealthy_models_last_keeping_the_order_of_the_rest():
    primary = spec("a", "b", "c", "d")
    registry = registry_of(primary, spec("b"), spec("c"), spec("d"))

    candidates = candidate_models(primary=primary, registry=registry, tier=FREE, unhealthy={"a", "c"})

    assert ids(candidates) == ["b", "d", "a", "c"]


def test_it_lists_each_model_once():
    primary = spec("a", "b", "a", "b", "c", "c")
    registry = registry_of(primary, spec("b"), spec("c"))

    assert ids(candidate_models(primary=primary, registry=registry, tier=FREE)) == ["a", "b", "c"]


def test_it_uses_a_users_own_model_as_the_primary_by_its_key():
    own = spec("mine", owner_id=7)
    registry = registry_of(spec("b"))

    assert candidate_models(primary=own, registry=registry, tier=FREE) == [own]
    assert candidate_models(primary=own, registry=registry, tier=FREE, cooled_until={"user:7:mine": 9}, now=1) == []
    assert candidate_models(primary=own, registry=registry, tier=FREE, cooled_until={"mine": 9}, now=1) == [own]


def test_it_tells_the_earliest_retry_of_the_models_cooling_down():
    cooled_until = {"a": 130.0, "b": 112.5, "c": 90.0}

    assert earliest_retry(model_keys=["a", "b", "c"], cooled_until=cooled_until, now=100.0) == 12.5
    assert earliest_retry(model_keys=["a"], cooled_until=cooled_until, now=100.0) == 30.0


def test_it_has_no_earliest_retry_when_nothing_is_cooling_down():
    assert earliest_retry(model_keys=["c", "d"], cooled_until={"c": 90.0}, now=100.0) is None
    assert earliest_retry(model_keys=[], cooled_until={"a": 130.0}, now=100.0) is None


# --- Capabilities, automatic fallbacks, policies, explanations ------------------------------------------------

VISION = ("streaming", "vision")


def test_it_never_falls_back_from_a_vision_request_to_a_model_without_vision():
    primary = spec("seeing", "blind", "also-seeing", capabilities=VISION)
    registry = registry_of(primary, spec("blind"), spec("also-seeing", capabilities=VISION))
    needs = request_needs({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]},
        context_tokens=10, prompt_tokens=10, max_tokens=None)

    result = routed(primary=primary, registry=registry, tier=FREE, needs=needs)

    assert ids(result.models) == ["seeing", "also-seeing"]
    [blind] = [entry for entry in result.explanation()["candidates"] if entry["model"] == "blind"]
    assert (blind["outcome"], blind["reason"]) == ("skipped", "capability: no vision")


def test_it_falls_back_automatically_to_equivalent_models_cheapest_first():
    primary = spec("auto", capabilities=("streaming", "tools"), auto=True, price=5)
    registry = registry_of(primary, spec("pricey", capabilities=("streaming", "tools"), price=3),
                           spec("cheap", capabilities=("streaming", "tools", "vision"), price=1),
                           spec("no-tools", price=0.1), spec("pro-only", capabilities=("streaming", "tools"),
                                                             tier=PRO, price=0.5))

    result = routed(primary=primary, registry=registry, tier=FREE)

    assert ids(result.models) == ["auto", "cheap", "pricey"]
    reasons = {entry["model"]: entry["reason"] for entry in result.explanation()["candidates"]}
    assert reasons["no-tools"] == "not equivalent (capabilities or kind)"
    assert reasons["pro-only"] == "tier: needs pro"


def test_it_skips_models_whose_context_is_too_small():
    primary = spec("big", "small", "bigger", context_window=100_000)
    registry = registry_of(primary, spec("small", context_window=4000), spec("bigger", context_window=200_000))

    result = routed(primary=primary, registry=registry, tier=FREE, needs=Needs(context_tokens=50_000))

    assert ids(result.models) == ["big", "bigger"]
    assert {e["model"]: e["reason"] for e in result.explanation()["candidates"]}["small"] == "context: needs 50000 > 4000"


def test_the_performance_policy_picks_the_fastest_model_above_the_success_floor():
    default = spec("default")
    registry = registry_of(default, spec("fast-flaky"), spec("fast"), spec("slow"))
    stats = {"default": ModelStats(900, 0.99), "fast-flaky": ModelStats(100, 0.80), "fast": ModelStats(200, 0.99),
             "slow": ModelStats(2000, 1.0)}

    result = routed(primary=default, registry=registry, tier=FREE, pinned=None, stats=stats,
                    policy=PolicySpec("performance", {"success_floor": 0.95}))

    assert ids(result.models) == ["fast", "default", "slow"]
    assert result.reason.startswith("fastest of 3")
    assert {e["model"]: e["reason"] for e in result.explanation()["candidates"]}["fast-flaky"] == "success 0.800 < floor 0.95"


def test_the_cost_policy_picks_the_cheapest_model_meeting_the_objectives_within_the_budget():
    default = spec("default", price=4)
    registry = registry_of(default, spec("cheapest-slow", price=0.1), spec("cheap", price=1),
                           spec("cheap-flaky", price=0.5), spec("pricey", price=10))
    stats = {"cheapest-slow": ModelStats(9000, 1.0), "cheap-flaky": ModelStats(100, 0.5)}
    policy = PolicySpec("cost", {"latency_objective_ms": 3000, "max_candidates": 5})

    result = routed(primary=default, registry=registry, tier=FREE, pinned=None, stats=stats, policy=policy,
                    needs=Needs(prompt_tokens=1000, output_tokens=1000), budget=0.02)

    assert ids(result.models) == ["cheap", "default"]
    reasons = {e["model"]: e["reason"] for e in result.explanation()["candidates"]}
    assert reasons["cheapest-slow"] == "latency 9000ms > objective 3000ms"
    assert reasons["cheap-flaky"].startswith("success 0.500")
    assert reasons["pricey"].startswith("quota: cost 0.030000 > remaining 0.020000")


def test_a_named_model_wins_whatever_the_tier_policy():
    primary = spec("named", price=10)
    registry = registry_of(primary, spec("cheap", price=0.1))

    result = routed(primary=primary, registry=registry, tier=FREE, policy=PolicySpec("cost"))

    assert ids(result.models) == ["named"]
    assert (result.policy, result.reason) == ("explicit", "explicit")


def test_the_task_policy_maps_a_task_to_its_model():
    default = spec("default")
    registry = registry_of(default, spec("coder"))
    policy = PolicySpec("task", {"models": {"code": "coder"}})
    pool = list(registry.models.values())

    coded = route(primary=default, pinned=None, pool=pool, tier=FREE, needs=Needs(), health=Health(), stats={},
                  policy=policy, task="code")
    generated = route(primary=default, pinned=None, pool=pool, tier=FREE, needs=Needs(), health=Health(), stats={},
                      policy=policy, task="generation")

    assert (ids(coded.models), coded.reason) == (["coder"], "task code")
    assert (ids(generated.models), generated.reason) == (["default"], "tier default")


def test_the_preference_policy_learns_the_preferred_model_and_keeps_within_the_cost_cap():
    default = spec("default", price=1)
    registry = registry_of(default, spec("liked", price=1.5), spec("luxury", price=100))
    counts = {"default": (5, 45), "liked": (45, 5), "luxury": (50, 0)}
    rng = random.Random(7)

    winners = [routed(primary=default, registry=registry, tier=FREE, pinned=None, counts=counts, rng=rng,
                      policy=PolicySpec("preference", {"cost_cap_ratio": 3})).winner.id for _ in range(50)]

    assert winners.count("liked") == 50  # "default" is confidently worse; "luxury" is over the cost cap


def test_the_explanation_names_the_winner_and_each_losers_reason():
    primary = spec("a", "b", "premium", "cooling")
    registry = registry_of(primary, spec("b"), spec("premium", tier=PREMIUM), spec("cooling"), spec("other"))

    result = routed(primary=primary, registry=registry, tier=FREE, unhealthy={"b"}, cooled_until={"cooling": 50},
                    now=10)
    explanation = result.explanation()

    assert explanation["winner"] == "a"
    assert {e["model"]: (e["outcome"], e["reason"]) for e in explanation["candidates"]} == {
        "a": ("winner", "explicit"),
        "b": ("fallback", "fallback (breaker open: tried last)"),
        "premium": ("skipped", "tier: needs premium"),
        "cooling": ("skipped", "health: cooling 40s"),
        "other": ("skipped", "not a fallback of a"),
    }
    assert result.header() == "explicit; a; explicit"
