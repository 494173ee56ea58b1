"""Cool-downs of the candidate models for one request: pure functions, no I/O (the ordering itself is
routing/policies.py's)."""

from collections.abc import Mapping


def earliest_retry(*, model_keys: list[str], cooled_until: Mapping[str, float], now: float) -> float | None:
    """Seconds until the first of `model_keys` leaves its cooldown, or None if none is cooling down."""
    waits = [cooled_until[key] - now for key in model_keys if cooled_until.get(key, 0.0) > now]
    return min(waits) if waits else None
