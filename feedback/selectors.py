"""Reads: one request's feedback, the router's per-user preference counts (from memory), and summaries for
experiments and analytics.

**The router's counts** (`preference_counts`) are served from a per-process snapshot of each user's signals over
the last `LLMHUB["FEEDBACK_WINDOW_DAYS"]` days, never a query on the request path: a user without a snapshot, or
with one older than `LLMHUB["FEEDBACK_SNAPSHOT_SECONDS"]`, gets what is there ({} at first) and a refresh is queued
for a background thread (one query per user, on an index). A vote refreshes its user's snapshot at once in the
process that took it; other processes see it within the TTL. While the database is unreachable the last snapshot
keeps being served.
"""

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from feedback.models import Feedback
from llmhub.db import db_read
from usage.models import UsageLog

logger = logging.getLogger(__name__)

TASK_TRANSLATION = "translation"
TASK_GENERATION = "generation"
# Endpoints whose requests are translations (the usage row's `endpoint`); every other one is generation.
TRANSLATION_ENDPOINTS = frozenset({"api.translate"})


def task_of(endpoint: str) -> str:
    """A request's task type, from its usage row's endpoint: `api.translate` is "translation", anything else
    (`/v1`, `/api/generate/`, the playground) "generation". Usage rows record no task hint (`x-llmhub-task`,
    `metadata.task`) yet: when they do, this is the one place to read it."""
    return TASK_TRANSLATION if endpoint in TRANSLATION_ENDPOINTS else TASK_GENERATION


def models_of(model_id: str) -> list[str]:
    """The models a signal is about: a translation answered in pieces by several models credits each once."""
    return [model for model in dict.fromkeys(model_id.split(",")) if model]


def feedback_get(*, user_id: int, request_id: str) -> tuple[dict[str, str] | None, Feedback | None]:
    """The user's request `request_id` (`{"model", "task"}`; None when it is not one of theirs) and its feedback."""
    feedback = Feedback.objects.filter(request_id=request_id, user_id=user_id).first()
    if feedback is not None:
        return {"model": feedback.model_id, "task": feedback.task}, feedback
    row = UsageLog.objects.filter(request_id=request_id, user_id=user_id).values("answered_model", "endpoint").first()
    return (None if row is None else {"model": row["answered_model"], "task": task_of(row["endpoint"])}), None


def feedback_for_requests(*, user_id: int, request_ids: Iterable[str]) -> dict[str, Feedback]:
    """The user's feedback on these requests, by request id (pages: the recent requests' thumbs)."""
    return {feedback.request_id: feedback
            for feedback in Feedback.objects.filter(user_id=user_id, request_id__in=list(request_ids))}


# --- The router's counts ----------------------------------------------------------------------------------------

Counts = dict[str, tuple[int, int]]
MAX_SNAPSHOT_USERS = 10_000  # the oldest refreshed user's snapshot is dropped past this
FAILED_REFRESH_RETRY_SECONDS = 5.0

# user id → (monotonic time it goes stale, {task: {model id: (positive, negative)}})
_snapshots: dict[int, tuple[float, dict[str, Counts]]] = {}
_lock = threading.Lock()
_queue: deque[int] = deque()
_queued: set[int] = set()
_worker: threading.Thread | None = None


def preference_counts(user_id: int, task: str) -> Counts:
    """model id → (positive, negative) signals of this user on this task over the window, explicit and implicit (a
    retry counts -1). From memory, no I/O: a few microseconds. A missing or stale snapshot is refreshed in
    the background (this call returns what is there: {} the first time). The dict is the caller's to keep."""
    entry = _snapshots.get(user_id)
    if entry is None or time.monotonic() >= entry[0]:
        _refresh_queue(user_id)
        if entry is None:
            return {}
    return dict(entry[1].get(task, {}))


@db_read
def preference_counts_load(user_id: int) -> dict[str, Counts]:
    """One user's counts per task and model, from the database (one query on `feedback_user_updated_idx`)."""
    since = timezone.now() - timedelta(days=settings.LLMHUB["FEEDBACK_WINDOW_DAYS"])
    counts: dict[str, dict[str, list[int]]] = {}
    rows = (Feedback.objects.filter(user_id=user_id, updated_at__gte=since).exclude(model_id="")
            .values_list("task", "model_id", "score").annotate(signals=Count("id")).order_by())
    for task, model_id, score, signals in rows:
        for model in models_of(model_id):
            pair = counts.setdefault(task, {}).setdefault(model, [0, 0])
            pair[0 if score > 0 else 1] += signals
    return {task: {model: (pair[0], pair[1]) for model, pair in models.items()} for task, models in counts.items()}


