"""Implicit signals (the same prompt again soon after counts against the earlier answer) and the router's counts
(`preference_counts`), from requests made over real HTTP through the official openai SDK and /api/translate/."""

import time
from datetime import timedelta
from decimal import Decimal

import httpx2
import openai
import pytest
from django.utils import timezone

from conftest import usage_rows
from feedback.models import Feedback, FeedbackScanState
from feedback.selectors import feedback_summary, preference_counts, preference_snapshots_clear
from feedback.services import feedback_implicit_scan
from usage.models import UsageLog


@pytest.fixture
def owner(make_user):
    return make_user("signals-owner", tier="free")


@pytest.fixture
def other(make_user):
    return make_user("signals-other", tier="free")


def chat(live_hub: str, key: str, text: str) -> str:
    client = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=key, max_retries=0, timeout=10)
    raw = client.chat.completions.with_raw_response.create(model="demo", messages=[{"role": "user", "content": text}])
    return raw.headers["x-request-id"]


def translate(live_hub: str, key: str, text: str) -> None:
    response = httpx2.post(f"{live_hub}/api/translate/", json={"text": text, "target_language": "fr"},
                           headers={"Authorization": f"Bearer {key}"}, timeout=60)  # the first loads tiktoken
    assert response.status_code == 200, response.text


