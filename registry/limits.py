"""Quota limits: how a tier, a user or a hub API key declares them, and which apply to a request.

A limit is `{"metric": "requests" | "tokens" | "cost", "period": "minute" | "hour" | "day" | "month",
"limit": N, "model": optional model id}`. A tier's limits come from the registry fixture (`tiers[i].limits`)
or admin; staff may override one per user (same metric, period and model; a blank limit lifts it), and a
hub API key may carry its own (counted per key, on top of its owner's, never above them). A tier without
limits is unlimited. usage.quotas enforces them; this module only declares and reads them, from an in-memory
snapshot (no query on the request path once warm).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from llmhub.snapshot import LocalSnapshot
from registry.models import QuotaLimit, Tier

METRICS = tuple(QuotaLimit.Metric.values)
PERIODS = tuple(QuotaLimit.Period.values)
# Counters are integers: cost is counted in units of 1e-10 of the price currency, the usage log's precision.
COST_UNITS = 10**10
_MAX_COST_DECIMALS = 6


def decimal_text(value: Decimal) -> str:
    """10 → "10", 5.00 → "5", 0.0010 → "0.001" (never "1E+1")."""
    return format(value.normalize(), "f")


@dataclass(frozen=True, slots=True)
class LimitSpec:
    metric: str
    period: str
    limit: Decimal | None  # None: a user override lifting the tier's limit
    model: str = ""  # "" = every model

    @property
    def key(self) -> tuple[str, str, str]:
        return self.metric, self.period, self.model

    @property
    def units(self) -> int:
        """The limit in counter units (requests, tokens, or cost in 1e-10)."""
        return int(self.limit * COST_UNITS) if self.metric == "cost" else int(self.limit)

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "period": self.period, "model": self.model or None,
                "limit": decimal_text(self.limit) if self.metric == "cost" else int(self.limit)}


@dataclass(frozen=True, slots=True)
class TierQuota:
    limits: tuple[LimitSpec, ...] = ()
    max_own_models: int | None = None
    own_models_metered: bool = False


UNLIMITED = TierQuota()


@dataclass(frozen=True, slots=True)
class AppliedLimit:
    """One limit that applies to a request, and whose counter it uses: the user's ("user") or the key's ("key")."""

    scope: str
    spec: LimitSpec


@dataclass(frozen=True)
class Limits:
    tiers: Mapping[str, TierQuota]
    users: Mapping[int, tuple[LimitSpec, ...]]
    keys: Mapping[int, tuple[LimitSpec, ...]]
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def tier(self, slug: str) -> TierQuota:
        return self.tiers.get(slug, UNLIMITED)

    def owner_limits(self, *, tier_slug: str, user_id: int | None) -> tuple[LimitSpec, ...]:
        """The tier's limits with the user's overrides applied (a lifted one left out)."""
        merged = {spec.key: spec for spec in self.tier(tier_slug).limits}
        merged.update({spec.key: spec for spec in self.users.get(user_id, ())})
        return tuple(spec for spec in merged.values() if spec.limit is not None)

    def any_applies(self, *, tier_slug: str, user_id: int | None, api_key_id: int | None) -> bool:
        """Whether some limit (of any model) applies to the caller's requests (memoised, as `applying`)."""
        memo_key = ("any", tier_slug, user_id, api_key_id)
        found = self._memo.get(memo_key)
        if found is None:
            found = bool(self.owner_limits(tier_slug=tier_slug, user_id=user_id)
                         or any(spec.limit is not None for spec in self.keys.get(api_key_id, ())))
            if len(self._memo) > 10_000:
                self._memo.clear()
            self._memo[memo_key] = found
        return found

    def applying(self, *, tier_slug: str, user_id: int | None, api_key_id: int | None, model_id: str,
                 owned: bool) -> tuple[AppliedLimit, ...]:
        """The limits a request for `model_id` is counted against (memoised: the snapshot is immutable).

        A user's own model counts toward request limits only, unless the tier meters own models."""
        memo_key = (tier_slug, user_id, api_key_id, model_id, owned)
        applied = self._memo.get(memo_key)
        if applied is None:
            metered = not owned or self.tier(tier_slug).own_models_metered
            key_limits = tuple(spec for spec in self.keys.get(api_key_id, ()) if spec.limit is not None)
            applied = tuple(
                AppliedLimit(scope, spec)
                for scope, specs in (("user", self.owner_limits(tier_slug=tier_slug, user_id=user_id)),
                                     ("key", key_limits))
                for spec in specs
                if spec.model in ("", model_id) and (metered or spec.metric == "requests")
            )
            if len(self._memo) > 10_000:
                self._memo.clear()
            self._memo[memo_key] = applied
        return applied


def _spec(row: QuotaLimit) -> LimitSpec:
    return LimitSpec(metric=row.metric, period=row.period, limit=row.limit, model=row.model)


def limits_build() -> Limits:
    tiers: dict[str, list[LimitSpec]] = {}
    users: dict[int, list[LimitSpec]] = {}
    keys: dict[int, list[LimitSpec]] = {}
    for row in QuotaLimit.objects.select_related("tier").order_by("pk"):
        if row.tier_id is not None:
            tiers.setdefault(row.tier.slug, []).append(_spec(row))
        elif row.user_id is not None:
            users.setdefault(row.user_id, []).append(_spec(row))
        else:
            keys.setdefault(row.api_key_id, []).append(_spec(row))
    quotas = {
        tier.slug: TierQuota(limits=tuple(tiers.get(tier.slug, ())), max_own_models=tier.max_own_models,
                             own_models_metered=tier.own_models_metered)
        for tier in Tier.objects.all()
    }
    return Limits(tiers=quotas, users={k: tuple(v) for k, v in users.items()}, keys={k: tuple(v) for k, v in keys.items()})


