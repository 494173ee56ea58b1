"""Routing policies: pure functions over a snapshot of candidate models, no I/O.

`route` orders the models one request may try and explains the order. Everything it needs comes in as plain data:
the models (`ModelSpec`), what the request uses (`Needs`), health (`Health`: open breakers, cool-downs), expected
latency and success per model (`ModelStats`), the tier's policy (`PolicySpec`), the user's feedback counts (for the
bandit) and a random source (seeded by the fleet simulator). Policies:

- "default": the model the request names, else the user's default for the task, else the tier's default; then its
  fallbacks (its hand-written list, or equivalent models with `"fallbacks": "auto"`);
- "task": as "default", with the tier's own model per task type (`params.models`, e.g. {"code": "qwen3-coder-plus"})
  before the tier default (a user's own default for the task still comes first);
- "performance": lowest expected latency among models at or above a success floor;
- "cost": cheapest expected cost among models meeting the success floor and the latency objective, within the
  user's remaining budget;
- "preference": Thompson sampling over the user's feedback for the task (Beta(1 + ups, 1 + downs) per model),
  among models within a cost cap and not confidently worse than the best (bounded exploration).

A request naming a model (or a user default that applies) pins the winner: the policy then only orders the automatic
fallbacks. Capability and context always filter: a fallback never lacks what the request uses (a vision request
never falls back to a model without vision) and never has a smaller window than the request needs.
"""

import math
import random
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from registry.selectors import ModelSpec, TierSpec

POLICIES = ("default", "task", "performance", "cost", "preference")
SCORED = ("performance", "cost", "preference")
TASKS = ("generation", "translation", "code", "summarise")

# Priors for a model with no statistics yet: it is assumed to work, at this latency.
PRIOR_LATENCY_MS = 1000.0
PRIOR_SUCCESS = 0.99
DEFAULT_PARAMS: Mapping[str, Any] = {
    "success_floor": 0.95,          # performance, cost: a model answering less often than this is not chosen
    "latency_objective_ms": None,   # cost: a model expected slower than this is not chosen (None: no objective)
    "cost_cap_ratio": 3.0,          # preference: explore only models costing at most this times the cheapest
    "max_candidates": 3,            # scored policies: the winner and this many minus one fallbacks
    "confidence_z": 2.0,            # preference: a model whose upper bound is below the best's lower bound is out
    "models": {},                   # task: task type -> model id
}


@dataclass(frozen=True, slots=True)
class Needs:
    """What a request uses: capabilities, the tokens its context must hold, and its expected size for cost."""

    capabilities: frozenset[str] = frozenset()
    context_tokens: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 256


# Live figures drift back to the model's baseline (roll-ups, else the priors) with this half-life when no new outcome
# comes: a model a policy stopped choosing after failures is tried again once its record has had time to heal.
RECOVERY_HALF_LIFE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class ModelStats:
    """Expected latency and success of one model. Live figures (`at`: the monotonic time of the last outcome) drift
    back towards `base_*` as time passes (`current`)."""

    latency_ms: float = PRIOR_LATENCY_MS
    success: float = PRIOR_SUCCESS
    samples: int = 0
    at: float | None = None
    base_latency_ms: float = PRIOR_LATENCY_MS
    base_success: float = PRIOR_SUCCESS

    def current(self, now: float) -> tuple[float, float]:
        """(latency, success) expected at `now`."""
        if self.at is None or now <= self.at:
            return self.latency_ms, self.success
        weight = 0.5 ** ((now - self.at) / RECOVERY_HALF_LIFE_SECONDS)
        return (self.base_latency_ms + (self.latency_ms - self.base_latency_ms) * weight,
                self.base_success + (self.success - self.base_success) * weight)


NO_STATS = ModelStats()


@dataclass(frozen=True, slots=True)
class Health:
    """Open breakers (model keys) and cool-downs (model key -> monotonic time it may be tried again) at `now`."""

    open_keys: Container[str] = frozenset()
    cooled_until: Mapping[str, float] = field(default_factory=dict)
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class PolicySpec:
    name: str = "default"
    params: Mapping[str, Any] = field(default_factory=dict)

    def param(self, name: str) -> Any:
        return self.params.get(name, DEFAULT_PARAMS[name])


