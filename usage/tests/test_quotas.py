"""usage.quotas: reserve → settle, exact under concurrency, on both back ends (the database and Redis).

In the embedded run "redis" is a private redis-server; in the services run it is the real one (REDIS_URL), and
"database" is PostgreSQL."""

import asyncio
import os
import socket
import sqlite3
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection

from registry.limits import limits_snapshot
from registry.models import ApiKey, QuotaLimit, Tier
from usage import quota_backends
from usage.quota_backends import quota_backend, quota_database_path
from usage.quotas import QuotaExceeded, QuotaUnavailable, period_window, quota_reserve, quota_settle

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["database", "redis"])
def backend(request, settings, private_redis) -> str:
    url = (os.environ.get("REDIS_URL") or private_redis.url) if request.param == "redis" else ""
    settings.LLMHUB = {**settings.LLMHUB, "QUOTA_REDIS_URL": url}
    if url:
        import redis

        redis.Redis.from_url(url).flushdb()
    return request.param


@pytest.fixture
def user(registry, make_user):
    return make_user("quota-user", tier="free")


def limit(*, tier: str | None = "free", metric: str = "requests", period: str = "day", value="50", model: str = "",
          **owner) -> QuotaLimit:
    owner = owner or {"tier": Tier.objects.get(slug=tier)}
    return QuotaLimit.objects.create(metric=metric, period=period, limit=Decimal(value), model=model, **owner)


def reserve(user, registry, *, model: str = "demo", prompt_tokens: int = 10, max_tokens: int | None = 90,
            request_id: str | None = None, api_key_id: int | None = None, owned_model=None):
    spec = owned_model or registry.models[model]
    return quota_reserve(request_id=request_id or f"req-{time.monotonic_ns()}", user_id=user.pk, api_key_id=api_key_id,
                         tier_slug="free", model=spec, candidates=[spec], prompt_tokens=prompt_tokens,
                         max_tokens=max_tokens)


def counters(reservation) -> list[dict[str, int]]:
    keys = [charge.key for charge in reservation.charges]
    found = asyncio.run(quota_backend().counters(keys))
    return [found[key] for key in keys]


def test_it_admits_exactly_the_limit_of_200_concurrent_requests(backend, registry, user):
    limit(value="50")

    async def run():
        return await asyncio.gather(*(reserve(user, registry) for _ in range(200)), return_exceptions=True)

    outcomes = asyncio.run(run())
    admitted = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, QuotaExceeded)]
    assert (len(admitted), len(refused)) == (50, 150)
    assert all(error.code == "requests_per_day" and error.retry_after >= 1 for error in refused)
    assert all(error.headers["x-ratelimit-remaining-requests"] == "0" for error in refused)
    assert all(error.headers["x-ratelimit-limit-requests"] == "50" for error in refused)

    async def settle_all():
        await asyncio.gather(*(quota_settle(reservation=r, model=registry.models["demo"], input_tokens=10,
                                            output_tokens=5) for r in admitted))

    asyncio.run(settle_all())
    assert counters(admitted[0]) == [{"used": 50, "held": 0, "refused": 150, "holds": 0}]


def test_it_never_admits_more_tokens_than_the_limit(backend, registry, user):
    limit(metric="tokens", value="10000")

    async def run():
        return await asyncio.gather(*(reserve(user, registry, prompt_tokens=100, max_tokens=1000) for _ in range(100)),
                                    return_exceptions=True)

    outcomes = asyncio.run(run())
    admitted = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
    assert len(admitted) == 9  # 9 x 1,100 = 9,900; a tenth would be 11,000
    assert all(isinstance(outcome, QuotaExceeded) and outcome.code == "tokens_per_day"
               for outcome in outcomes if isinstance(outcome, Exception))
    assert counters(admitted[0])[0]["held"] == 9 * 1100

    async def settle_all():
        await asyncio.gather(*(quota_settle(reservation=r, model=registry.models["demo"], input_tokens=100,
                                            output_tokens=index * 10) for index, r in enumerate(admitted)))

    asyncio.run(settle_all())
    assert counters(admitted[0]) == [{"used": 9 * 100 + 10 * sum(range(9)), "held": 0, "refused": 91, "holds": 0}]


