"""Exact quotas: reserve the worst case before the upstream call, settle to the actual usage after it.

`quota_reserve` decides a request in ONE atomic step over every limit that applies to it (registry.limits):
1 request; the estimated prompt tokens plus `max_tokens` (or the output cap); the cost of that at the highest
prices among the models that may answer. Either every counter takes its share or none does, and the request
gets 429. `quota_settle` (called in a `finally`, whatever happened) replaces the reservation by what was
actually used. Two back ends do the atomic step (usage/quota_backends.py): one Redis Lua script per
decision in production, a conditional UPDATE on the database when embedded. Reservations expire on their own
(QUOTA_HOLD_SECONDS), so a crashed process leaks nothing. Quotas fail closed: a back end that cannot decide
(Redis unreachable or silent for QUOTA_TIMEOUT_SECONDS, a database error) gives 503 with Retry-After, never
"unlimited".

Periods are calendar-aligned in TIME_ZONE: a day limit resets at local midnight, a month limit on the 1st.
"""

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

from django.conf import settings

from llmhub.errors import ApplicationError
from registry.limits import COST_UNITS, AppliedLimit, decimal_text, limits_snapshot
from registry.selectors import ModelSpec
from usage.entries import Charge
from usage.metrics import quota_refusal_count, quota_unavailable_count
from usage.quota_backends import Decision, QuotaBackendError, quota_backend
from usage.services import usage_cost

logger = logging.getLogger(__name__)

HEADER_METRICS = ("requests", "tokens")


class QuotaExceeded(ApplicationError):
    """429: one limit has no room for this request. `code` names it, e.g. "requests_per_day"."""

    status = 429

    def __init__(self, message: str, *, code: str, retry_after: float, headers: dict[str, str], extra: dict) -> None:
        super().__init__(message, code=code, extra=extra)
        self.retry_after = retry_after
        self.headers = headers


class QuotaUnavailable(ApplicationError):
    """503: the quota back end cannot decide (quotas fail closed)."""

    status = 503
    code = "quota_unavailable"

    def __init__(self) -> None:
        super().__init__("Quotas cannot be checked right now; try again in a moment.")
        self.retry_after = 1


# --- Periods ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Window:
    tag: str  # the period's start in local time, part of the counter's key
    start: float  # epoch seconds
    end: float


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


_windows: dict[tuple[str, str], Window] = {}


def period_window(period: str, now: float | None = None, zone: str | None = None) -> Window:
    """The calendar period (minute, hour, day, month of TIME_ZONE) that `now` falls in (memoised until it ends)."""
    now = time.time() if now is None else now
    memo_key = (period, zone or settings.TIME_ZONE)
    window = _windows.get(memo_key)
    if window is None or not window.start <= now < window.end:
        window = _windows[memo_key] = _window_compute(period, now)
    return window


def _window_compute(period: str, now: float) -> Window:
    zone = _zone(settings.TIME_ZONE)
    local = datetime.fromtimestamp(now, zone)
    if period in ("minute", "hour"):  # fixed lengths: computed in absolute time, so DST cannot stretch them
        start = local.replace(second=0, microsecond=0) if period == "minute" else local.replace(minute=0, second=0,
                                                                                               microsecond=0)
        tag = start.strftime("%Y%m%d%H%M" if period == "minute" else "%Y%m%d%H")
        return Window(tag, start.timestamp(), start.timestamp() + (60 if period == "minute" else 3600))
    if period == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        following = start.date() + timedelta(days=1)
        end = datetime(following.year, following.month, following.day, tzinfo=zone)  # local midnight, whatever DST did
        return Window(start.strftime("%Y%m%d"), start.timestamp(), end.timestamp())
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return Window(start.strftime("%Y%m"), start.timestamp(), datetime(year, month, 1, tzinfo=zone).timestamp())


# --- Reservations -------------------------------------------------------------------------------------------

