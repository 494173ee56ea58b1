"""usage/rollups.py: hourly and daily buckets recomputed from the raw log (idempotent, safe with two runs at once
and after a run dies midway), and retention of the raw log."""

import itertools
import os
import random
import subprocess
import sys
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import OperationalError, connection, connections
from django.db.models import Max
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from registry.services import api_key_create
from usage.histograms import BOUNDS, RELATIVE_ERROR, bucket_index, histogram_of, histogram_percentile
from usage.models import UsageLog, UsageRollup, UsageRollupState
from usage.rollups import DIMENSIONS, hour_floor, local_date, usage_log_prune, usage_rollups_update
from usage.selectors import usage_totals

NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
SETTLED = timedelta(minutes=1)  # later than LLMHUB["USAGE_ROLLUP_SETTLE_SECONDS"] (30 s)
_request_ids = itertools.count()


@pytest.fixture
def callers(make_user):
    """(user id, api key id or None) pairs of two users, one with two keys."""
    alice, bob = make_user("alice", tier=None), make_user("bob", tier=None)
    keys = [api_key_create(user=alice, name=name)[0].pk for name in ("a1", "a2")]
    bob_key = api_key_create(user=bob)[0].pk
    return [(alice.pk, keys[0]), (alice.pk, keys[1]), (alice.pk, None), (bob.pk, bob_key), (None, None)]


def log(*, at: datetime, user_id=None, api_key_id=None, **fields) -> UsageLog:
    defaults = {"endpoint": "v1.chat_completions", "tier": "free", "requested_model": "demo", "answered_model": "demo",
                "status": "ok", "http_status": 200, "input_tokens": 10, "output_tokens": 5,
                "cost": Decimal("0.000015"), "latency_ms": 120.0}
    return UsageLog(request_id=f"rollup-{next(_request_ids)}", created_at=at, user_id=user_id, api_key_id=api_key_id,
                    **{**defaults, **fields})


def random_rows(callers, *, count: int, seed: int = 1, start: datetime = NOW - timedelta(days=3),
                hours: int = 3 * 24) -> list[UsageLog]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        user_id, api_key_id = rng.choice(callers)
        status = rng.choice(["ok", "ok", "ok", "error", "partial"])
        streamed = rng.random() < 0.5
        latency = rng.choice([rng.lognormvariate(6, 1.3), rng.choice(BOUNDS)])  # bounds themselves too
        rows.append(log(
            at=start + timedelta(seconds=rng.uniform(0, hours * 3600)), user_id=user_id, api_key_id=api_key_id,
            tier="pro" if user_id == callers[3][0] else "free", endpoint=rng.choice(["v1.chat_completions", "api.generate"]),
            requested_model=rng.choice(["demo", "demo-backup"]), answered_model=rng.choice(["demo", "demo-backup", ""]),
            status=status, http_status=200 if status == "ok" else 502, input_tokens=rng.randint(0, 5000),
            output_tokens=rng.randint(0, 2000), cost=Decimal(rng.randint(0, 10**6)) / 10**6, latency_ms=latency,
            ttft_ms=latency * rng.uniform(0.05, 1) if streamed else None, streamed=streamed))
    return UsageLog.objects.bulk_create(rows)


def expected_buckets() -> dict:
    """What the buckets must hold, computed in Python from every raw row of the log."""
    buckets = defaultdict(lambda: {"requests": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0,
                                   "cost": Decimal(0), "latency": [], "ttft": []})
    for row in UsageLog.objects.all():
        hour = hour_floor(row.created_at)
        day = hour.replace(hour=0)
        for period, start in (("hour", hour), ("day", day)):
            bucket = buckets[(period, start, *(getattr(row, name) for name in DIMENSIONS))]
            bucket["requests"] += 1
            bucket["errors"] += row.status == "error"
            bucket["input_tokens"] += row.input_tokens
            bucket["output_tokens"] += row.output_tokens
            bucket["cost"] += row.cost
            bucket["latency"].append(row.latency_ms)
            if row.ttft_ms is not None:
                bucket["ttft"].append(row.ttft_ms)
    return {key: {**{name: value for name, value in bucket.items() if name not in ("latency", "ttft")},
                  "latency": histogram_of(bucket["latency"]), "ttft": histogram_of(bucket["ttft"])}
            for key, bucket in buckets.items()}