def test_it_refuses_all_or_nothing_and_counts_cost_at_the_answering_models_prices(backend, registry, user):
    limit(metric="requests", value="100")
    limit(metric="cost", period="month", value="0.001")  # demo: 0.5 in / 1.5 out per million
    first = asyncio.run(reserve(user, registry, prompt_tokens=100, max_tokens=500))  # 0.00005 + 0.00075
    with pytest.raises(QuotaExceeded) as refused:
        asyncio.run(reserve(user, registry, prompt_tokens=100, max_tokens=500))
    assert refused.value.code == "cost_per_month"
    assert refused.value.extra["limit"] == {"metric": "cost", "period": "month", "limit": "0.001", "model": None,
                                            "scope": "user"}
    assert refused.value.retry_after <= 2  # only a reservation in flight stands in the way
    assert [c["used"] + c["held"] for c in counters(first)] == [1, 8_000_000]  # the refusal took no request

    asyncio.run(quota_settle(reservation=first, model=registry.models["demo"], input_tokens=100, output_tokens=100))
    assert [c["used"] for c in counters(first)] == [1, 2_000_000]  # 0.0002 in units of 1e-10
    asyncio.run(reserve(user, registry, prompt_tokens=100, max_tokens=500))


def test_it_gives_back_a_reservation_never_settled_once_it_expires(backend, registry, user, settings):
    limit(value="1")
    settings.LLMHUB = {**settings.LLMHUB, "QUOTA_HOLD_SECONDS": 0.3}
    crashed = asyncio.run(reserve(user, registry))  # its process "crashes": no settle
    with pytest.raises(QuotaExceeded):
        asyncio.run(reserve(user, registry))
    time.sleep(0.4)

    again = asyncio.run(reserve(user, registry))

    assert counters(again)[0]["held"] == 1 and counters(crashed)[0]["holds"] == 1
    asyncio.run(quota_settle(reservation=again, model=None, input_tokens=0, output_tokens=0))
    assert counters(again) == [{"used": 1, "held": 0, "refused": 1, "holds": 0}]


def test_it_counts_a_keys_own_limits_per_key_on_top_of_its_owners(backend, registry, user, api_key_for):
    limit(value="3")
    api_key_for(user)
    api_key_for(user)
    first, second = ApiKey.objects.filter(user=user).order_by("pk")
    limit(tier=None, value="1", api_key=first)

    asyncio.run(reserve(user, registry, api_key_id=first.pk))
    with pytest.raises(QuotaExceeded) as refused:
        asyncio.run(reserve(user, registry, api_key_id=first.pk))
    assert refused.value.extra["limit"]["scope"] == "key"
    asyncio.run(reserve(user, registry, api_key_id=second.pk))
    asyncio.run(reserve(user, registry))
    with pytest.raises(QuotaExceeded) as refused:
        asyncio.run(reserve(user, registry, api_key_id=second.pk))  # the owner's 3 are used up
    assert refused.value.extra["limit"]["scope"] == "user"


def test_it_applies_a_model_scoped_limit_to_that_model_only(backend, registry, user):
    limit(value="1", model="demo")
    asyncio.run(reserve(user, registry, model="demo"))
    with pytest.raises(QuotaExceeded):
        asyncio.run(reserve(user, registry, model="demo"))
    assert asyncio.run(reserve(user, registry, model="demo-backup")).charges == ()