DEFAULT_POLICY = PolicySpec()


@dataclass(slots=True, eq=False)
class Scored:
    """One model's expectations for this request, and its score under the policy (lower is better)."""

    model: ModelSpec
    latency_ms: float
    success: float
    cost: float
    score: float = 0.0


@dataclass(slots=True)
class Route:
    """The models to try, in order, and why: `explanation` is stored on the usage row, `reason` is the header."""

    models: list[ModelSpec]
    policy: str
    reason: str
    considered: list[tuple]  # (model id, outcome, reason, Scored or None): see `explanation`
    task: str = "generation"
    shadow: dict[str, Any] | None = None

    @property
    def winner(self) -> ModelSpec | None:
        return self.models[0] if self.models else None

    def explanation(self) -> dict[str, Any]:
        winner = self.winner
        return {"policy": self.policy, "task": self.task, "winner": winner.id if winner else None,
                "reason": self.reason, "candidates": [_entry_dict(entry) for entry in self.considered],
                **({"shadow": self.shadow} if self.shadow else {})}

    def header(self) -> str:
        """The `x-llmhub-route` value: short, ASCII, no secrets."""
        winner = self.winner
        text = f"{self.policy}; {winner.id if winner else '-'}; {self.reason}"
        return text.encode("ascii", "replace").decode()[:200]


def expected(model: ModelSpec, *, needs: Needs, stats: Mapping[str, ModelStats], now: float = 0.0,
             memo: dict[str, tuple[float, float, float]] | None = None) -> Scored:
    """The model's expected latency, success and cost for this request (`memo`: those already worked out for
    it, shared by the live and the shadow policy)."""
    if memo is not None:
        known_figures = memo.get(model.key)
        if known_figures is None:
            known_figures = memo[model.key] = _figures(model, needs, stats, now)
        return Scored(model, *known_figures)
    return Scored(model, *_figures(model, needs, stats, now))


def _figures(model: ModelSpec, needs: Needs, stats: Mapping[str, ModelStats], now: float) -> tuple[float, float, float]:
    known = stats.get(model.key)
    if known is None:
        latency, success = PRIOR_LATENCY_MS, PRIOR_SUCCESS
    elif known.at is None:
        latency, success = known.latency_ms, known.success
    else:
        latency, success = known.current(now)
    cost = (needs.prompt_tokens * _price(model.input_price_per_million)
            + needs.output_tokens * _price(model.output_price_per_million)) / 1_000_000
    return latency, success, cost


_prices: dict[Decimal, float] = {}


def _price(value: Decimal) -> float:
    """A price as a float (a handful of distinct prices: converted once)."""
    price = _prices.get(value)
    if price is None:
        if len(_prices) > 10_000:
            _prices.clear()
        price = _prices[value] = float(value)
    return price


def unfit_reason(model: ModelSpec, *, tier: TierSpec, kind: str, needs: Needs, health: Health) -> str | None:
    """Why `model` cannot take the request at all (tier, capability, context, health), or None."""
    if not model.enabled:
        return "disabled"
    if model.kind != kind:
        return "kind"
    required = model.required_tier
    if required is None or tier.rank < required.rank:
        return f"tier: needs {required.slug if required else 'none'}"
    if needs.capabilities and not needs.capabilities <= model.capabilities:
        return "capability: no " + ", ".join(sorted(needs.capabilities - model.capabilities))
    if needs.context_tokens > model.context_window:
        return f"context: needs {needs.context_tokens} > {model.context_window}"
    if health.cooled_until and health.cooled_until.get(model.key, 0.0) > health.now:
        return f"health: cooling {health.cooled_until[model.key] - health.now:.0f}s"
    return None


def equivalent(model: ModelSpec, to: ModelSpec) -> bool:
    """Another model that can stand in for `to`: the same kind and at least its capabilities."""
    return model is not to and model.kind == to.kind and to.capabilities <= model.capabilities