def vote(live_hub: str, key: str, request_id: str, score: int) -> None:
    response = httpx2.post(f"{live_hub}/api/feedback/", json={"request_id": request_id, "score": score},
                           headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 200, response.text


def signals() -> dict[str, tuple[int, str, str, str]]:
    return {f.request_id: (f.score, f.source, f.model_id, f.task) for f in Feedback.objects.all()}


def test_it_counts_a_retry_of_the_same_prompt_against_the_earlier_answer(live_hub, owner, other, api_key_for):
    key, other_key = api_key_for(owner), api_key_for(other)
    first = chat(live_hub, key, "what is the capital of France?")
    retry = chat(live_hub, key, "what is the capital of France?")
    different = chat(live_hub, key, "and of Spain?")
    chat(live_hub, other_key, "and of Spain?")  # another user's same prompt is no retry of the owner's
    translate(live_hub, key, "bonjour le monde")
    translate(live_hub, key, "bonjour le monde")
    rows = usage_rows(7)
    translations = [row.request_id for row in rows if row.endpoint == "api.translate"]
    assert all(len(row.prompt_hash) == 32 for row in rows)

    assert feedback_implicit_scan() == 2
    assert signals() == {first: (-1, "implicit", "demo", "generation"),
                         translations[0]: (-1, "implicit", "demo", "translation")}
    assert retry not in signals() and different not in signals()

    # Scanning again writes nothing twice; a vote replaces the implicit signal and a later scan keeps the vote.
    assert feedback_implicit_scan() == 0
    vote(live_hub, key, first, 1)
    assert feedback_implicit_scan() == 0
    assert feedback_implicit_scan(now=timezone.now() + timedelta(minutes=5)) == 0
    assert signals()[first] == (1, "explicit", "demo", "generation")


def log_row(user, request_id: str, seconds: float, *, prompt: str = "p" * 32, status: str = "ok") -> UsageLog:
    return UsageLog.objects.create(
        request_id=request_id, user=user, endpoint="v1.chat_completions", tier="free", requested_model="demo",
        answered_model="demo" if status == "ok" else "", status=status, http_status=200 if status == "ok" else 502,
        cost=Decimal(0), latency_ms=10, prompt_hash=prompt,
        created_at=timezone.now() - timedelta(hours=1) + timedelta(seconds=seconds))


def test_it_finds_a_retry_whose_earlier_row_is_written_later_and_ignores_slow_repeats_and_failures(
        registry, owner, settings):
    settings.LLMHUB = {**settings.LLMHUB, "FEEDBACK_RETRY_SECONDS": 60}
    log_row(owner, "late-retry", 30)  # the retry is logged first (another process's writer was quicker)
    assert feedback_implicit_scan() == 0
    log_row(owner, "late-earlier", 0)  # its earlier request arrives after the first scan, with a higher id
    log_row(owner, "slow-first", 1000, prompt="q" * 32)
    log_row(owner, "slow-second", 1061, prompt="q" * 32)  # 61 s later: not a retry
    log_row(owner, "failed", 2000, prompt="r" * 32, status="error")
    log_row(owner, "after-failure", 2010, prompt="r" * 32)  # a failed request retried is not a bad answer

    assert feedback_implicit_scan() == 1
    assert signals() == {"late-earlier": (-1, "implicit", "demo", "generation")}


def test_preference_counts_come_from_memory_and_follow_votes_and_retries(live_hub, owner, other, api_key_for,
                                                                         django_assert_num_queries):
    key, other_key = api_key_for(owner), api_key_for(other)
    liked = chat(live_hub, key, "one")
    retried = chat(live_hub, key, "two")
    chat(live_hub, key, "two")
    disliked = chat(live_hub, key, "three")
    others = chat(live_hub, other_key, "four")
    translate(live_hub, key, "hola")
    usage_rows(6)
    for request_id, score in ((liked, 1), (disliked, -1)):
        vote(live_hub, key, request_id, score)
    vote(live_hub, other_key, others, -1)
    feedback_implicit_scan()
    assert signals()[retried] == (-1, "implicit", "demo", "generation")
    translation = UsageLog.objects.get(endpoint="api.translate").request_id
    vote(live_hub, key, translation, 1)

    # The vote refreshed the owner's snapshot in the process that took it (the live hub is this process).
    with django_assert_num_queries(0):
        assert preference_counts(owner.pk, "generation") == {"demo": (1, 2)}
        assert preference_counts(owner.pk, "translation") == {"demo": (1, 0)}
        assert preference_counts(owner.pk, "code") == {}

    # A user without a snapshot gets {} at once and theirs from a background refresh, still without a query here.
    preference_snapshots_clear()
    with django_assert_num_queries(0):
        assert preference_counts(other.pk, "generation") == {}
        deadline = time.monotonic() + 5
        while not (counts := preference_counts(other.pk, "generation")) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert counts == {"demo": (0, 1)}

    summary = feedback_summary(model_id="demo", window=timedelta(days=1))
    assert (summary["positive"], summary["negative"], summary["implicit_negative"]) == (2, 3, 1)
    assert summary["by_model"] == {"demo": {"positive": 2, "negative": 3}}
    arm = feedback_summary(request_ids=[liked, retried, disliked, "unknown"])
    assert arm["by_request"] == {liked: 1, retried: -1, disliked: -1}
    assert (arm["positive"], arm["negative"], arm["explicit_negative"]) == (1, 2, 1)


def test_preference_counts_cost_microseconds(registry, owner):
    from feedback.selectors import preference_counts_refresh

    preference_counts_refresh(owner.pk)
    calls = 100_000
    started = time.perf_counter()
    for _ in range(calls):
        preference_counts(owner.pk, "generation")
    per_call = (time.perf_counter() - started) / calls
    assert per_call < 20e-6, per_call


def test_the_first_scan_starts_a_day_back_and_the_cursor_moves_once_rows_settled(registry, owner):
    log_row(owner, "before-hashes-1", -2 * 86400)  # two days old: before the scan's first run, never read
    log_row(owner, "before-hashes-2", -2 * 86400 + 10)
    first = log_row(owner, "recent-1", 0)
    last = log_row(owner, "recent-2", 10)
    now = timezone.now()

    assert feedback_implicit_scan(now=now) == 1
    assert signals() == {"recent-1": (-1, "implicit", "demo", "generation")}
    assert FeedbackScanState.objects.get().scanned_id == first.id - 1  # read again until settled
    assert feedback_implicit_scan(now=now + timedelta(seconds=30)) == 0
    assert FeedbackScanState.objects.get().scanned_id == first.id - 1
    assert feedback_implicit_scan(now=now + timedelta(seconds=61)) == 0
    assert FeedbackScanState.objects.get().scanned_id == last.id
