"""Model status (healthy / degraded / down / unknown), derived from connectivity tests and live traffic.

Interface used by generation (must stay cheap and non-blocking):
- `health_note(model, ok=...)`: a live request to `model` succeeded or failed.
- `unhealthy_keys()`: the keys (`ModelSpec.key`) of models currently `down`, for routing.
- `model_status(model)`: the model's current `HealthSpec`.
"""

from dataclasses import dataclass
from datetime import datetime

from registry.selectors import ModelSpec


@dataclass(frozen=True, slots=True)
class HealthSpec:
    status: str = "unknown"
    last_checked_at: datetime | None = None
    last_latency_ms: float | None = None


UNKNOWN = HealthSpec()


def health_note(model: ModelSpec, *, ok: bool) -> None:
    return None


def unhealthy_keys() -> frozenset[str]:
    return frozenset()


def model_status(model: ModelSpec) -> HealthSpec:
    return UNKNOWN
