"""`make bench-dashboard`'s data: a benchmark database filled with millions of usage rows over the last days, as
many users with their keys, tiers and models would leave them, then rolled up (usage.rollups.usage_rollups_rebuild).

Rows are streamed into PostgreSQL with COPY (psycopg's `copy.write_row`), a day at a time, oldest first, so ids grow
with time as the writer's would. Users are drawn from a Zipf-like law (a few heavy users, a long tail); each user has
a tier, one to three hub API keys (a few requests come from the pages, without a key), a favourite model among those
their tier may use, and a habit of endpoints. 94% of requests succeed, 4% fail (no model answered, or after
fallbacks), 2% are streams cut short; 3% are answered by a fallback model. Latencies are log-normal.

For benchmark databases only: it deletes the usage log and the roll-ups first (`usage_fill_bench` refuses a
database whose name does not say "bench").
"""

import hashlib
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import connection, transaction
from django.utils import timezone

from registry.models import ApiKey, QuotaLimit, Tier, UserProfile
from usage.models import UsageDaySummary, UsageLog, UsageRollup, UsageRollupState
from usage.rollups import usage_rollups_rebuild

USERNAME_PREFIX = "bench-user-"
STAFF_USERNAME = "bench-staff"
PASSWORD = "bench-dashboard"
# Model id → (input, output) price per million tokens, and the lowest tier rank that may use it (the fixture's).
MODELS = {
    "deepseek-v3.2": (0.28, 0.42, 0), "demo": (0.5, 1.5, 0), "demo-backup": (0.25, 0.75, 0),
    "qwen3-coder-plus": (1.0, 5.0, 10), "kimi-k2-0905": (0.6, 2.5, 10), "demo-pro": (2.0, 6.0, 10),
    "gpt-5-pro": (15.0, 120.0, 20), "demo-premium": (10.0, 30.0, 20),
}
TIERS = (("free", 0, 0.55), ("pro", 10, 0.3), ("premium", 20, 0.1), ("enterprise", 30, 0.05))
ENDPOINTS = (("v1.chat_completions", 0.8), ("api.generate", 0.1), ("api.translate", 0.06), ("pages.playground", 0.04))
COLUMNS = ("request_id", "user_id", "api_key_id", "endpoint", "tier", "requested_model", "answered_model",
           "input_tokens", "output_tokens", "tokens_estimated", "cost", "latency_ms", "ttft_ms", "status",
           "http_status", "error_type", "attempts", "attempt_details", "streamed", "created_at")


@dataclass(slots=True)
class BenchUser:
    pk: int
    tier: str
    keys: tuple[int | None, ...]
    models: tuple[str, ...]  # the favourite first
    endpoints: tuple[str, ...]


@dataclass(slots=True)
class FillReport:
    rows: int
    users: int
    keys: int
    rollups: int
    copy_seconds: float
    rollup_seconds: float