def test_it_counts_a_new_period_on_a_new_counter_when_the_minute_rolls_over(backend, registry, user, monkeypatch):
    """The counter keys and window ends a limit plan keeps are recomputed when a period ends."""
    import types

    clock = [(time.time() // 60 + 1) * 60 + 5]  # 5 s into the next minute
    monkeypatch.setattr("usage.quotas.time", types.SimpleNamespace(time=lambda: clock[0]))
    limit(period="minute", value="1")
    first = asyncio.run(reserve(user, registry))
    with pytest.raises(QuotaExceeded):
        asyncio.run(reserve(user, registry))
    clock[0] += 60
    second = asyncio.run(reserve(user, registry))
    assert second.charges[0].key != first.charges[0].key
    assert second.charges[0].window_end == first.charges[0].window_end + 60


def test_it_counts_requests_but_not_cost_on_own_models_unless_the_tier_meters_them(backend, registry, user):
    import dataclasses

    limit(value="10")
    limit(metric="cost", value="0.000001")
    own = dataclasses.replace(registry.models["demo"], owner_id=user.pk, id="mine")

    reservation = asyncio.run(reserve(user, registry, owned_model=own))
    assert [applied.spec.metric for applied in reservation.applied] == ["requests"]

    Tier.objects.filter(slug="free").update(own_models_metered=True)
    limits_snapshot.invalidate()
    with pytest.raises(QuotaExceeded) as refused:
        asyncio.run(reserve(user, registry, owned_model=own))
    assert refused.value.code == "cost_per_day"


def test_it_lets_a_user_override_or_lift_the_tier_limit(backend, registry, user):
    limit(value="1")
    limit(tier=None, value="2", user=user)
    asyncio.run(reserve(user, registry))
    asyncio.run(reserve(user, registry))
    with pytest.raises(QuotaExceeded):
        asyncio.run(reserve(user, registry))

    QuotaLimit.objects.filter(user=user).update(limit=None)
    limits_snapshot.invalidate()
    assert asyncio.run(reserve(user, registry)).charges == ()  # lifted: unlimited


def test_it_reads_limits_without_a_query_once_warm(registry, user, django_assert_num_queries):
    limit(value="5")
    limits_snapshot.get()
    with django_assert_num_queries(0):
        applied = limits_snapshot.get().applying(tier_slug="free", user_id=user.pk, api_key_id=None, model_id="demo",
                                                 owned=False)
    assert [(a.scope, a.spec.metric, a.spec.limit) for a in applied] == [("user", "requests", Decimal(5))]


sqlite_quota_file = pytest.mark.skipif(not settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
                                       or bool(settings.LLMHUB["QUOTA_REDIS_URL"]), reason="the embedded quota file")


@sqlite_quota_file
def test_it_decides_while_the_usage_log_holds_the_databases_write_lock(registry, user):
    """Embedded, the counters are in a file of their own: a usage batch holding the database's write lock (for
    milliseconds, or a second on a busy disk) does not hold the decisions of every request up."""
    limit(value="50")
    database = sqlite3.connect(settings.DATABASES["default"]["NAME"], isolation_level=None)
    database.execute("BEGIN IMMEDIATE")  # what the usage log's batch transaction holds
    try:
        started = time.monotonic()
        reservation = asyncio.run(asyncio.wait_for(reserve(user, registry), timeout=5))
        assert time.monotonic() - started < 0.5
        asyncio.run(quota_settle(reservation=reservation, model=None, input_tokens=0, output_tokens=0))
        assert counters(reservation) == [{"used": 1, "held": 0, "refused": 0, "holds": 0}]
    finally:
        database.execute("ROLLBACK")
        database.close()


@sqlite_quota_file
def test_it_takes_over_the_counters_the_database_kept_when_it_first_makes_the_quota_file(registry, user):
    """Upgrading an embedded install: the periods under way keep what they used (the counters an earlier version
    kept in the database's own tables)."""
    limit(value="50")
    first = asyncio.run(reserve(user, registry))
    asyncio.run(quota_settle(reservation=first, model=None, input_tokens=0, output_tokens=0))
    assert counters(first)[0]["used"] == 1  # (settled in the file about to go)
    key = first.charges[0].key
    with connection.cursor() as cursor:  # as an earlier version left it: 7 used, one reservation in flight
        cursor.execute("INSERT INTO usage_quotacounter (key, used, held, refused, window_end) VALUES (%s, 7, 1, 0, %s)",
                       [key, "2099-01-01 00:00:00"])
        cursor.execute("INSERT INTO usage_quotahold (request_id, amounts, expires_at) VALUES ('old', %s, %s)",
                       [f"{key} 1", int(time.time() * 1000) + 60_000])
    path = quota_database_path()
    quota_backends._schema_ready.discard(path)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    quota_backend()._loop_raw = quota_backend()._thread_raw = None  # their file is gone: as a new process

    assert counters(asyncio.run(reserve(user, registry))) == [{"used": 7, "held": 2, "refused": 0, "holds": 2}]


@sqlite_quota_file
def test_one_batch_settles_reservations_made_before_it_and_in_it(registry, user):
    """In one SQLite transaction (the quota thread's batch): a settle of a reservation made earlier in the same
    batch, one of an earlier batch and one after a read (which must see it) each give back exactly what was held."""
    backend = quota_backend()
    charge = quota_backends.Charge("llmhub:q:{u:test}:requests:day", 100, 1, time.time() + 3600)

    def job(kind: str, request_id: str, *args) -> quota_backends._Job:
        function = backend._reserve if kind == "reserve" else backend._settle if kind == "settle" else backend._counters
        return quota_backends._Job(function, args, None, None, request_id, kind)

    def run(*jobs):
        raw = quota_backends._quota_connect(timeout=5)
        try:
            return [result for result, _ in backend._run_sqlite(raw, list(jobs))]
        finally:
            raw.close()

    run(job("reserve", "earlier", "earlier", (charge,), 60))
    outcomes = run(job("settle", "earlier", "earlier", (charge,), (1,)),
                   job("reserve", "same", "same", (charge,), 60), job("settle", "same", "same", (charge,), (1,)),
                   job("reserve", "later", "later", (charge,), 60), job("counters", "", [charge.key]),
                   job("settle", "later", "later", (charge,), (1,)))

    assert outcomes[4] == {charge.key: {"used": 2, "held": 1, "refused": 0, "holds": 1}}  # "later" in flight
    assert run(job("counters", "", [charge.key])) == [{charge.key: {"used": 3, "held": 0, "refused": 0, "holds": 0}}]


def _silent_server() -> tuple[socket.socket, int]:
    """Accepts connections and never answers: a hung Redis."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted = []
    threading.Thread(target=lambda: accepted.extend(server.accept() for _ in iter(int, 1)), daemon=True).start()
    return server, server.getsockname()[1]


@pytest.mark.parametrize("failure", ["refused", "hung"])
def test_it_fails_closed_within_a_second_when_redis_is_unreachable(registry, user, settings, failure):
    limit(value="50")
    if failure == "refused":
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
    else:
        _hung, port = _silent_server()  # kept open for the whole test
    settings.LLMHUB = {**settings.LLMHUB, "QUOTA_REDIS_URL": f"redis://127.0.0.1:{port}/0"}

    started = time.monotonic()
    with pytest.raises(QuotaUnavailable) as error:
        asyncio.run(reserve(user, registry))

    assert time.monotonic() - started < 1
    assert (error.value.status, error.value.retry_after) == (503, 1)


def test_it_aligns_periods_on_the_calendar_of_time_zone(settings):
    settings.TIME_ZONE = "Europe/Paris"
    from usage import quotas

    quotas._windows.clear()
    now = datetime(2026, 3, 29, 12, 30, 15, tzinfo=UTC).timestamp()  # the day Paris moves to summer time
    day = period_window("day", now)
    assert day.tag == "20260329"
    assert day.end == datetime(2026, 3, 29, 22, 0, tzinfo=UTC).timestamp()  # local midnight, UTC+2 by then
    assert period_window("month", now).end == datetime(2026, 3, 31, 22, 0, tzinfo=UTC).timestamp()
    assert period_window("hour", now).end == datetime(2026, 3, 29, 13, 0, tzinfo=UTC).timestamp()
    assert period_window("minute", now).tag == "202603291430"
    quotas._windows.clear()


def test_costs_in_units_are_usage_costs_exactly():
    """The reserve and the settle count cost in integer units without Decimal arithmetic when the prices allow
    it: the same number as the usage log's cost (usage_cost, rounded half up to 1e-10), whatever the prices."""
    from usage.quotas import _cost_units, cost_units_of
    from usage.services import usage_cost

    prices = [Decimal("0"), Decimal("0.15"), Decimal("10"), Decimal("2.5000"), Decimal("0.0001"),
              Decimal("0.00005"), Decimal("0.123456789"), Decimal("1E+1"), Decimal("3.33333333333")]
    for input_price in prices:
        for output_price in prices:
            for input_tokens, output_tokens in ((0, 0), (1, 0), (10, 20), (7, 1), (123457, 98765)):
                assert cost_units_of(input_tokens=input_tokens, output_tokens=output_tokens,
                                     input_price_per_million=input_price, output_price_per_million=output_price) == \
                    _cost_units(usage_cost(input_tokens=input_tokens, output_tokens=output_tokens,
                                           input_price_per_million=input_price,
                                           output_price_per_million=output_price))
