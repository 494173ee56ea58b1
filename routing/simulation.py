"""A fleet of simulated models of known latency, cost, failure and quality (with drift) driven through the real
router in process (`routing.services.route_request`, the live statistics of `routing.stats.StatsBoard`), on a
simulated clock. `manage.py simulate_fleet` runs the three scenarios and prints (and writes) their table.

- cost: the cost-aware policy against an oracle that knows every model's true profile;
- drift: the performance policy while its fastest model degrades mid-run (latency, then failures);
- bandit: the preference policy's regret against always choosing the model users like best.
"""

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from registry.selectors import ModelSpec, Registry, TierSpec
from routing.policies import Health, ModelStats, Needs, PolicySpec, Route
from routing.services import route_request
from routing.stats import ALPHA_LATENCY, ALPHA_SUCCESS, StatsBoard

TIER = TierSpec("sim", "Simulated", 0)
SECONDS_PER_REQUEST = 0.1  # the simulated clock: 10 requests a second
NEEDS = Needs(capabilities=frozenset(), context_tokens=1500, prompt_tokens=1000, output_tokens=500)


@dataclass
class Profile:
    """A model's true behaviour; from request `drift_at` on, its latency and failure rate become the drifted ones."""

    model_id: str
    latency_ms: float
    failure: float
    input_price: float
    output_price: float
    quality: float = 0.5  # the chance a user gives an answer a thumbs up
    drift_at: int | None = None
    drift_latency_ms: float | None = None
    drift_failure: float | None = None

    def at(self, request: int) -> tuple[float, float]:
        if self.drift_at is not None and request >= self.drift_at:
            return (self.drift_latency_ms or self.latency_ms,
                    self.failure if self.drift_failure is None else self.drift_failure)
        return self.latency_ms, self.failure


def model_of(profile: Profile, *, capabilities: tuple[str, ...] = ("streaming",)) -> ModelSpec:
    return ModelSpec(
        id=profile.model_id, pk=0, display_name=profile.model_id, upstream_model=profile.model_id, provider="sim",
        provider_name="Simulated", base_url="http://127.0.0.1:1/v1", api_key="", timeout=30.0, connect_timeout=2.0,
        headers={}, allowed_tiers=(TIER.slug,), required_tier=TIER, enabled=True, capabilities=frozenset(capabilities),
        context_window=128_000, input_price_per_million=Decimal(str(profile.input_price)),
        output_price_per_million=Decimal(str(profile.output_price)), fallbacks=(),
    )


@dataclass
class Fleet:
    profiles: list[Profile]
    seed: int = 1
    registry: Registry = field(init=False)
    board: StatsBoard = field(init=False)

    def __post_init__(self) -> None:
        self.models = {profile.model_id: model_of(profile) for profile in self.profiles}
        self.by_id = {profile.model_id: profile for profile in self.profiles}
        self.registry = Registry(tiers={TIER.slug: TIER}, models=self.models, default_model_id=self.profiles[0].model_id,
                                 tier_default_ids={})
        self.board = StatsBoard()  # live outcomes only: the simulated fleet has no roll-ups
        self.rng = random.Random(self.seed)  # noqa: S311  (a seeded simulation)

    def cost(self, model_id: str) -> float:
        profile = self.by_id[model_id]
        return (NEEDS.prompt_tokens * profile.input_price + NEEDS.output_tokens * profile.output_price) / 1_000_000

    def route(self, request: int, policy: PolicySpec, counts: dict | None = None) -> Route:
        primary = self.models[self.profiles[0].model_id]
        return route_request(primary=primary, pinned=None, registry=self.registry, tier=TIER, user_id=None,
                             task="generation", needs=NEEDS, plan=(policy, None), counts=counts,
                             health=Health(now=request * SECONDS_PER_REQUEST), stats=self.board.view(), rng=self.rng)

    def serve(self, request: int, route: Route) -> tuple[str | None, float]:
        """Tries the route's models in order like the gateway; (the model that answered or None, its cost)."""
        now = request * SECONDS_PER_REQUEST
        for model in route.models:
            latency, failure = self.by_id[model.id].at(request)
            latency *= math.exp(self.rng.gauss(0, 0.1))
            if self.rng.random() < failure:
                self.board.note(model.key, ok=False, now=now)
                continue
            self.board.note(model.key, ok=True, latency_ms=latency, now=now)
            return model.id, self.cost(model.id)
        return None, 0.0