def usage_bench_fill(*, rows: int, days: int = 30, users: int = 2000, seed: int = 1,
                     now: datetime | None = None, log=print) -> FillReport:
    """Replaces the usage log and roll-ups by `rows` generated rows over the last `days` days (up to `now`)."""
    now = now or timezone.now()
    rng = random.Random(seed)  # noqa: S311 (benchmark data, not secrets)
    tiers = {tier.slug: tier for tier in Tier.objects.filter(slug__in=[slug for slug, _, _ in TIERS])}
    if len(tiers) != len(TIERS):
        raise RuntimeError("the registry's tiers are missing: run `manage.py load_models` first")
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {UsageLog._meta.db_table}, {UsageRollup._meta.db_table} RESTART IDENTITY")
    UsageRollupState.objects.all().delete()
    population = _users_create(rng, count=users, tiers=tiers)
    log(f"{len(population)} users, {sum(len(user.keys) for user in population)} keys")

    # Zipf-like weights (exponent 1.1): the first user is the heaviest.
    weights = [1 / (rank ** 1.1) for rank in range(1, len(population) + 1)]
    cumulative = list(_accumulate(weights))
    started = time.monotonic()
    first = now - timedelta(days=days)
    per_day = rows / days
    written = 0
    connection.ensure_connection()
    with connection.connection.cursor() as raw, \
            raw.copy(f"COPY {UsageLog._meta.db_table} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
        for day in range(days):
            count = round(per_day * (day + 1)) - round(per_day * day)
            start = first + timedelta(days=day)
            moments = sorted(rng.random() for _ in range(count))
            chosen = rng.choices(population, cum_weights=cumulative, k=count)
            for offset, user in zip(moments, chosen, strict=True):
                written += 1
                copy.write_row(_row(rng, written, user, start + timedelta(days=offset)))
            log(f"day {day + 1}/{days}: {written:,} rows, {time.monotonic() - started:.0f} s")
    copy_seconds = time.monotonic() - started
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {UsageLog._meta.db_table}")
    rollups = usage_rollups_rebuild(now=now)
    with connection.cursor() as cursor:
        # What autovacuum does a little later: statistics, and the visibility map that index-only scans need.
        for model in (UsageRollup, UsageDaySummary):
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")
    rollup_seconds = time.monotonic() - started
    log(f"{rollups:,} roll-up buckets in {rollup_seconds:.0f} s")
    return FillReport(rows=written, users=len(population), keys=sum(len(user.keys) for user in population),
                      rollups=rollups, copy_seconds=copy_seconds, rollup_seconds=rollup_seconds)


def _accumulate(values):
    total = 0.0
    for value in values:
        total += value
        yield total


def _users_create(rng: random.Random, *, count: int, tiers: dict[str, Tier]) -> list[BenchUser]:
    """The benchmark's users (one password hash for all: hashing thousands would take minutes), their tiers and
    keys, and the staff user; users and keys left by an earlier fill are replaced."""
    User = get_user_model()
    with transaction.atomic():
        User.objects.filter(username__startswith=USERNAME_PREFIX).delete()
        User.objects.filter(username=STAFF_USERNAME).delete()
        password = make_password(PASSWORD)
        created = User.objects.bulk_create([User(username=f"{USERNAME_PREFIX}{n}", password=password)
                                            for n in range(1, count + 1)])
        staff = User.objects.create(username=STAFF_USERNAME, password=password, is_staff=True)
        tier_of = {user.pk: rng.choices([slug for slug, _, _ in TIERS], weights=[w for _, _, w in TIERS])[0]
                   for user in created}
        tier_of[created[0].pk] = "pro"  # the heaviest user, whose page the benchmark loads, has limits (below)
        UserProfile.objects.bulk_create([UserProfile(user_id=pk, tier=tiers[slug]) for pk, slug in tier_of.items()]
                                        + [UserProfile(user_id=staff.pk, tier=tiers["enterprise"])])
        keys = ApiKey.objects.bulk_create([
            ApiKey(user_id=user.pk, name=f"key {n}", prefix=f"lh-bench{n}",
                   key_hash=hashlib.sha256(f"bench-{user.pk}-{n}".encode()).hexdigest())
            for user in created for n in range(1, rng.randint(1, 3) + 1)])
        QuotaLimit.objects.filter(user=created[0]).delete()
        QuotaLimit.objects.bulk_create([
            QuotaLimit(user=created[0], metric="requests", period="day", limit=1_000_000),
            QuotaLimit(user=created[0], metric="tokens", period="month", limit=10**10),
            QuotaLimit(user=created[0], metric="cost", period="month", limit=100_000)])
    keys_of: dict[int, list[int]] = {}
    for key in keys:
        keys_of.setdefault(key.user_id, []).append(key.pk)
    rank = {slug: rank for slug, rank, _ in TIERS}
    population = []
    for user in created:
        tier = tier_of[user.pk]
        allowed = [model for model, (_, _, lowest) in MODELS.items() if lowest <= rank[tier]]
        rng.shuffle(allowed)
        endpoints = [name for name, _ in ENDPOINTS]
        favourite = rng.choices(endpoints, weights=[w for _, w in ENDPOINTS])[0]
        population.append(BenchUser(user.pk, tier, (None, *keys_of[user.pk]), tuple(allowed[:3]),
                                    (favourite, *endpoints)))
    return population


def _row(rng: random.Random, number: int, user: BenchUser, moment: datetime) -> tuple:
    random_ = rng.random
    key = user.keys[0] if random_() < 0.05 else user.keys[1 + int(random_() * (len(user.keys) - 1))]
    requested = user.models[0] if random_() < 0.7 else user.models[int(random_() * len(user.models))]
    endpoint = user.endpoints[0] if random_() < 0.85 else user.endpoints[1 + int(random_() * 4)]
    outcome = random_()
    answered, attempts = requested, 1
    if outcome < 0.03:  # a fallback answered
        answered, attempts = ("demo-backup" if requested != "demo-backup" else "demo"), 2
    streamed = endpoint in ("v1.chat_completions", "pages.playground") and random_() < 0.4
    input_tokens = int(rng.lognormvariate(6.0, 1.0))
    output_tokens = int(rng.lognormvariate(5.0, 0.9))
    latency = rng.lognormvariate(6.2, 0.7)
    status, http_status, error_type = "ok", 200, ""
    if outcome > 0.96:  # no model answered
        status, http_status, error_type, answered, attempts = "error", 502, "upstream_failed", "", 2
        input_tokens = output_tokens = 0
    elif outcome > 0.94 and streamed:
        status, error_type = "partial", "client_disconnected"
        output_tokens //= 3
    price_in, price_out, _ = MODELS.get(answered, (0.0, 0.0, 0))
    cost = (input_tokens * price_in + output_tokens * price_out) / 1_000_000
    ttft = latency * rng.uniform(0.1, 0.4) if streamed and status != "error" else None
    return (f"bench-{number:09d}", user.pk, key, endpoint, user.tier, requested, answered, input_tokens, output_tokens,
            False, f"{cost:.10f}", latency, ttft, status, http_status, error_type, attempts, "[]", streamed,
            moment.astimezone(UTC))

