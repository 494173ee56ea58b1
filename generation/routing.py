"""Ordering of candidate models for one request: pure functions, no I/O."""

from collections.abc import Container, Mapping

from registry.selectors import ModelSpec, Registry, TierSpec


def candidate_models(*, primary: ModelSpec, registry: Registry, tier: TierSpec,
                     cooled_until: Mapping[str, float] | None = None, now: float = 0.0,
                     unhealthy: Container[str] = ()) -> list[ModelSpec]:
    """The primary model, then its fallbacks in order.

    Skipped: disabled models, models the tier may not use (a fallback never widens access), models
    cooling down after a 429. Unhealthy models go last, so they are tried only when nothing else is left.
    """
    cooled_until = cooled_until or {}
    ordered: list[ModelSpec] = []
    for model_id in (primary.id, *primary.fallbacks):
        model = primary if model_id == primary.id else registry.models.get(model_id)
        if model is None or not model.enabled or not model.allows(tier) or model in ordered:
            continue
        if cooled_until.get(model.key, 0.0) > now:
            continue
        ordered.append(model)
    return sorted(ordered, key=lambda model: model.key in unhealthy)


def earliest_retry(*, model_keys: list[str], cooled_until: Mapping[str, float], now: float) -> float | None:
    """Seconds until the first of `model_keys` leaves its cooldown, or None if none is cooling down."""
    waits = [cooled_until[key] - now for key in model_keys if cooled_until.get(key, 0.0) > now]
    return min(waits) if waits else None
