"""Unit tests of the pure routing functions, on registry objects built directly (no database)."""

from decimal import Decimal

import pytest

from generation.routing import candidate_models, earliest_retry
from registry.selectors import ModelSpec, Registry, TierSpec

FREE, PRO, PREMIUM = TierSpec("free", "Free", 0), TierSpec("pro", "Pro", 10), TierSpec("premium", "Premium", 20)
TIERS = {tier.slug: tier for tier in (FREE, PRO, PREMIUM)}


def spec(model_id: str, *fallbacks: str, tier: TierSpec = FREE, enabled: bool = True,
         owner_id: int | None = None) -> ModelSpec:
    allowed = [t for t in TIERS.values() if t.rank >= tier.rank]
    return ModelSpec(
        id=model_id, pk=abs(hash(model_id)) % 10_000, display_name=model_id, upstream_model=model_id,
        provider="local", provider_name="Local", base_url="http://127.0.0.1:9100/v1", api_key="sk-test",
        timeout=30.0, connect_timeout=2.0, headers={}, allowed_tiers=tuple(t.slug for t in allowed),
        required_tier=tier, enabled=enabled, capabilities=frozenset({"streaming"}), context_window=8192,
        input_price_per_million=Decimal(1), output_price_per_million=Decimal(2), fallbacks=tuple(fallbacks),
        owner_id=owner_id,
    )


def registry_of(*models: ModelSpec) -> Registry:
    return Registry(tiers=TIERS, models={model.id: model for model in models}, default_model_id=None,
                    tier_default_ids={})


def ids(models: list[ModelSpec]) -> list[str]:
    return [model.id for model in models]


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