class Reservation:
    """What one request holds. `charges` is empty when no limit applies (nothing to settle). Its rate-limit headers
    are built when first asked for (when the response is sent)."""

    __slots__ = ("_headers", "_now", "_plan", "applied", "charges", "held", "request_id", "settled", "used")

    def __init__(self, request_id: str, charges: tuple[Charge, ...] = (), applied: tuple[AppliedLimit, ...] = (),
                 used: tuple[int, ...] = (), held: tuple[int, ...] = (), *, plan: "_Plan | None" = None,
                 now: float = 0.0) -> None:
        self.request_id = request_id
        self.charges = charges
        self.applied = applied
        self.used = used  # each counter's settled usage and reservations in flight, right after the decision
        self.held = held
        self.settled = False
        self._plan = plan
        self._now = now
        self._headers: dict[str, str] | None = None if charges else {}

    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = _rate_headers(self)
        return self._headers

    def header_bytes(self) -> list[tuple[bytes, bytes]]:
        """`headers()` as ASGI header pairs (for the response of /v1)."""
        if self._headers is not None or not self.charges:
            return [(name.encode(), value.encode()) for name, value in self.headers().items()]
        return _rate_header_bytes(self)


_REQUESTS, _TOKENS, _COST = 0, 1, 2
_METRIC_CODES = {"requests": _REQUESTS, "tokens": _TOKENS, "cost": _COST}


class _Plan:
    """The static part of the charges of one (tier, user, key, model) under one limits snapshot: each limit's
    counter key prefix (its window's tag completes it), period, limit units and metric; and the charges' keys and
    window ends of the current periods (`current`), recomputed when one of them rolls over. Kept in the snapshot's
    memo, so a change of limits (a new snapshot) drops it."""

    __slots__ = ("applied", "current", "header_groups", "metrics", "parts")

    def __init__(self, applied: tuple[AppliedLimit, ...], user_id: int, api_key_id: int | None) -> None:
        self.applied = applied
        self.parts = tuple((_counter_prefix(user_id=user_id, api_key_id=api_key_id, applied=limit), limit.spec.period,
                            limit.spec.units, _METRIC_CODES.get(limit.spec.metric, _COST)) for limit in applied)
        self.metrics = tuple(part[3] for part in self.parts)
        self.header_groups = _header_groups(applied)
        # (time zone, valid from, valid until, per limit: (counter key, limit units, metric, window end))
        self.current: tuple[str, float, float, tuple[tuple[str, int, int, float], ...]] | None = None

    def windowed(self, now: float, zone: str) -> tuple[str, float, float, tuple[tuple[str, int, int, float], ...]]:
        current = self.current
        if current is None or current[0] != zone or not current[1] <= now < current[2]:
            windows = [period_window(period, now, zone) for _, period, _, _ in self.parts]
            current = self.current = (zone, max(window.start for window in windows),
                                      min(window.end for window in windows),
                                      tuple((prefix + window.tag, units, metric, window.end)
                                            for (prefix, _, units, metric), window in zip(self.parts, windows,
                                                                                          strict=True)))
        return current


def _plan(limits, *, tier_slug: str, user_id: int, api_key_id: int | None, model: ModelSpec) -> "_Plan | None":
    memo_key = ("plan", tier_slug, user_id, api_key_id, model.id, model.owned)
    plan = limits._memo.get(memo_key, False)
    if plan is False:
        applied = limits.applying(tier_slug=tier_slug, user_id=user_id, api_key_id=api_key_id, model_id=model.id,
                                  owned=model.owned)
        plan = limits._memo[memo_key] = _Plan(applied, user_id, api_key_id) if applied else None
    return plan


def _config(name: str):
    return settings.LLMHUB[name]


def _counter_prefix(*, user_id: int, api_key_id: int | None, applied: AppliedLimit) -> str:
    spec = applied.spec
    owner = f"{{u:{user_id}}}" + (f":k:{api_key_id}" if applied.scope == "key" else "")
    return f"llmhub:q:{owner}:{spec.metric}:{spec.period}:{spec.model or '*'}:"


def _counter_key(*, user_id: int, api_key_id: int | None, applied: AppliedLimit, window: Window) -> str:
    return _counter_prefix(user_id=user_id, api_key_id=api_key_id, applied=applied) + window.tag


def _reserved_amount(metric: str, *, tokens: int, cost_units: int) -> int:
    return 1 if metric == "requests" else tokens if metric == "tokens" else cost_units