limits_snapshot: LocalSnapshot[Limits] = LocalSnapshot("limits", limits_build)


def limits_get() -> Limits:
    return limits_snapshot.get()


# --- Declaring limits: the fixture, admin, services ---------------------------------------------------------

def limit_problems(*, metric: str, limit: Any, where: str, lifting_allowed: bool = False) -> tuple[Decimal | None, list[str]]:
    """The limit as a Decimal, or the problems with it (each prefixed by `where`, a JSON path or a field)."""
    if limit is None or limit == "":
        return None, ([] if lifting_allowed else [f"{where}: a limit is required"])
    if isinstance(limit, bool) or not isinstance(limit, int | float | str | Decimal):
        return None, [f"{where}: must be a number"]
    try:
        value = Decimal(str(limit))
    except InvalidOperation:
        return None, [f"{where}: {limit!r} is not a number"]
    if not value.is_finite() or value < 0:
        return None, [f"{where}: must be a number at least 0"]
    if metric != "cost" and value != value.to_integral_value():
        return None, [f"{where}: a {metric} limit must be a whole number"]
    if metric == "cost" and -value.as_tuple().exponent > _MAX_COST_DECIMALS:
        return None, [f"{where}: at most {_MAX_COST_DECIMALS} decimal places"]
    if value >= Decimal(10) ** 13:
        return None, [f"{where}: too large"]
    return value, []


def limits_parse(items: Iterable[Mapping[str, Any]], *, where: str, model_ids: Iterable[str] | None = None,
                 lifting_allowed: bool = False) -> tuple[list[LimitSpec], list[str]]:
    """Checks a list of limits (already of the schema's shape) beyond what JSON Schema can say: whole numbers for
    requests and tokens, known model ids, no two limits of the same metric, period and model."""
    known = None if model_ids is None else set(model_ids)
    specs: list[LimitSpec] = []
    problems: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for index, item in enumerate(items):
        path = f"{where}[{index}]"
        value, found = limit_problems(metric=item["metric"], limit=item.get("limit"), where=f"{path}.limit",
                                      lifting_allowed=lifting_allowed)
        problems += found
        model = item.get("model") or ""
        if model and known is not None and model not in known:
            problems.append(f'{path}.model: unknown model "{model}"')
        spec = LimitSpec(metric=item["metric"], period=item["period"], limit=value, model=model)
        if spec.key in seen:
            scope = f" of {model}" if model else ""
            problems.append(f"{path}: a second {spec.metric}{scope} limit per {spec.period}")
        seen.add(spec.key)
        if not found:
            specs.append(spec)
    return specs, problems


def tiers_quota_parse(data: Mapping[str, Any], tiers: list, *, model_ids: Iterable[str]) -> list[str]:
    """Fills the fixture's tier entries' `limits`, `max_own_models` and `own_models_metered`; returns the problems."""
    problems: list[str] = []
    for index, (raw, entry) in enumerate(zip(data.get("tiers", []), tiers, strict=True)):
        entry.limits, found = limits_parse(raw.get("limits", []), where=f"tiers[{index}].limits", model_ids=model_ids)
        entry.max_own_models = raw.get("max_own_models")
        entry.own_models_metered = raw.get("own_models_metered", False)
        problems += found
    return problems


def tier_limits_set(*, tier: Tier, limits: Iterable[LimitSpec]) -> bool:
    """Makes the tier's limits exactly `limits`; returns whether anything changed (a second load changes nothing)."""
    wanted = {spec.key: spec.limit for spec in limits}
    stored = {(row.metric, row.period, row.model): row for row in tier.limits.all()}
    changed = False
    for key, row in stored.items():
        if key not in wanted:
            row.delete()
            changed = True
        elif row.limit != wanted[key]:
            row.limit = wanted[key]
            row.save(update_fields=["limit"])
            changed = True
    for (metric, period, model), value in wanted.items():
        if (metric, period, model) not in stored:
            QuotaLimit.objects.create(tier=tier, metric=metric, period=period, model=model, limit=value)
            changed = True
    if changed:
        limits_snapshot.invalidate()
    return changed


def api_key_limits_problems(*, owner_limits: Iterable[LimitSpec], key_limits: Iterable[LimitSpec]) -> list[str]:
    """Why a key's limits would be above its owner's (a key never gets more than its owner), as messages."""
    problems = []
    owner = [spec for spec in owner_limits if spec.limit is not None]
    for spec in key_limits:
        if spec.limit is None:
            problems.append(f"{spec.metric} per {spec.period}: a key's limit needs a value.")
            continue
        for bound in owner:
            if (bound.metric, bound.period) == (spec.metric, spec.period) and bound.model in ("", spec.model) \
                    and spec.limit > bound.limit:
                scope = f" of {bound.model}" if bound.model else ""
                problems.append(f"{spec.metric} per {spec.period}: {decimal_text(spec.limit)} is above the owner's "
                                f"limit{scope} of {decimal_text(bound.limit)}.")
    return problems