def _entry(scored: Scored | None, model: ModelSpec, outcome: str, reason: str) -> tuple:
    """A line of the explanation, formatted only when the explanation is (`Route.explanation`)."""
    return (model.id, outcome, reason, scored)


def _entry_dict(entry: tuple) -> dict[str, Any]:
    model_id, outcome, reason, scored = entry
    line: dict[str, Any] = {"model": model_id, "outcome": outcome, "reason": reason}
    if scored is not None:
        line.update(score=round(scored.score, 6), latency_ms=round(scored.latency_ms, 1),
                    success=round(scored.success, 4), cost=round(scored.cost, 8))
    return line


def _rank(policy: PolicySpec, scored: list[Scored], *, budget: float | None, counts: Mapping[str, tuple[int, int]],
          rng: random.Random) -> tuple[list[Scored], dict[str, str]]:
    """The scored models in the policy's order, and why each one left out was (keyed by model key)."""
    out: dict[str, str] = {}
    if not scored:
        return [], out
    floor = policy.param("success_floor")
    if policy.name == "performance":
        keep = [s for s in scored if s.success >= floor] or scored
        if len(keep) < len(scored):
            for s in scored:
                if s.success < floor:
                    out[s.model.key] = f"success {s.success:.3f} < floor {floor}"
        for s in keep:
            s.score = s.latency_ms if s.success >= floor else s.latency_ms / max(s.success, 1e-6) * 10
        return sorted(keep, key=lambda s: (s.score, s.cost)), out
    if policy.name == "cost":
        objective = policy.param("latency_objective_ms")
        keep = []
        for s in scored:
            if budget is not None and s.cost > budget:
                out[s.model.key] = f"quota: cost {s.cost:.6f} > remaining {budget:.6f}"
            elif s.success < floor:
                out[s.model.key] = f"success {s.success:.3f} < floor {floor}"
            elif objective is not None and s.latency_ms > objective:
                out[s.model.key] = f"latency {s.latency_ms:.0f}ms > objective {objective}ms"
            else:
                keep.append(s)
        if not keep:  # nothing meets every objective: the most reliable affordable ones, cheapest first
            keep = [s for s in scored if budget is None or s.cost <= budget]
            for s in keep:
                out.pop(s.model.key, None)
        for s in keep:
            s.score = s.cost
        return sorted(keep, key=lambda s: (s.score, s.latency_ms)), out
    if policy.name == "preference":
        cheapest = min(s.cost for s in scored)
        cap = cheapest * policy.param("cost_cap_ratio")
        affordable = []
        for s in scored:
            if s.cost > cap + 1e-12:
                out[s.model.key] = f"cost: {s.cost:.6f} > cap {cap:.6f}"
            elif budget is not None and s.cost > budget:
                out[s.model.key] = f"quota: cost {s.cost:.6f} > remaining {budget:.6f}"
            else:
                affordable.append(s)
        affordable = affordable or scored
        z = policy.param("confidence_z")
        bounds = {}
        for s in affordable:
            ups, downs = counts.get(s.model.id, (0, 0))
            a, b = 1 + ups, 1 + downs
            mean = a / (a + b)
            spread = z * math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
            bounds[s.model.key] = (mean - spread, mean + spread, a, b)
        best_lower = max(low for low, _, _, _ in bounds.values())
        keep = []
        for s in affordable:
            high = bounds[s.model.key][1]
            if high < best_lower:
                out[s.model.key] = f"preference: confidently worse ({high:.2f} < {best_lower:.2f})"
            else:
                keep.append(s)
        for s in keep:
            _, _, a, b = bounds[s.model.key]
            s.score = -rng.betavariate(a, b)
        return sorted(keep, key=lambda s: (s.score, s.cost)), out
    raise ValueError(f"not a scored policy: {policy.name}")