def _cost_units(cost: Decimal) -> int:
    return int(cost * COST_UNITS)


@cache
def _price_units(price) -> int | None:
    """Cost units per token of a price per million tokens, when that is a whole number (then a cost in units is
    exact integer arithmetic, the same number usage_cost's rounding gives); None otherwise."""
    if not isinstance(price, Decimal):
        return None
    scaled = price.scaleb(4)  # per million tokens -> per token (1e-6), in units of 1e-10 (1e10)
    return int(scaled) if scaled == scaled.to_integral_value() else None


def cost_units_of(*, input_tokens: int, output_tokens: int, input_price_per_million: Decimal,
                  output_price_per_million: Decimal) -> int:
    """`_cost_units(usage_cost(...))`, without Decimal arithmetic when the prices allow it."""
    input_units, output_units = _price_units(input_price_per_million), _price_units(output_price_per_million)
    if input_units is not None and output_units is not None:
        return input_tokens * input_units + output_tokens * output_units
    return _cost_units(usage_cost(input_tokens=input_tokens, output_tokens=output_tokens,
                                  input_price_per_million=input_price_per_million,
                                  output_price_per_million=output_price_per_million))


async def quota_reserve(*, request_id: str, user_id: int | None, api_key_id: int | None, tier_slug: str,
                        model: ModelSpec, candidates: list[ModelSpec] | tuple[ModelSpec, ...] = (),
                        prompt_tokens: int, max_tokens: int | None) -> Reservation:
    """Reserves the worst case of one request on every limit that applies, atomically; raises QuotaExceeded (429)
    when one has no room, QuotaUnavailable (503) when the back end cannot decide. Limits come from the in-memory
    snapshot: no query once warm."""
    if user_id is None:
        return Reservation(request_id)
    limits = await limits_snapshot.aget()
    plan = _plan(limits, tier_slug=tier_slug, user_id=user_id, api_key_id=api_key_id, model=model)
    if plan is None:
        return Reservation(request_id)
    charges, now, hold_seconds = _charges(plan, model=model, candidates=candidates, prompt_tokens=prompt_tokens,
                                          max_tokens=max_tokens)
    return _reserved(request_id, plan, charges, now, await _decide(request_id, charges, hold_seconds))


def quota_reserve_sent(*, request_id: str, user_id: int, api_key_id: int | None, tier_slug: str, model: ModelSpec,
                       candidates: list[ModelSpec] | tuple[ModelSpec, ...] = (), prompt_tokens: int,
                       max_tokens: int | None) -> Awaitable[Reservation] | None:
    """`quota_reserve` on Redis, its script queued before this returns, to be awaited later: a request sends it
    with another command and waits for both at once, without a task of its own. None when that cannot be (a
    limits snapshot not warm, no limit, a back end other than Redis, no connection yet): then `quota_reserve`."""
    limits = limits_snapshot.peek()
    if limits is None:
        return None
    plan = _plan(limits, tier_slug=tier_slug, user_id=user_id, api_key_id=api_key_id, model=model)
    if plan is None:
        return None
    charges, now, hold_seconds = _charges(plan, model=model, candidates=candidates, prompt_tokens=prompt_tokens,
                                          max_tokens=max_tokens)
    sent = quota_backend().reserve_sent(request_id=request_id, charges=charges, hold_seconds=hold_seconds)
    return None if sent is None else _reserved_when_decided(request_id, plan, charges, now, sent)


async def _reserved_when_decided(request_id: str, plan: "_Plan", charges: tuple[Charge, ...], now: float,
                                 sent: Awaitable[Decision]) -> Reservation:
    try:
        decision = await sent
    except QuotaBackendError as error:
        raise _unavailable(request_id, error) from None
    return _reserved(request_id, plan, charges, now, decision)


def _reserved(request_id: str, plan: "_Plan", charges: tuple[Charge, ...], now: float,
              decision: Decision) -> Reservation:
    reservation = Reservation(request_id, charges, plan.applied, decision.used, decision.held, plan=plan, now=now)
    if decision.refused is not None:
        raise _exceeded(reservation, decision.refused, now)
    return reservation


