"""The values usage passes between its modules: a request's usage entry and a quota charge (kept apart from the
modules that make and write them, which all import this one)."""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from django.utils import timezone


@dataclass(slots=True, kw_only=True)
class UsageEntry:
    """One request's usage, as `UsageLog` stores it (see its fields for their meaning)."""

    request_id: str
    endpoint: str
    status: str
    http_status: int
    user_id: int | None = None
    api_key_id: int | None = None
    tier: str = ""
    requested_model: str = ""
    answered_model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_estimated: bool = False
    cost: Decimal = Decimal(0)
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    error_type: str = ""
    attempts: int = 1
    attempt_details: tuple[dict, ...] = ()
    streamed: bool = False
    created_at: datetime = field(default_factory=timezone.now)
    prompt_template: str = ""
    prompt_version: int | None = None
    prompt_hash: str = ""
    experiment_id: int | None = None
    experiment_arm: str = ""
    # The routing explanation: a dict, or an object whose `explanation()` makes it (routing's Route), made when the
    # row is written, off the response path.
    route: Any = None


class Charge(NamedTuple):  # a named tuple: built per limit per request, cheaper than a frozen dataclass
    key: str  # the counter: owner, limit and period window
    limit: int
    amount: int  # reserved
    window_end: float  # epoch seconds: the counter is kept until then plus the hold time
