"""Model analytics: latency, time to first token, throughput, success, failures, uptime and cost per model and per
provider, over a window (24 hours by the hour; 7 or 30 days by the day), read from the usage roll-ups plus the raw
rows of the current hour (the same way the usage pages read), and from the model tests. Never a scan of the raw log.

How a roll-up row counts for a model. A request counts for the model that answered it (the first, for a translation
answered by several); a request no model answered (every attempt failed) counts as a failure of the model it asked
for. A request of a user's own model counts for that model (a registry model of the same id is another model).
Connectivity tests (endpoint `model_test`) are not traffic: they are the uptime.

The figures:
- success rate: requests with status `ok` over all requests (a stream cut midway, `partial`, is a failure);
- failures by kind: the failed requests per `error_type` (their status when it has none);
- latency and TTFT percentiles: of the successful requests, from the merged fixed log-scale histograms (within 9.1%
  of the exact value: usage/histograms.py); TTFT exists for streams only;
- output tokens per second: the successful requests' output tokens over their total time (the latency histogram's
  bucket middles, so within 9.1% too);
- uptime: finished model tests that succeeded over all finished tests;
- cost per 1,000 requests: the cost of the model's requests (failures included) per 1,000 of them.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Q
from django.db.models.functions import Trunc
from django.utils import timezone

from health.models import ModelTest
from llmhub.errors import NotFound
from registry.models import UserLLMConfig
from registry.selectors import ModelSpec, Registry, TierSpec, check_model_access, model_status_read, registry_get
from usage.histograms import BUCKETS, bucket_middle, histogram_empty, histogram_percentile
from usage.models import UsageLog, UsageRollup
from usage.rollups import day_start, hour_floor, local_date, usage_hour_totals
from usage.selectors import closed_days_cached

# window -> (the step of its points, how many)
WINDOWS = {"24h": ("hour", 24), "7d": ("day", 7), "30d": ("day", 30)}
DEFAULT_WINDOW = "7d"
GENERATION, TRANSLATION = "generation", "translation"
TASKS = (GENERATION, TRANSLATION)
TRANSLATION_ENDPOINTS = frozenset({"api.translate"})
TEST_ENDPOINT = "model_test"
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
OK = UsageLog.Status.OK


def task_of(endpoint: str) -> str:
    """The task type of a request: translation from /api/translate, generation otherwise."""
    return TRANSLATION if endpoint in TRANSLATION_ENDPOINTS else GENERATION


# --- Windows ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Window:
    key: str
    step: str  # "hour" or "day"
    points: tuple[datetime, ...]  # the start of each hour or day (TIME_ZONE), oldest first; the last holds now
    now: datetime

    @property
    def start(self) -> datetime:
        return self.points[0]

    def point_of(self, moment: datetime) -> datetime:
        return hour_floor(moment) if self.step == "hour" else day_start(local_date(moment))


def window_get(key: str, *, now: datetime | None = None) -> Window:
    now = now or timezone.now()
    step, count = WINDOWS[key]
    if step == "hour":
        current = hour_floor(now).astimezone(UTC)
        # Hours step in absolute time (an hour lasts an hour across a DST change), shown in TIME_ZONE.
        points = tuple(hour_floor(current - timedelta(hours=back)) for back in range(count - 1, -1, -1))
    else:
        today = local_date(now)
        points = tuple(day_start(today - timedelta(days=back)) for back in range(count - 1, -1, -1))
    return Window(key=key, step=step, points=points, now=now)


# --- Sums of a model ----------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Stats:
    """What the roll-ups say about a model over some buckets; figures are None where there is nothing to measure."""

    requests: int = 0
    ok: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    ok_output_tokens: int = 0
    cost: Decimal = Decimal(0)
    failures: Counter = field(default_factory=Counter)
    latency: list[int] = field(default_factory=histogram_empty)  # successful requests
    ttft: list[int] = field(default_factory=histogram_empty)  # successful streams

    def add_bucket(self, *, status: str, error_type: str, requests: int, input_tokens: int, output_tokens: int,
                   cost: Decimal, latency: list[int], ttft: list[int]) -> None:
        self.requests += requests
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost += cost
        if status == OK:
            self.ok += requests
            self.ok_output_tokens += output_tokens
            _histogram_add(self.latency, latency)
            _histogram_add(self.ttft, ttft)
        else:
            self.failures[error_type or status] += requests

    def merge(self, other: Stats) -> None:
        self.requests += other.requests
        self.ok += other.ok
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.ok_output_tokens += other.ok_output_tokens
        self.cost += other.cost
        self.failures.update(other.failures)
        _histogram_add(self.latency, other.latency)
        _histogram_add(self.ttft, other.ttft)

    @property
    def failed(self) -> int:
        return self.requests - self.ok

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.requests if self.requests else None

    def latency_ms(self, quantile: float) -> float | None:
        return histogram_percentile(self.latency, quantile)

    def ttft_ms(self, quantile: float) -> float | None:
        return histogram_percentile(self.ttft, quantile)

    @property
    def output_tokens_per_second(self) -> float | None:
        seconds = sum(count * bucket_middle(index) for index, count in enumerate(self.latency) if count) / 1000
        return self.ok_output_tokens / seconds if seconds > 0 else None

    @property
    def cost_per_1k_requests(self) -> Decimal | None:
        return self.cost * 1000 / self.requests if self.requests else None


def _histogram_add(into: list[int], counts: list[int]) -> None:
    if len(counts) != BUCKETS:
        raise ValueError(f"a histogram has {BUCKETS} buckets, not {len(counts)}")
    for index, count in enumerate(counts):
        if count:
            into[index] += count


@dataclass(slots=True)
class Uptime:
    tests: int = 0
    succeeded: int = 0

    @property
    def rate(self) -> float | None:
        return self.succeeded / self.tests if self.tests else None


# --- Reading the roll-ups -----------------------------------------------------------------------------------------

# (point, model key, task, tier) -> Stats
Grouped = dict[tuple[datetime, str, str, str], Stats]
_COLUMNS = ("bucket_start", "user_id", "requested_model", "answered_model", "tier", "endpoint", "status",
            "error_type", "requests", "input_tokens", "output_tokens", "cost", "latency_histogram", "ttft_histogram")


def _owners_by_slug() -> dict[str, set[int]]:
    """Which users own a model of each id (their requests of that id are their own model's)."""
    owners: dict[str, set[int]] = defaultdict(set)
    for owner_id, slug in UserLLMConfig.objects.values_list("owner_id", "slug"):
        owners[slug].add(owner_id)
    return owners


def model_key_of(*, answered: str, requested: str, user_id: int | None, owners: dict[str, set[int]]) -> str | None:
    """The model a request counts for (see the module): a registry id, or `user:<owner>:<id>` (ModelSpec.key)."""
    model = answered.split(",", 1)[0] if answered else requested
    if not model:
        return None
    if user_id is not None and user_id in owners.get(model, ()):
        return f"user:{user_id}:{model}"
    return model


def _model_filter(ids: Iterable[str]) -> Q:
    ids = sorted(set(ids))
    return (Q(answered_model__in=ids) | Q(answered_model="", requested_model__in=ids)
            | Q(answered_model__contains=","))


def _rollup_rows(periods: Q, ids: Iterable[str] | None) -> Iterator[tuple]:
    """The roll-up buckets of `periods` (of these models, ids as logged; None: every model) as `_COLUMNS` tuples."""
    rows = UsageRollup.objects.filter(periods).exclude(endpoint=TEST_ENDPOINT)
    if ids is not None:
        rows = rows.filter(_model_filter(ids))
    yield from rows.order_by().values_list(*_COLUMNS).iterator(chunk_size=2000)


def _current_hour_rows(hour_start: datetime) -> Iterator[tuple]:
    """The raw rows of the current hour summed as a roll-up run would, as `_COLUMNS` tuples."""
    for key, sums in usage_hour_totals(hour_start).items():
        user_id, _key_id, requested, answered, tier, endpoint, status, error_type = key
        if endpoint != TEST_ENDPOINT:
            yield (hour_start, user_id, requested, answered, tier, endpoint, status, error_type, sums.requests,
                   sums.input_tokens, sums.output_tokens, sums.cost, sums.latency_histogram, sums.ttft_histogram)


def _group_into(grouped: Grouped, rows: Iterable[tuple], *, window: Window, owners: dict[str, set[int]],
                keys: set[str] | None) -> None:
    for (bucket_start, user_id, requested, answered, tier, endpoint, status, error_type, requests, input_tokens,
         output_tokens, cost, latency, ttft) in rows:
        key = model_key_of(answered=answered, requested=requested, user_id=user_id, owners=owners)
        if key is None or (keys is not None and key not in keys):
            continue
        group = (window.point_of(bucket_start), key, task_of(endpoint), tier)
        stats = grouped.get(group)
        if stats is None:
            stats = grouped[group] = Stats()
        stats.add_bucket(status=status, error_type=error_type, requests=requests, input_tokens=input_tokens,
                         output_tokens=output_tokens, cost=Decimal(cost), latency=latency, ttft=ttft)


def _closed_days_grouped(window: Window, owners: dict[str, set[int]]) -> Grouped:
    """Every model's stats of the window's days before today, from the daily roll-ups; cached
    (`usage.selectors.closed_days_cached`), the key holding who owns which model id too."""
    today_start = window.points[-1]
    owned = hashlib.sha256(repr(sorted((slug, sorted(ids)) for slug, ids in owners.items())).encode()).hexdigest()

    def build() -> Grouped:
        grouped: Grouped = {}
        periods = Q(period=UsageRollup.Period.DAY, bucket_start__gte=window.start, bucket_start__lt=today_start)
        _group_into(grouped, _rollup_rows(periods, None), window=window, owners=owners, keys=None)
        return grouped

    return closed_days_cached(name="analytics", parts=(window.start.isoformat(), today_start.isoformat(), owned[:16]),
                              today_start=today_start, build=build)


def analytics_grouped(*, window: Window, models: Iterable[ModelSpec]) -> Grouped:
    """The window's stats of `models` per (point, model key, task, tier): closed days from the daily roll-ups
    (cached), closed hours of today (or of the 24 hours) from the hourly ones, the current hour from the raw log."""
    models = list(models)
    keys = {model.key for model in models}
    owners = _owners_by_slug()
    hour_start = hour_floor(window.now)
    grouped: Grouped = {}
    if window.step == "day":
        grouped.update((group, stats) for group, stats in _closed_days_grouped(window, owners).items()
                       if group[1] in keys)
        first_hour = window.points[-1]
    else:
        first_hour = window.start
    hours = Q(period=UsageRollup.Period.HOUR, bucket_start__gte=first_hour, bucket_start__lt=hour_start)
    _group_into(grouped, _rollup_rows(hours, {model.id for model in models}), window=window, owners=owners, keys=keys)
    _group_into(grouped, _current_hour_rows(hour_start), window=window, owners=owners, keys=keys)
    return grouped


def stats_fold(grouped: Grouped, *, by: tuple[int, ...], task: str | None = None) -> dict[tuple, Stats]:
    """`grouped` summed per the parts `by` of its keys (0 point, 1 model, 2 task, 3 tier), of one task or all."""
    folded: dict[tuple, Stats] = defaultdict(Stats)
    for key, stats in grouped.items():
        if task is None or key[2] == task:
            folded[tuple(key[index] for index in by)].merge(stats)
    return folded


def uptime_grouped(*, window: Window, models: Iterable[ModelSpec]) -> dict[tuple[datetime, str], Uptime]:
    """Finished model tests of `models` in the window, per (point, model key), counted in SQL per hour or day."""
    models = list(models)
    registry_pks = {model.pk: model.key for model in models if not model.owned}
    own_pks = {model.pk: model.key for model in models if model.owned}
    finished = (ModelTest.State.SUCCEEDED, ModelTest.State.FAILED)
    tests = (ModelTest.objects.filter(Q(llm_model_id__in=registry_pks) | Q(user_model_id__in=own_pks),
                                      state__in=finished, finished_at__gte=window.start)
             .order_by().annotate(point=Trunc("finished_at", window.step, tzinfo=timezone.get_default_timezone()))
             .values("point", "llm_model_id", "user_model_id")
             .annotate(tests=Count("pk"), succeeded=Count("pk", filter=Q(state=ModelTest.State.SUCCEEDED))))
    uptime: dict[tuple[datetime, str], Uptime] = defaultdict(Uptime)
    for row in tests:
        key = registry_pks.get(row["llm_model_id"]) if row["llm_model_id"] else own_pks.get(row["user_model_id"])
        if key is None:
            continue
        entry = uptime[(window.point_of(row["point"]), key)]
        entry.tests += row["tests"]
        entry.succeeded += row["succeeded"]
    return uptime


# --- Who sees what ------------------------------------------------------------------------------------------------

def models_visible(*, user: AbstractBaseUser, tier: TierSpec, registry: Registry | None = None) -> list[ModelSpec]:
    """Staff: every registry model; others: the enabled registry models their tier allows. Then the user's own."""
    registry = registry or registry_get()
    shared = [model for model in registry.models.values()
              if user.is_staff or (model.enabled and model.allows(tier))]
    return shared + list(registry.own_models(user.pk).values())


def model_visible_get(*, user: AbstractBaseUser, tier: TierSpec, model_id: str) -> ModelSpec:
    """One model the user may see: their own first, else a registry model (403 `tier_required` above their tier,
    404 when there is none)."""
    registry = registry_get()
    model = registry.own_models(user.pk).get(model_id) or registry.models.get(model_id)
    if model is None or not (model.enabled or user.is_staff):
        raise NotFound(f"The model '{model_id}' does not exist.", code="model_not_found")
    if not (user.is_staff or model.owned):
        check_model_access(tier, model)
    return model


# --- What the API and the pages show ------------------------------------------------------------------------------

def figures(stats: Stats, uptime: Uptime | None = None) -> dict:
    """The figures of one model (or provider, or point) as plain data."""
    return {
        "requests": stats.requests,
        "succeeded": stats.ok,
        "failed": stats.failed,
        "success_rate": stats.success_rate,
        "failures": dict(stats.failures.most_common()),
        "latency_ms": {name: stats.latency_ms(q) for name, q in QUANTILES.items()},
        "ttft_ms": {name: stats.ttft_ms(q) for name, q in QUANTILES.items()},
        "output_tokens_per_second": stats.output_tokens_per_second,
        "input_tokens": stats.input_tokens,
        "output_tokens": stats.output_tokens,
        "cost": stats.cost,
        "cost_per_1k_requests": stats.cost_per_1k_requests,
        "uptime": {"tests": uptime.tests if uptime else 0, "succeeded": uptime.succeeded if uptime else 0,
                   "rate": uptime.rate if uptime else None},
    }


def _model_head(model: ModelSpec) -> dict:
    return {"id": model.id, "display_name": model.display_name, "provider": model.provider,
            "provider_name": model.provider_name, "owned": model.owned, "kind": model.kind,
            "input_price_per_million": model.input_price_per_million,
            "output_price_per_million": model.output_price_per_million}


def _uptime_fold(uptime: dict[tuple[datetime, str], Uptime], by_point: bool) -> dict:
    folded: dict = defaultdict(Uptime)
    for (point, key), entry in uptime.items():
        target = folded[(point, key) if by_point else key]
        target.tests += entry.tests
        target.succeeded += entry.succeeded
    return folded


def analytics_models(*, user: AbstractBaseUser, tier: TierSpec, window_key: str = DEFAULT_WINDOW,
                     task: str | None = None, now: datetime | None = None) -> dict:
    """Every model the user may see, side by side over the window (of one task, or all), and their providers.
    Models with traffic come first, by requests."""
    window = window_get(window_key, now=now)
    models = models_visible(user=user, tier=tier)
    grouped = analytics_grouped(window=window, models=models)
    per_model = stats_fold(grouped, by=(1,), task=task)
    uptime = _uptime_fold(uptime_grouped(window=window, models=models), by_point=False)
    rows = [{**_model_head(model), **figures(per_model.get((model.key,)) or Stats(), uptime.get(model.key))}
            for model in models]
    rows.sort(key=lambda row: (-row["requests"], row["id"]))
    providers: dict[str, tuple[str, Stats, Uptime]] = {}
    for model in models:
        _name, stats, up = providers.setdefault(model.provider, (model.provider_name, Stats(), Uptime()))
        stats.merge(per_model.get((model.key,)) or Stats())
        if model.key in uptime:
            up.tests += uptime[model.key].tests
            up.succeeded += uptime[model.key].succeeded
    provider_rows = [{"provider": slug, "provider_name": name, **figures(stats, up)}
                     for slug, (name, stats, up) in providers.items()]
    provider_rows.sort(key=lambda row: (-row["requests"], row["provider"]))
    return {"window": window.key, "task": task, "start": window.start, "end": window.now, "models": rows,
            "providers": provider_rows}


def _series_value(value):
    return float(value) if value is not None else None


def analytics_model(*, user: AbstractBaseUser, tier: TierSpec, model_id: str, window_key: str = DEFAULT_WINDOW,
                    task: str | None = None, now: datetime | None = None) -> dict:
    """One model's figures over the window, per task, and per point (hour or day) for the charts, and its status
    now (health and circuit breaker)."""
    model = model_visible_get(user=user, tier=tier, model_id=model_id)
    window = window_get(window_key, now=now)
    grouped = analytics_grouped(window=window, models=[model])
    uptime = uptime_grouped(window=window, models=[model])
    total_uptime = _uptime_fold(uptime, by_point=False).get(model.key)
    by_point = stats_fold(grouped, by=(0,), task=task)
    by_task = stats_fold(grouped, by=(2,))
    points = []
    for point in window.points:
        stats = by_point.get((point,)) or Stats()
        points.append({"start": point, **figures(stats, uptime.get((point, model.key)))})
    return {"window": window.key, "task": task, "start": window.start, "end": window.now, "step": window.step,
            "model": _model_head(model), "status": model_status_read(model),
            **figures(stats_fold(grouped, by=(1,), task=task).get((model.key,)) or Stats(), total_uptime),
            "by_task": {name: figures(by_task.get((name,)) or Stats()) for name in TASKS},
            "points": points}


def analytics_chart_series(points: list[dict], *, step: str) -> dict[str, list]:
    """The points as columns for the pages' charts (static/llmhub/usage.js): x in epoch seconds, rates in %."""
    def column(pick) -> list:
        return [_series_value(pick(point)) for point in points]

    def percent(value):
        return None if value is None else round(value * 100, 2)

    return {
        "x": [int(point["start"].timestamp()) for point in points],
        "step": 3600 if step == "hour" else 86400,
        "requests": column(lambda p: p["requests"]),
        "failed": column(lambda p: p["failed"]),
        "success_rate": column(lambda p: percent(p["success_rate"])),
        "uptime": column(lambda p: percent(p["uptime"]["rate"])),
        "latency_p50": column(lambda p: p["latency_ms"]["p50"]),
        "latency_p95": column(lambda p: p["latency_ms"]["p95"]),
        "latency_p99": column(lambda p: p["latency_ms"]["p99"]),
        "ttft_p50": column(lambda p: p["ttft_ms"]["p50"]),
        "ttft_p95": column(lambda p: p["ttft_ms"]["p95"]),
        "tokens_per_second": column(lambda p: p["output_tokens_per_second"]),
        "cost_per_1k": column(lambda p: p["cost_per_1k_requests"]),
    }


def recommendations_recent(*, limit: int = 100) -> list:
    """The newest recommendations (staff), newest period first."""
    from analytics.models import Recommendation

    return list(Recommendation.objects.order_by("-period", "-id")[:limit])