def _charges(plan: "_Plan", *, model: ModelSpec, candidates: list[ModelSpec] | tuple[ModelSpec, ...],
             prompt_tokens: int, max_tokens: int | None) -> tuple[tuple[Charge, ...], float, float]:
    """The request's charges (the worst case on each limit), the time they were taken at and the hold time."""
    config = settings.LLMHUB
    output = max_tokens or min(config["MAX_OUTPUT_TOKENS"], model.context_window)
    amounts = [1, prompt_tokens + output, 0]
    if _COST in plan.metrics:
        if len(candidates) > 1:
            input_price = max(m.input_price_per_million for m in candidates)
            output_price = max(m.output_price_per_million for m in candidates)
        else:
            priced = candidates[0] if candidates else model
            input_price, output_price = priced.input_price_per_million, priced.output_price_per_million
        amounts[_COST] = cost_units_of(input_tokens=prompt_tokens, output_tokens=output,
                                       input_price_per_million=input_price, output_price_per_million=output_price)
    now = time.time()
    charges = tuple([Charge(key, units, amounts[metric], end)
                     for key, units, metric, end in plan.windowed(now, settings.TIME_ZONE)[3]])
    return charges, now, config["QUOTA_HOLD_SECONDS"]


async def _decide(request_id: str, charges: tuple[Charge, ...], hold_seconds: float) -> Decision:
    try:
        return await quota_backend().reserve(request_id=request_id, charges=charges, hold_seconds=hold_seconds)
    except QuotaBackendError as error:
        raise _unavailable(request_id, error) from None


def _unavailable(request_id: str, error: QuotaBackendError) -> "QuotaUnavailable":
    """The 503 of a decision the back end could not make (logged and counted)."""
    logger.error("quota back end unavailable (%s): request %s refused with 503", error, request_id)
    quota_unavailable_count()
    return QuotaUnavailable()


def _exceeded(reservation: Reservation, index: int, now: float) -> QuotaExceeded:
    charge, spec = reservation.charges[index], reservation.applied[index].spec
    quota_refusal_count(metric=spec.metric, period=spec.period, scope=reservation.applied[index].scope)
    until_reset = max(1, round(charge.window_end - now))
    # When only reservations in flight stand in the way of tokens or cost, they settle within seconds. Requests
    # never free up before the period ends (a reserved request is a request).
    retry_after = until_reset
    if spec.metric != "requests" and reservation.used[index] + charge.amount <= charge.limit:
        retry_after = min(until_reset, _config("QUOTA_IN_FLIGHT_RETRY_SECONDS"))
    scope = " of this API key" if reservation.applied[index].scope == "key" else ""
    model = f" of {spec.model}" if spec.model else ""
    what = {"requests": "requests", "tokens": "tokens", "cost": "spending"}[spec.metric]
    message = f"Quota exceeded: the limit{scope} of {spec.as_dict()['limit']} {what}{model} per {spec.period} is used up."
    if charge.amount > charge.limit:
        message = f"This request needs more than the limit{scope} of {spec.as_dict()['limit']} {what}{model} " \
                  f"per {spec.period} (lower max_tokens)."
    return QuotaExceeded(message, code=f"{spec.metric}_per_{spec.period}", retry_after=retry_after,
                         headers=reservation.headers(),
                         extra={"limit": {**spec.as_dict(), "scope": reservation.applied[index].scope},
                                "retry_after": retry_after})


async def quota_settle(*, reservation: Reservation | None, model: ModelSpec | None, input_tokens: int,
                       output_tokens: int, cost: Decimal | None = None) -> None:
    """Replaces the reservation by the actual usage: 1 request, the tokens used, their cost at the answering
    model's prices (0 when no model answered; an own model's cost only when its tier meters own models), or
    `cost` when the answer came in parts from several models (a translation's pieces, each at its own prices).
    Waits for the back end. Never raises: a back end that cannot settle is logged, and the hold expires by itself."""
    actual = _settlement(reservation, model, input_tokens, output_tokens, cost)
    if actual is None:
        return
    try:
        await quota_backend().settle(request_id=reservation.request_id, charges=reservation.charges, actual=actual,
                                     hold_seconds=_config("QUOTA_HOLD_SECONDS"))
    except QuotaBackendError as error:
        logger.error("request %s: quota not settled (%s); its hold expires by itself; unrecorded usage: %s",
                     reservation.request_id, type(error).__name__, dict(zip([c.key for c in reservation.charges],
                                                                              actual, strict=True)))


