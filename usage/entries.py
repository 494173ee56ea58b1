"""The values usage passes between its modules: a request's usage entry, a billing event, a quota charge (kept apart
from the modules that make and write them, which all import this one), and the JSON line an entry travels as."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import orjson
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


@dataclass(slots=True, kw_only=True)
class BillingEventEntry:
    """A billing event not written yet (usage/billing.py: it waits in the usage writer's queue, or is written at
    once)."""

    type: str
    dedupe_key: str
    payload: dict
    created_at: datetime = field(default_factory=timezone.now)


class Charge(NamedTuple):  # a named tuple: built per limit per request, cheaper than a frozen dataclass
    key: str  # the counter: owner, limit and period window
    limit: int
    amount: int  # reserved
    window_end: float  # epoch seconds: the counter is kept until then plus the hold time


def route_explained(route: Any) -> dict | None:
    """A usage entry's routing explanation as the row stores it (see `UsageEntry.route`)."""
    return route if route is None or isinstance(route, dict) else route.explanation()


def entry_encode(entry: UsageEntry | BillingEventEntry) -> bytes:
    """One JSON line (the Redis stream's entry, the spool's line): a usage entry's fields, or a billing event under
    `billing_event`. `entry_decode` makes the entry again."""
    fields = {name: getattr(entry, name) for name in entry.__slots__}
    if type(entry) is UsageEntry:
        fields["route"] = route_explained(fields["route"])
    else:
        fields = {"billing_event": fields}
    return orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE)


def entry_decode(payload: bytes) -> UsageEntry | BillingEventEntry:
    fields = orjson.loads(payload)
    if "billing_event" in fields:
        fields = fields["billing_event"]
        fields["created_at"] = datetime.fromisoformat(fields["created_at"])
        return BillingEventEntry(**fields)
    fields["cost"] = Decimal(fields["cost"])
    fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    return UsageEntry(**fields)