def cost_scenario(requests: int = 10_000, seed: int = 1) -> dict:
    """Cheap-but-flaky, cheap-but-slow, and reliable models of several prices; objectives: success >= 0.95,
    latency <= 2000 ms. The oracle pays the cheapest model that truly meets both, every time."""
    profiles = [
        Profile("premium", 400, 0.001, 5.0, 15.0),
        Profile("flaky-cheap", 300, 0.30, 0.10, 0.30),
        Profile("slow-cheap", 4000, 0.001, 0.15, 0.40),
        Profile("good-cheap", 600, 0.005, 0.40, 1.20),
        Profile("mid", 500, 0.002, 1.00, 3.00),
        Profile("mid-2", 450, 0.010, 0.80, 2.50),
    ]
    fleet = Fleet(profiles, seed=seed)
    policy = PolicySpec("cost", {"success_floor": 0.95, "latency_objective_ms": 2000})
    oracle = min((p for p in profiles if 1 - p.failure >= 0.95 and p.latency_ms <= 2000),
                 key=lambda p: fleet.cost(p.model_id))
    spent, answered = 0.0, 0
    for request in range(requests):
        model_id, cost = fleet.serve(request, fleet.route(request, policy))
        spent += cost
        answered += model_id is not None
    oracle_cost = fleet.cost(oracle.model_id) * requests
    return {"requests": requests, "success": answered / requests, "cost": spent, "oracle_cost": oracle_cost,
            "ratio": spent / oracle_cost, "oracle": oracle.model_id}


def drift_bound(*, before_ms: float, after_ms: float, next_ms: float) -> int:
    """Requests the performance policy needs to leave a model whose latency jumps from `before_ms` to `after_ms`,
    when the next fastest is expected at `next_ms`: the least k with
    before + (after - before)(1 - (1 - ALPHA_LATENCY)^k) > next."""
    return math.ceil(math.log(1 - (next_ms - before_ms) / (after_ms - before_ms)) / math.log(1 - ALPHA_LATENCY))


def drift_scenario(requests: int = 4_000, seed: int = 2, *, kind: str = "latency") -> dict:
    """The fastest model degrades at the middle of the run (latency x8, or 50% failures)."""
    half = requests // 2
    degrading = Profile("fast", 100, 0.0, 1.0, 2.0, drift_at=half,
                        drift_latency_ms=800 if kind == "latency" else None,
                        drift_failure=0.5 if kind == "failure" else None)
    profiles = [degrading, Profile("steady", 200, 0.001, 1.0, 2.0), Profile("slower", 300, 0.001, 1.0, 2.0),
                Profile("slowest", 600, 0.001, 1.0, 2.0)]
    fleet = Fleet(profiles, seed=seed)
    # What the roll-ups of the day before say: every model as it was before the drift.
    fleet.board.baseline_set({p.model_id: ModelStats(p.latency_ms, 1 - p.failure) for p in profiles})
    policy = PolicySpec("performance", {"success_floor": 0.95})
    moved_after, failures_before, on_degraded, answered = None, 0, 0, 0
    for request in range(requests):
        route = fleet.route(request, policy)
        winner = route.winner.id
        if request >= half:
            if winner == "fast":
                on_degraded += 1
            elif moved_after is None:
                moved_after = request - half
        model_id, _ = fleet.serve(request, route)
        answered += model_id is not None
        if request >= half and moved_after is None and model_id != "fast":
            failures_before += 1
    if kind == "latency":  # requests: the latency estimate passes the next fastest model's
        bound, moved = drift_bound(before_ms=100, after_ms=800, next_ms=200), moved_after
    else:  # failures: the success estimate falls from 1.0 below the floor after this many in a row, or fewer
        bound, moved = math.ceil(math.log(0.95) / math.log(1 - ALPHA_SUCCESS)), failures_before
    return {"kind": kind, "requests": requests, "moved_after": moved_after, "bound": bound, "moved": moved,
            "share_after": on_degraded / (requests - half), "success": answered / requests}