def quota_settle_nowait(*, reservation: Reservation | None, model: ModelSpec | None, input_tokens: int,
                        output_tokens: int, cost: Decimal | None = None) -> None:
    """As `quota_settle`, for the request path: the settle is sent to the back end (Redis: written on this
    process's connection; the database: queued on the quota thread) before this returns, so every later decision
    of this process comes after it, but the response does not wait for the back end's answer. A failure is
    logged, and the hold expires by itself."""
    actual = _settlement(reservation, model, input_tokens, output_tokens, cost)
    if actual is not None:
        quota_backend().settle_nowait(request_id=reservation.request_id, charges=reservation.charges, actual=actual,
                                      hold_seconds=_config("QUOTA_HOLD_SECONDS"))


def quota_release_nowait(reservation: Reservation | None) -> None:
    """Gives a reservation back counting nothing (its request went ahead under another one), without waiting."""
    if reservation is None or not reservation.charges or reservation.settled:
        return
    reservation.settled = True
    quota_backend().settle_nowait(request_id=reservation.request_id, charges=reservation.charges,
                                  actual=(0,) * len(reservation.charges), hold_seconds=_config("QUOTA_HOLD_SECONDS"))


async def quota_decided_remotely(*, user_id: int | None, api_key_id: int | None, tier_slug: str) -> bool:
    """Whether this caller's requests are decided by a round trip to another server (Redis: a request may send it
    alongside another): some limit applies to them (to every model, or to one), and quotas live in Redis."""
    if user_id is None or not settings.LLMHUB["QUOTA_REDIS_URL"]:
        return False
    limits = await limits_snapshot.aget()
    return limits.any_applies(tier_slug=tier_slug, user_id=user_id, api_key_id=api_key_id)


async def quota_settles_drain() -> None:
    """At shutdown: waits until the back end has every settle sent without waiting."""
    await quota_backend().drain()


def _settlement(reservation: Reservation | None, model: ModelSpec | None, input_tokens: int, output_tokens: int,
                cost: Decimal | None) -> tuple[int, ...] | None:
    """Each counter's actual amount (None: nothing to settle, or settled already)."""
    if reservation is None or not reservation.charges or reservation.settled:
        return None
    reservation.settled = True
    plan = reservation._plan
    metrics = plan.metrics if plan is not None else tuple(_METRIC_CODES.get(applied.spec.metric, _COST)
                                                         for applied in reservation.applied)
    amounts = [1, input_tokens + output_tokens, 0]
    if _COST in metrics:
        if cost is not None:
            amounts[_COST] = _cost_units(cost)
        elif model is not None:
            amounts[_COST] = cost_units_of(input_tokens=input_tokens, output_tokens=output_tokens,
                                           input_price_per_million=model.input_price_per_million,
                                           output_price_per_million=model.output_price_per_million)
    return tuple([amounts[metric] for metric in metrics])


# --- OpenAI's rate-limit headers ------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    """OpenAI's reset format: "1s", "6m0s", "2h3m4s"."""
    return _duration_text(max(0, round(seconds)))