def route(*, primary: ModelSpec, pinned: str | None, pool: Sequence[ModelSpec], tier: TierSpec, needs: Needs,
          health: Health, stats: Mapping[str, ModelStats], policy: PolicySpec = DEFAULT_POLICY,
          task: str = "generation", counts: Mapping[str, tuple[int, int]] | None = None,
          budget: float | None = None, rng: random.Random | None = None,
          fallbacks: Mapping[str, ModelSpec] | None = None, explain: bool = True,
          memo: dict[str, Any] | None = None) -> Route:
    """The models to try for one request, in order, with the explanation.

    `primary` is the model resolution found (explicit, the user's default, or the tier's); `pinned` says why it is
    fixed ("explicit", "user default") or is None when the policy may choose. `pool` is every model the caller could
    use (the tier's and their own), `fallbacks` resolves hand-written fallback ids (default: the pool by id).
    Unhealthy models (open breakers) are tried last, never dropped: they are better than no answer. Without
    `explain` (a shadow policy's run) no explanation is built.
    """
    rng = rng or random.Random()  # noqa: S311  (sampling, not secrets)
    counts = counts or {}
    by_id = fallbacks if fallbacks is not None else {model.id: model for model in pool}
    kind = primary.kind
    screened = memo.get(_SCREENED) if memo is not None else None  # the live policy's screening, for its shadow
    if screened is None:
        fit: list[ModelSpec] = []
        unfit: list[tuple] = []
        for model in pool:
            why = unfit_reason(model, tier=tier, kind=kind, needs=needs, health=health)
            if why is None:
                fit.append(model)
            elif model.key != primary.key:
                unfit.append(_entry(None, model, "skipped", why))
        screened = (fit, unfit)
        if memo is not None:
            memo[_SCREENED] = screened
    fit, unfit = screened
    considered: list[tuple] = list(unfit) if explain else []
    note = considered.append if explain else _ignore
    fit_keys = {model.key for model in fit}
    pool_keys = {model.key for model in pool}

    chosen_by = policy.name
    if pinned is None and policy.name == "task":
        mapped = by_id.get(policy.param("models").get(task, ""))
        if mapped is not None and mapped.key in fit_keys:
            primary, pinned = mapped, f"task {task}"
    if pinned is not None or policy.name not in SCORED:
        winner_reason = pinned or "tier default"
        if pinned == "explicit":
            chosen_by = "explicit"
        # The resolved model itself: kept even when it lacks a capability or the window (the upstream, or the
        # context check after routing, gives the client its own clear answer), dropped only when it cannot be tried.
        cooling = health.cooled_until.get(primary.key, 0.0) > health.now
        head_out = "disabled" if not primary.enabled else "tier" if not primary.allows(tier) else \
            f"health: cooling {health.cooled_until[primary.key] - health.now:.0f}s" if cooling else None
        ordered = [] if head_out else [primary]
        if head_out:
            note(_entry(None, primary, "skipped", head_out))
        taken = {primary.key}
        if primary.fallbacks_auto:
            followers = [model for model in fit if model.key != primary.key and equivalent(model, primary)]
            ranked, out = _rank(policy if policy.name in SCORED else PolicySpec("cost"),
                                [expected(m, needs=needs, stats=stats, now=health.now, memo=memo) for m in followers],
                                budget=budget, counts=counts, rng=rng)
            ordered += [s.model for s in ranked]
            scores = {s.model.key: s for s in ranked}
            for model in fit:
                if model.key != primary.key and not equivalent(model, primary):
                    note(_entry(None, model, "skipped", "not equivalent (capabilities or kind)"))
        else:
            out, scores = {}, {}
            for model_id in primary.fallbacks:
                model = by_id.get(model_id)
                if model is None or model.key in taken:
                    continue
                taken.add(model.key)
                if model.key in fit_keys:
                    ordered.append(model)
                elif model.key not in pool_keys and \
                        (why := unfit_reason(model, tier=tier, kind=kind, needs=needs, health=health)) is not None:
                    note(_entry(None, model, "skipped", why))
            for model in fit:
                if model.key not in taken:
                    note(_entry(None, model, "skipped", f"not a fallback of {primary.id}"))
    else:
        ranked, out = _rank(policy, [expected(m, needs=needs, stats=stats, now=health.now, memo=memo) for m in fit],
                            budget=budget, counts=counts, rng=rng)
        limit = max(1, int(policy.param("max_candidates")))
        ordered = [s.model for s in ranked[:limit]]
        scores = {s.model.key: s for s in ranked}
        if explain:
            for position, s in enumerate(ranked[limit:], start=limit + 1):
                out[s.model.key] = f"ranked {position} of {len(ranked)}"
        if not ordered:  # nothing fits: the resolved model, so the request gets its own clear error
            ordered = [primary]
        winner_reason = _won(policy.name, ranked[0], len(ranked)) if ranked else "no model fits; resolved model"

    healthy = [model for model in ordered if model.key not in health.open_keys]
    ordered = healthy + [model for model in ordered if model.key in health.open_keys]
    if not explain:
        return Route(models=ordered, policy=chosen_by, reason=winner_reason, considered=considered, task=task)
    ordered_keys = {model.key for model in ordered}
    for model in pool:
        if model.key in out and model.key not in ordered_keys:
            note(_entry(scores.get(model.key), model, "skipped", out[model.key]))
    for position, model in enumerate(ordered):
        scored = scores.get(model.key)
        if position == 0:
            reason = winner_reason + (" (breaker open: nothing healthier)" if model.key in health.open_keys else "")
            considered.insert(0, _entry(scored, model, "winner", reason))
        else:
            reason = "fallback" + (" (breaker open: tried last)" if model.key in health.open_keys else
                                   f" {position}")
            considered.insert(position, _entry(scored, model, "fallback", reason))
    if ordered and ordered[0].key in health.open_keys:
        winner_reason += "; breaker open"
    return Route(models=ordered, policy=chosen_by, reason=winner_reason, considered=considered, task=task)