def bandit_scenario(horizons: tuple[int, ...] = (100, 1_000, 10_000), seed: int = 3) -> dict:
    """Five models users like to different degrees (thumbs up with probability `quality`); the preference policy
    learns from the thumbs. Regret: the thumbs up missed against always choosing the best-liked model."""
    profiles = [Profile("a", 500, 0.0, 1.0, 2.0, quality=0.55), Profile("b", 500, 0.0, 1.2, 2.4, quality=0.60),
                Profile("c", 500, 0.0, 0.9, 1.8, quality=0.70), Profile("d", 500, 0.0, 1.5, 3.0, quality=0.80),
                Profile("e", 500, 0.0, 1.1, 2.2, quality=0.65), Profile("luxury", 500, 0.0, 20.0, 60.0, quality=0.95)]
    fleet = Fleet(profiles, seed=seed)
    policy = PolicySpec("preference", {"cost_cap_ratio": 3.0})
    best = max(p.quality for p in profiles if fleet.cost(p.model_id) <= 3.0 * min(fleet.cost(q.model_id)
                                                                                  for q in profiles))
    counts: dict[str, tuple[int, int]] = {}
    regret, at = 0.0, {}
    rng = random.Random(seed)  # noqa: S311  (a seeded simulation)
    for request in range(1, max(horizons) + 1):
        winner = fleet.route(request, policy, counts).winner.id
        quality = fleet.by_id[winner].quality
        ups, downs = counts.get(winner, (0, 0))
        counts[winner] = (ups + 1, downs) if rng.random() < quality else (ups, downs + 1)
        regret += best - quality
        if request in horizons:
            at[request] = regret
    return {"regret": at, "best": best}


def routing_overhead(models: int = 20, calls: int = 5_000) -> dict[str, float]:
    """Microseconds per `route_request` over `models` candidates: the cost policy with a performance shadow, and
    the default policy of a model with automatic fallbacks."""
    profiles = [Profile(f"m{index:02d}", 200 + 37 * index, 0.01, 0.1 + index / 10, 0.3 + index / 5)
                for index in range(models)]
    fleet = Fleet(profiles)
    for index, profile in enumerate(profiles):
        fleet.board.note(profile.model_id, ok=True, latency_ms=profile.latency_ms, now=index)
    auto = model_of(profiles[0])
    auto_registry = Registry(tiers=fleet.registry.tiers, models={**fleet.models, auto.id: _with_auto(auto)},
                             default_model_id=None, tier_default_ids={})
    stats = fleet.board.view()
    health = Health(now=100.0)
    scored = (PolicySpec("cost"), PolicySpec("performance"))
    default = (PolicySpec("default"), None)

    def scored_call() -> Route:
        return route_request(primary=fleet.models["m00"], pinned=None, registry=fleet.registry, tier=TIER,
                             user_id=None, task="generation", needs=NEEDS, health=health, plan=scored, stats=stats)

    def auto_call() -> Route:
        return route_request(primary=auto_registry.models["m00"], pinned="explicit", registry=auto_registry, tier=TIER,
                             user_id=None, task="generation", needs=NEEDS, health=health, plan=default, stats=stats)

    return {"cost policy + performance shadow (request path)": _per_call_us(scored_call, calls),
            "named model + automatic fallbacks (request path)": _per_call_us(auto_call, calls),
            "cost + shadow + its explanation (the usage writer makes it)": _per_call_us(
                lambda: scored_call().explanation(), calls)}


def _with_auto(model: ModelSpec) -> ModelSpec:
    from dataclasses import replace

    return replace(model, fallbacks_auto=True)


def _per_call_us(call: Callable[[], object], calls: int) -> float:
    """The median over 5 rounds of the mean CPU time per call, in microseconds (CPU time of this process: what
    routing costs, not the time other processes of a shared machine took meanwhile)."""
    for _ in range(200):
        call()
    rounds = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(calls // 5):
            call()
        rounds.append((time.process_time() - started) / (calls // 5) * 1e6)
    return sorted(rounds)[2]

