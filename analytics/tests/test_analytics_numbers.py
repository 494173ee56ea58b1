"""Model analytics equal what the raw usage log says for the same rows. The rows are made over real HTTP (the openai
SDK on /v1, and /api/translate) against the simulated upstream, with latency and failures injected there; some are
then moved back in time (hours, days) and rolled up, others stay in the current hour (read raw, as the pages do)."""

import math
import time
from collections import Counter, defaultdict
from datetime import timedelta
from decimal import Decimal

import httpx2
import pytest
from django.utils import timezone
from openai import APIStatusError, OpenAI

from analytics.selectors import analytics_model, analytics_models, model_key_of, task_of, window_get
from conftest import usage_wait_idle
from health.models import ModelTest
from registry.authentication import user_tier_get
from registry.models import LLMModel
from usage.histograms import RELATIVE_ERROR, histogram_of, histogram_percentile
from usage.models import UsageLog
from usage.rollups import hour_floor, usage_rollups_update


@pytest.fixture(autouse=True)
def _not_at_the_end_of_an_hour() -> None:
    left = 3600 - timezone.now().timestamp() % 3600
    if left < 60:
        time.sleep(left + 0.1)


def traffic(live_hub: str, key: str, simulated_upstream) -> None:
    """Chats, streams and translations on demo and demo-backup, some slow, some failing."""
    client = OpenAI(base_url=f"{live_hub}/v1", api_key=key, max_retries=0)
    for number in range(6):
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": f"hello {number} " * number}])
    simulated_upstream.set_fault("demo", "latency=40")
    for number in range(3):
        stream = client.chat.completions.create(model="demo", stream=True,
                                                messages=[{"role": "user", "content": f"stream {number} a b c"}])
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    simulated_upstream.clear_faults()
    for number in range(4):
        client.chat.completions.create(model="demo-backup", messages=[{"role": "user", "content": f"backup {number}"}])
    simulated_upstream.set_fault("demo-backup", "status=500")
    for _ in range(2):  # demo-backup has no fallback: every attempt fails and the row counts against it
        with pytest.raises(APIStatusError):  # the hub's 502
            client.chat.completions.create(model="demo-backup", messages=[{"role": "user", "content": "fail"}])
    simulated_upstream.set_fault("demo-backup", "malformed")
    with pytest.raises(APIStatusError):
        client.chat.completions.create(model="demo-backup", messages=[{"role": "user", "content": "garbled"}])
    simulated_upstream.clear_faults()
    for number in range(3):
        response = httpx2.post(f"{live_hub}/api/translate/", headers={"Authorization": f"Bearer {key}"}, timeout=20,
                               json={"text": f"Good morning {number}.", "target_language": "fr",
                                     "model": "demo-backup"})
        assert response.status_code == 200, response.text
    usage_wait_idle()


def spread(rows: list[UsageLog]) -> None:
    """Keeps a third of the rows in the current hour; moves a third two hours back and a third three days back."""
    now = timezone.now()
    for index, row in enumerate(rows):
        if index % 3 == 1:
            row.created_at = now - timedelta(hours=2)
        elif index % 3 == 2:
            row.created_at = now - timedelta(days=3)
    UsageLog.objects.bulk_update(rows, ["created_at"])


def raw_figures(rows: list[UsageLog], *, task: str | None = None) -> dict[str, dict]:
    """The figures per model computed straight from the log rows, exactly (see analytics/selectors.py)."""
    per_model = defaultdict(list)
    for row in rows:
        if row.endpoint == "model_test" or (task and task_of(row.endpoint) != task):
            continue
        per_model[model_key_of(answered=row.answered_model, requested=row.requested_model, user_id=row.user_id,
                               owners={})].append(row)
    figures = {}
    for model, group in per_model.items():
        ok = [row for row in group if row.status == "ok"]
        cost = sum((row.cost for row in group), Decimal(0))
        figures[model] = {
            "requests": len(group), "succeeded": len(ok), "success_rate": len(ok) / len(group),
            "failures": Counter(row.error_type or row.status for row in group if row.status != "ok"),
            "cost": cost, "cost_per_1k_requests": cost * 1000 / len(group),
            "latencies": sorted(row.latency_ms for row in ok),
            "ttfts": sorted(row.ttft_ms for row in ok if row.ttft_ms is not None),
            "ok_output_tokens": sum(row.output_tokens for row in ok),
        }
    return figures


def nearest_rank(values: list[float], quantile: float) -> float:
    return values[max(1, math.ceil(round(quantile * len(values), 9))) - 1]