def stored_buckets() -> dict:
    buckets = {}
    for rollup in UsageRollup.objects.all():
        key = (rollup.period, rollup.bucket_start, *(getattr(rollup, name) for name in DIMENSIONS))
        assert key not in buckets, f"two rows for one bucket: {key}"
        buckets[key] = {"requests": rollup.requests, "errors": rollup.errors, "input_tokens": rollup.input_tokens,
                        "output_tokens": rollup.output_tokens, "cost": rollup.cost,
                        "latency": rollup.latency_histogram, "ttft": rollup.ttft_histogram}
    return buckets


def test_it_rolls_the_log_up_into_hours_and_days_that_equal_the_raw_rows(callers):
    random_rows(callers, count=600)

    report = usage_rollups_update(now=NOW)

    stored = stored_buckets()
    assert stored == expected_buckets()
    assert report.days == 4  # 3 days back from 15:30 touch 4 calendar days
    assert report.hours == len({key[1] for key in stored if key[0] == "hour"})
    for user_id in {user_id for user_id, _ in callers} - {None}:
        daily = [bucket for key, bucket in stored.items() if key[0] == "day" and key[2] == user_id]
        raw = usage_totals(user_id=user_id)
        assert sum(bucket["requests"] for bucket in daily) == raw["requests"]
        assert sum(bucket["input_tokens"] for bucket in daily) == raw["input_tokens"]
        assert sum(bucket["output_tokens"] for bucket in daily) == raw["output_tokens"]
        assert sum(bucket["cost"] for bucket in daily) == raw["cost"]