@lru_cache(maxsize=4096)
def _duration_text(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


_HEADER_NAMES = {metric: tuple(f"x-ratelimit-{what}-{metric}" for what in ("limit", "remaining", "reset"))
                 for metric in HEADER_METRICS}
_HEADER_BYTES = {metric: tuple(name.encode() for name in names) for metric, names in _HEADER_NAMES.items()}


def _header_groups(applied: tuple[AppliedLimit, ...]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The indices of the limits of each header metric, metrics in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, limit in enumerate(applied):
        if limit.spec.metric in HEADER_METRICS:
            groups.setdefault(limit.spec.metric, []).append(index)
    return tuple((metric, tuple(indices)) for metric, indices in groups.items())


def _tightest(reservation: Reservation) -> list[tuple[str, int, int, float]]:
    """(metric, limit, remaining, seconds to reset) of the tightest limit of each header metric (the one with
    the least room left; the shorter period on a tie)."""
    plan = reservation._plan
    groups = plan.header_groups if plan is not None else _header_groups(reservation.applied)
    charges, used, held = reservation.charges, reservation.used, reservation.held
    rows = []
    for metric, indices in groups:
        best = None
        for index in indices:
            charge = charges[index]
            remaining = charge.limit - used[index] - held[index]
            if remaining < 0:
                remaining = 0
            if best is None or (remaining, charge.window_end) < (best[0], best[1].window_end):
                best = (remaining, charge)
        rows.append((metric, best[1].limit, best[0], best[1].window_end - reservation._now))
    return rows


def _rate_headers(reservation: Reservation) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} of the tightest limit of each metric."""
    headers = {}
    for metric, limit, remaining, reset in _tightest(reservation):
        limit_name, remaining_name, reset_name = _HEADER_NAMES[metric]
        headers[limit_name] = str(limit)
        headers[remaining_name] = str(remaining)
        headers[reset_name] = _duration(reset)
    return headers


def _rate_header_bytes(reservation: Reservation) -> list[tuple[bytes, bytes]]:
    """`_rate_headers` as ASGI header pairs."""
    pairs = []
    for metric, limit, remaining, reset in _tightest(reservation):
        limit_name, remaining_name, reset_name = _HEADER_BYTES[metric]
        pairs += ((limit_name, b"%d" % limit), (remaining_name, b"%d" % remaining),
                  (reset_name, _duration_bytes(max(0, round(reset)))))
    return pairs


@lru_cache(maxsize=4096)
def _duration_bytes(seconds: int) -> bytes:
    return _duration_text(seconds).encode()


async def quota_status(*, user_id: int, api_key_id: int | None, tier_slug: str) -> list[dict]:
    """Every limit of the user (and of the key, when given) with its current period: `used` (settled), `held`
    (reservations in flight), `refused` (requests it refused this period), `holds` (reservations not settled)
    and `resets_at` (epoch seconds). For pages and the usage API; it asks the back end, never the usage log."""
    limits = await limits_snapshot.aget()
    owner = [AppliedLimit("user", spec) for spec in limits.owner_limits(tier_slug=tier_slug, user_id=user_id)]
    own_key = [AppliedLimit("key", spec) for spec in limits.keys.get(api_key_id, ()) if spec.limit is not None]
    now = time.time()
    rows = []
    for applied in owner + own_key:
        window = period_window(applied.spec.period, now)
        rows.append((applied, window, _counter_key(user_id=user_id, api_key_id=api_key_id, applied=applied,
                                                   window=window)))
    counters = await quota_backend().counters([key for _, _, key in rows]) if rows else {}
    return [{**applied.spec.as_dict(), "scope": applied.scope, "units": applied.spec.units, **counters[key],
             "resets_at": window.end} for applied, window, key in rows]


async def quota_remaining(*, user_id: int, api_key_id: int | None, tier_slug: str) -> list[dict]:
    """Each limit of the caller with what it used and what is left this period (reservations in flight count as
    used), in the limit's own units: requests, tokens, or cost in currency. QuotaUnavailable (503) when the back end
    does not answer."""
    try:
        rows = await quota_status(user_id=user_id, api_key_id=api_key_id, tier_slug=tier_slug)
    except QuotaBackendError:
        raise QuotaUnavailable() from None

    def amount(metric: str, units: int) -> int | str:
        return decimal_text(Decimal(units) / COST_UNITS) if metric == "cost" else units

    return [{"metric": row["metric"], "period": row["period"], "model": row["model"], "scope": row["scope"],
             "limit": row["limit"], "used": amount(row["metric"], row["used"] + row["held"]),
             "remaining": amount(row["metric"], max(0, row["units"] - row["used"] - row["held"])),
             "resets_at": datetime.fromtimestamp(row["resets_at"], tz=ZoneInfo("UTC"))} for row in rows]