_SCREENED = "\0screened"  # memo key: the pool split into fit models and the others' explanation lines


def _ignore(entry: tuple) -> None:
    """Where the explanation's lines go when none is built."""


def _won(policy: str, best: Scored, of: int) -> str:
    if policy == "performance":
        return f"fastest of {of} ({best.latency_ms:.0f}ms, success {best.success:.3f})"
    if policy == "cost":
        return f"cheapest of {of} meeting objectives ({best.cost:.6f}/request)"
    return f"preferred by Thompson sampling of {of}"


def request_needs(body: Mapping[str, Any], *, context_tokens: int, prompt_tokens: int,
                  max_tokens: int | None) -> Needs:
    """What a chat (or Responses) request uses: tools, JSON mode, vision (an image part), streaming."""
    used = set()
    if body.get("tools") or body.get("functions"):
        used.add("tools")
    response_format = body.get("response_format")
    text = body.get("text")
    if (isinstance(response_format, Mapping) and response_format.get("type") in ("json_object", "json_schema")) or (
            isinstance(text, Mapping) and isinstance(text.get("format"), Mapping)
            and text["format"].get("type") in ("json_object", "json_schema")):
        used.add("json_mode")
    if body.get("stream"):
        used.add("streaming")
    if _has_image(body.get("messages")) or _has_image(body.get("input")):
        used.add("vision")
    return Needs(capabilities=frozenset(used), context_tokens=context_tokens, prompt_tokens=prompt_tokens,
                 output_tokens=max_tokens or DEFAULT_OUTPUT_TOKENS)


DEFAULT_OUTPUT_TOKENS = 256
_IMAGE_PARTS = ("image_url", "input_image", "image")


def _has_image(items: Any) -> bool:
    if not isinstance(items, list):
        return False
    for item in items:
        content = item.get("content") if isinstance(item, Mapping) else None
        if isinstance(item, Mapping) and item.get("type") in _IMAGE_PARTS:
            return True
        if isinstance(content, list) and any(isinstance(part, Mapping) and part.get("type") in _IMAGE_PARTS
                                             for part in content):
            return True
    return False