def test_it_reads_percentiles_out_of_merged_buckets(callers):
    random_rows(callers, count=600)
    usage_rollups_update(now=NOW)

    days = UsageRollup.objects.filter(period="day")
    merged = [sum(counts) for counts in zip(*(day.latency_histogram for day in days), strict=True)]

    latencies = sorted(UsageLog.objects.values_list("latency_ms", flat=True))
    for percent in (50, 90, 99):
        exact = latencies[-(-percent * len(latencies) // 100) - 1]
        estimate = histogram_percentile(merged, percent / 100)
        assert abs(estimate - exact) / exact <= RELATIVE_ERROR
        assert bucket_index(estimate) == bucket_index(exact)


def test_it_gives_identical_buckets_on_a_rerun_and_from_scratch(callers):
    random_rows(callers, count=300)
    usage_rollups_update(now=NOW)
    first = stored_buckets()

    usage_rollups_update(now=NOW)
    usage_rollups_update(now=NOW + SETTLED)
    assert stored_buckets() == first

    UsageRollupState.objects.all().delete()  # forget how far it got: everything is recomputed
    usage_rollups_update(now=NOW + 2 * SETTLED)
    assert stored_buckets() == first == expected_buckets()


def test_it_recomputes_an_old_hour_when_a_late_row_arrives(callers):
    random_rows(callers, count=200)
    usage_rollups_update(now=NOW)
    usage_rollups_update(now=NOW + SETTLED)
    user_id, api_key_id = callers[0]
    late = log(at=NOW - timedelta(days=2, minutes=7), user_id=user_id, api_key_id=api_key_id, input_tokens=777)
    late.save()

    report = usage_rollups_update(now=NOW + 2 * SETTLED)

    assert stored_buckets() == expected_buckets()
    assert report.hours >= 1
    late_hour = UsageRollup.objects.get(period="hour", bucket_start=hour_floor(late.created_at), user_id=user_id,
                                        api_key_id=api_key_id, requested_model="demo", answered_model="demo",
                                        status="ok", endpoint="v1.chat_completions")
    assert late_hour.input_tokens >= 777


def test_it_moves_its_watermark_only_past_rows_a_settled_scan_has_seen(callers):
    random_rows(callers, count=50)
    top = UsageLog.objects.aggregate(top=Max("pk"))["top"]

    usage_rollups_update(now=NOW)
    assert UsageRollupState.objects.get().rolled_up_id == 0  # the rows' transactions may not all be visible yet
    usage_rollups_update(now=NOW + timedelta(seconds=10))
    assert UsageRollupState.objects.get().rolled_up_id == 0  # not settled yet
    usage_rollups_update(now=NOW + SETTLED)
    assert UsageRollupState.objects.get().rolled_up_id == top


def test_it_leaves_no_trace_of_a_run_that_died_midway_and_the_next_run_repairs_it(callers):
    random_rows(callers, count=400)
    inserts = 0

    def die_at_the_second_day(execute, sql, params, many, context):
        nonlocal inserts
        if sql.startswith(f'INSERT INTO "{UsageRollup._meta.db_table}"'):
            inserts += 1
            if inserts == 20:  # inside the second day (the first has 9 hours, each written with one INSERT)
                raise OperationalError("simulated: the worker was killed")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(die_at_the_second_day), pytest.raises(OperationalError, match="simulated"):
        usage_rollups_update(now=NOW)

    # The first day was committed whole; nothing of the second; the watermark did not move.
    first_day = local_date(NOW - timedelta(days=3))
    assert {local_date(start) for start in UsageRollup.objects.values_list("bucket_start", flat=True)} == {first_day}
    assert stored_buckets() == {key: value for key, value in expected_buckets().items() if key[1].date() == first_day}
    assert UsageRollupState.objects.get().rolled_up_id == 0

    usage_rollups_update(now=NOW + SETTLED)
    assert stored_buckets() == expected_buckets()


@pytest.mark.django_db(transaction=True)
def test_it_gives_the_buckets_of_one_run_with_two_runs_at_once(callers):
    random_rows(callers, count=800, hours=30)
    barrier = threading.Barrier(2)
    errors = []

    def run() -> None:
        try:
            barrier.wait()
            usage_rollups_update(now=NOW)
        except Exception as error:  # reported below
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert stored_buckets() == expected_buckets()


def probe_env(**variables) -> dict:
    """The environment of a process working on this test's database."""
    database = connection.settings_dict
    env = {**os.environ, **variables, "DJANGO_SETTINGS_MODULE": "llmhub.settings"}
    if connection.vendor == "postgresql":
        credentials = database["USER"] + (f":{database['PASSWORD']}" if database["PASSWORD"] else "")
        env["DATABASE_URL"] = f"postgres://{credentials}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    else:
        env["LLMHUB_SQLITE_PATH"] = str(database["NAME"])
    return env


def probe_start(**variables) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "usage.tests.rollup_probe"], cwd=settings.BASE_DIR,
                            env=probe_env(PROBE_NOW=NOW.isoformat(), **variables), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.django_db(transaction=True)
def test_it_repairs_the_buckets_of_a_process_killed_mid_run(callers):
    random_rows(callers, count=400)
    probe = probe_start(PROBE_HANG_AT_INSERT="20")  # inside the second day's transaction
    try:
        line = probe.stdout.readline()
        assert line == "hanging\n", line + probe.stdout.read()
        probe.kill()
        probe.wait(timeout=30)
    finally:
        probe.kill()

    first_day = local_date(NOW - timedelta(days=3))
    assert {local_date(start) for start in UsageRollup.objects.values_list("bucket_start", flat=True)} == {first_day}
    assert UsageRollupState.objects.get().rolled_up_id == 0

    usage_rollups_update(now=NOW + SETTLED)  # its day lock went with its connection: this does not wait
    assert stored_buckets() == expected_buckets()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_it_gives_the_buckets_of_one_run_with_two_processes_at_once_on_postgresql(callers, tmp_path):
    assert connection.vendor == "postgresql"
    random_rows(callers, count=1500, hours=30)
    go = tmp_path / "go"

    probes = [probe_start(PROBE_GO_FILE=str(go)) for _ in range(2)]
    try:
        assert [probe.stdout.readline() for probe in probes] == ["ready\n", "ready\n"]
        go.touch()
        outputs = [probe.communicate(timeout=120)[0] for probe in probes]
    finally:
        for probe in probes:
            probe.kill()

    assert [probe.returncode for probe in probes] == [0, 0], outputs
    assert stored_buckets() == expected_buckets()


def test_it_deletes_only_raw_rows_past_the_retention_and_keeps_their_roll_ups(callers, settings):
    settings.LLMHUB = {**settings.LLMHUB, "USAGE_RETENTION_DAYS": 90, "USAGE_RETENTION_BATCH_SIZE": 7}
    user_id, api_key_id = callers[0]
    # From 2026-11-19 00:30 to 2026-11-20 14:30.
    rows = UsageLog.objects.bulk_create(
        [log(at=NOW - timedelta(hours=hours), user_id=user_id, api_key_id=api_key_id) for hours in range(1, 40)])
    usage_rollups_update(now=NOW)
    usage_rollups_update(now=NOW + SETTLED)
    rolled_up = stored_buckets()
    # 90 days later the retention keeps 2026-11-20 on (whole days): 24 rows of 2026-11-19 are past it.
    later = NOW + timedelta(days=90)
    past = {row.request_id for row in rows if row.created_at < datetime(2026, 11, 20, tzinfo=UTC)}
    # A row past the retention that no roll-up run has seen yet is kept, for now.
    unseen = log(at=NOW - timedelta(hours=30), user_id=user_id)
    unseen.save()

    with CaptureQueriesContext(connection) as queries:
        deleted = usage_log_prune(now=later)

    assert deleted == len(past) == 24
    assert set(UsageLog.objects.values_list("request_id", flat=True)) == (
        {row.request_id for row in rows} - past | {unseen.request_id})
    deletes = [query["sql"] for query in queries if query["sql"].startswith('DELETE FROM "usage_usagelog"')]
    assert len(deletes) == 4  # batches of 7
    assert stored_buckets() == rolled_up

    # Days that old are final: runs that see the late row leave their buckets alone, then retention deletes it.
    usage_rollups_update(now=later)
    report = usage_rollups_update(now=later + SETTLED)
    assert report.final_hours_skipped == 1
    assert stored_buckets() == rolled_up
    assert usage_log_prune(now=later) == 1
    assert usage_log_prune(now=later) == 0
    assert UsageLog.objects.count() == len(rows) - len(past)


def test_it_runs_as_beat_tasks_that_are_acknowledged_late(callers, settings):
    from llmhub.celery import app
    from usage import tasks

    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"usage.tasks.usage_rollups_update", "usage.tasks.usage_log_prune"} <= scheduled
    assert all(app.tasks[name].acks_late for name in ("usage.tasks.usage_rollups_update", "usage.tasks.usage_log_prune"))
    random_rows(callers, count=50, start=timezone.now() - timedelta(hours=5), hours=5)

    tasks.usage_rollups_update.delay()
    tasks.usage_log_prune.delay()

    assert stored_buckets() == expected_buckets()
    assert UsageLog.objects.count() == 50


def test_it_shows_the_roll_ups_to_staff_read_only(callers, admin_client):
    random_rows(callers, count=20)
    usage_rollups_update(now=NOW)
    rollup = UsageRollup.objects.first()

    listing = admin_client.get("/admin/usage/usagerollup/")
    detail = admin_client.get(f"/admin/usage/usagerollup/{rollup.pk}/change/")

    assert listing.status_code == detail.status_code == 200
    assert admin_client.get("/admin/usage/usagerollup/add/").status_code == 403
    assert admin_client.post(f"/admin/usage/usagerollup/{rollup.pk}/delete/", {"post": "yes"}).status_code == 403
    assert UsageRollup.objects.filter(pk=rollup.pk).exists()