def preference_counts_refresh(user_id: int) -> dict[str, Counts]:
    """Reloads the user's snapshot now, in the calling thread (a sync context); returns it."""
    counts = preference_counts_load(user_id)
    _snapshot_store(user_id, counts, settings.LLMHUB["FEEDBACK_SNAPSHOT_SECONDS"])
    return counts


def preference_snapshots_clear() -> None:
    """Forgets every snapshot (tests; a process that must re-read everything)."""
    with _lock:
        _snapshots.clear()


def _snapshot_store(user_id: int, counts: dict[str, Counts], ttl: float) -> None:
    with _lock:
        _snapshots.pop(user_id, None)
        _snapshots[user_id] = (time.monotonic() + ttl, counts)
        while len(_snapshots) > MAX_SNAPSHOT_USERS:
            del _snapshots[next(iter(_snapshots))]


def _refresh_queue(user_id: int) -> None:
    global _worker
    with _lock:
        if user_id in _queued:
            return
        _queued.add(user_id)
        _queue.append(user_id)
        if _worker is None:
            _worker = threading.Thread(target=_refresh_run, name="feedback-snapshots", daemon=True)
            _worker.start()


def _refresh_run() -> None:
    """Refreshes queued users until none is left, then closes its connection and ends (the next queued user starts
    a new thread): a busy process keeps one thread and one connection, an idle one holds none."""
    global _worker
    try:
        while True:
            with _lock:
                if not _queue:
                    _worker = None
                    return
                user_id = _queue.popleft()
            try:
                preference_counts_refresh(user_id)
            except Exception as error:
                logger.warning("feedback snapshot of user %s not refreshed (the last one is served): %s",
                               user_id, error)
                entry = _snapshots.get(user_id)
                _snapshot_store(user_id, entry[1] if entry else {}, FAILED_REFRESH_RETRY_SECONDS)
            finally:
                with _lock:
                    _queued.discard(user_id)
    finally:
        try:
            connection.close()
        except DatabaseError:
            logger.debug("closing the feedback snapshots' connection failed", exc_info=True)


def _reset_after_fork() -> None:
    global _worker, _lock
    _lock = threading.Lock()
    _worker = None
    _queue.clear()
    _queued.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


# --- Summaries for experiments and analytics --------------------------------------------------------------------

def _model_filter(model_id: str) -> Q:
    return (Q(model_id=model_id) | Q(model_id__startswith=f"{model_id},") | Q(model_id__endswith=f",{model_id}")
            | Q(model_id__contains=f",{model_id},"))


def feedback_summary(*, request_ids: Iterable[str] | None = None, model_id: str | None = None,
                     window: timedelta | None = None, task: str | None = None) -> dict[str, Any]:
    """Feedback on a set of requests (an experiment's arm) or on one model, over the last `window` (by the time of
    the signal), optionally of one task:

    `{"positive", "negative", "explicit_positive", "explicit_negative", "implicit_negative",
      "by_model": {model id: {"positive", "negative"}}, "by_request": {request id: score}}`
    (`by_request` only with `request_ids`). Implicit signals appear once the scan has run (beat, every
    `LLMHUB_FEEDBACK_SCAN_SECONDS`)."""
    queryset: QuerySet = Feedback.objects.all()
    if model_id:
        queryset = queryset.filter(_model_filter(model_id))
    if window is not None:
        queryset = queryset.filter(updated_at__gte=timezone.now() - window)
    if task:
        queryset = queryset.filter(task=task)
    summary: dict[str, Any] = {"positive": 0, "negative": 0, "explicit_positive": 0, "explicit_negative": 0,
                               "implicit_negative": 0, "by_model": {}}
    if request_ids is None:
        rows = queryset.values_list("model_id", "source", "score").annotate(signals=Count("id")).order_by()
    else:
        ids, rows, by_request = list(request_ids), [], {}
        for start in range(0, len(ids), 5000):
            for request_id, model, source, score in queryset.filter(request_id__in=ids[start:start + 5000]) \
                    .values_list("request_id", "model_id", "source", "score"):
                by_request[request_id] = score
                rows.append((model, source, score, 1))
        summary["by_request"] = by_request
    for model, source, score, signals in rows:
        sign = "positive" if score > 0 else "negative"
        summary[sign] += signals
        summary[f"{source}_{sign}"] = summary.get(f"{source}_{sign}", 0) + signals
        for name in models_of(model):
            per_model = summary["by_model"].setdefault(name, {"positive": 0, "negative": 0})
            if model_id is None or name == model_id:
                per_model[sign] += signals
    if model_id is not None:
        summary["by_model"] = {name: counts for name, counts in summary["by_model"].items() if name == model_id}
    return summary