def assert_matches(row: dict, raw: dict) -> None:
    assert (row["requests"], row["succeeded"], row["failed"]) == (raw["requests"], raw["succeeded"],
                                                                  raw["requests"] - raw["succeeded"])
    assert row["success_rate"] == pytest.approx(raw["success_rate"])
    assert Counter(row["failures"]) == raw["failures"]
    assert row["cost"] == raw["cost"]
    assert row["cost_per_1k_requests"] == raw["cost_per_1k_requests"]
    for name, quantile in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        # Exactly the percentile of the raw latencies' histogram, and so within 9.1% of the exact value.
        assert row["latency_ms"][name] == histogram_percentile(histogram_of(raw["latencies"]), quantile)
        exact = nearest_rank(raw["latencies"], quantile)
        assert abs(row["latency_ms"][name] - exact) <= exact * RELATIVE_ERROR + 1e-9
        if raw["ttfts"]:
            assert row["ttft_ms"][name] == histogram_percentile(histogram_of(raw["ttfts"]), quantile)
        else:
            assert row["ttft_ms"][name] is None
    exact_rate = raw["ok_output_tokens"] / (sum(raw["latencies"]) / 1000)
    assert row["output_tokens_per_second"] == pytest.approx(exact_rate, rel=RELATIVE_ERROR)


@pytest.fixture
def history(live_hub, make_user, api_key_for, simulated_upstream):
    user = make_user("numbers", tier="pro")
    traffic(live_hub, api_key_for(user), simulated_upstream)
    rows = list(UsageLog.objects.order_by("id"))
    assert len(rows) == 19
    spread(rows)
    usage_rollups_update()
    # Rows after the run: the current hour is read raw, so these count at once.
    traffic_after = UsageLog.objects.count()
    client = OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(user), max_retries=0)
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "after the run"}])
    usage_wait_idle()
    assert UsageLog.objects.count() == traffic_after + 1
    return user


def test_it_equals_the_raw_log_per_model_over_every_window(history):
    tier = user_tier_get(history)
    rows = list(UsageLog.objects.all())
    for window_key in ("24h", "7d", "30d"):
        window = window_get(window_key)
        in_window = [row for row in rows if row.created_at >= window.start]
        for task in (None, "generation", "translation"):
            raw = raw_figures(in_window, task=task)
            report = analytics_models(user=history, tier=tier, window_key=window_key, task=task)
            shown = {row["id"]: row for row in report["models"] if row["requests"]}
            assert set(shown) == set(raw), (window_key, task)
            for model, figures in raw.items():
                assert_matches(shown[model], figures)
    # The 24 hours leave out the rows of three days ago; the 7 days have every row.
    assert sum(row["requests"] for row in analytics_models(user=history, tier=tier, window_key="7d")["models"]) == 20
    day = sum(row["requests"] for row in analytics_models(user=history, tier=tier, window_key="24h")["models"])
    assert day == 20 - sum(1 for row in rows if row.created_at < window_get("24h").start)


def test_it_shows_failures_by_kind_and_the_translation_task(history):
    report = analytics_model(user=history, tier=user_tier_get(history), model_id="demo-backup", window_key="7d")
    assert report["failed"] == 3 and sum(report["failures"].values()) == 3
    assert report["by_task"]["translation"]["requests"] == 3
    assert report["by_task"]["translation"]["success_rate"] == 1.0
    assert report["by_task"]["generation"]["requests"] == 7


def test_its_points_add_up_to_the_window(history):
    tier = user_tier_get(history)
    for window_key, count in (("24h", 24), ("7d", 7), ("30d", 30)):
        report = analytics_model(user=history, tier=tier, model_id="demo", window_key=window_key)
        assert len(report["points"]) == count
        assert sum(point["requests"] for point in report["points"]) == report["requests"]
        assert report["points"][-1]["start"] <= timezone.now()
    hourly = analytics_model(user=history, tier=tier, model_id="demo", window_key="24h")["points"]
    current = hour_floor(timezone.now())
    assert hourly[-1]["start"] == current and hourly[-1]["requests"] >= 1  # the request made after the run


def test_its_uptime_counts_finished_model_tests(history):
    demo = LLMModel.objects.get(public_id="demo")
    now = timezone.now()
    for state, finished in (("succeeded", now), ("succeeded", now - timedelta(hours=3)), ("failed", now),
                            ("failed", now - timedelta(days=10)), ("running", None)):
        ModelTest.objects.create(llm_model=demo, state=state, finished_at=finished)
    tier = user_tier_get(history)
    week = analytics_model(user=history, tier=tier, model_id="demo", window_key="7d")
    assert week["uptime"] == {"tests": 3, "succeeded": 2, "rate": pytest.approx(2 / 3)}
    assert sum(point["uptime"]["tests"] for point in week["points"]) == 3
    month = analytics_model(user=history, tier=tier, model_id="demo", window_key="30d")
    assert month["uptime"]["tests"] == 4


def test_a_late_row_of_a_closed_day_counts_once_rolled_up(history):
    """The closed days are cached; a late row's roll-up (which rewrites that day's summaries) is seen at once."""
    tier = user_tier_get(history)
    before = analytics_model(user=history, tier=tier, model_id="demo", window_key="7d")["requests"]
    late = UsageLog.objects.filter(answered_model="demo").first()
    late.pk, late.request_id, late.created_at = None, "late-row", timezone.now() - timedelta(days=4)
    late.save()
    assert analytics_model(user=history, tier=tier, model_id="demo", window_key="7d")["requests"] == before
    usage_rollups_update()
    assert analytics_model(user=history, tier=tier, model_id="demo", window_key="7d")["requests"] == before + 1
