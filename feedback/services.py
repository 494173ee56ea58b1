"""Writes: a user's vote on one of their requests, and the implicit signals found in the usage log.

Implicit signal: the same user sending the same prompt (the usage row's `prompt_hash`, a hash of the messages
computed on the request path in about 2 µs) again within `LLMHUB["FEEDBACK_RETRY_SECONDS"]` of an answered request
retried it, which counts against that earlier answer (-1). Nothing is decided on the request path: the beat task
`feedback.tasks.feedback_implicit_scan` reads the log's new rows by id and writes the signals; a retry's earlier
row may be written after it (another process, the stream consumer), so each new row is compared with rows before
and after it, and re-scanning writes nothing twice (one signal per request id).
"""

import itertools
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from feedback.models import Feedback, FeedbackScanState
from feedback.selectors import preference_counts_refresh, task_of
from llmhub.errors import NotFound
from usage.models import UsageLog

# A usage row takes an id when its batch is inserted, and its transaction commits within milliseconds: a row with a
# smaller id than one already scanned can only appear this soon after. Rows above the settled mark are scanned again.
SCAN_SETTLE_SECONDS = 60
SCAN_BATCH_SIZE = 20_000
ANSWERED = (UsageLog.Status.OK, UsageLog.Status.PARTIAL)


def feedback_submit(*, user_id: int, request_id: str, score: int, comment: str = "") -> Feedback:
    """The user's vote on their request `request_id` (a usage row of theirs), replacing any earlier signal on it.
    Another user's request is as unknown as a missing one (404)."""
    row = (UsageLog.objects.filter(request_id=request_id, user_id=user_id)
           .values("answered_model", "endpoint").first())
    if row is None:
        raise NotFound("No request of yours has this id (a request's usage is recorded a moment after it ends).",
                       code="request_not_found")
    now = timezone.now()
    with transaction.atomic():
        feedback, _ = Feedback.objects.update_or_create(
            request_id=request_id,
            defaults={"score": score, "comment": comment, "source": Feedback.Source.EXPLICIT, "updated_at": now},
            create_defaults={"user_id": user_id, "model_id": row["answered_model"], "task": task_of(row["endpoint"]),
                             "score": score, "comment": comment, "source": Feedback.Source.EXPLICIT,
                             "created_at": now, "updated_at": now})
    preference_counts_refresh(user_id)  # this process's router sees the vote at once; others within the TTL
    return feedback


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    request_id: str
    user_id: int
    prompt_hash: str
    created_at: datetime
    status: str
    answered_model: str
    endpoint: str


_FIELDS = ("id", "request_id", "user_id", "prompt_hash", "created_at", "status", "answered_model", "endpoint")


def feedback_implicit_scan(*, now: datetime | None = None, budget_seconds: float = 25.0) -> int:
    """Writes the implicit signals of the usage rows logged since the last scan; returns how many it wrote.
    Safe to run twice at once (the state row is locked) and again over the same rows (nothing is written twice)."""
    now = now or timezone.now()
    started = time.monotonic()
    written = 0
    with transaction.atomic():
        state, created = FeedbackScanState.objects.select_for_update().get_or_create(pk=1)
        if created:
            # Rows logged before prompt hashes existed have none: start a day back, not at the log's first row.
            first = (UsageLog.objects.filter(created_at__gte=now - timedelta(days=1)).order_by("id")
                     .values_list("id", flat=True).first())
            state.scanned_id = state.mark_id = first - 1 if first is not None else _highest_id()
        top = _highest_id()  # rows inserted from now on are the next run's
        cursor = state.scanned_id
        while cursor < top:
            rows = [_Row(*values) for values in UsageLog.objects.filter(id__gt=cursor, id__lte=top, user__isnull=False)
                    .exclude(prompt_hash="").order_by("id").values_list(*_FIELDS)[:SCAN_BATCH_SIZE]]
            written += _signals_write(rows)
            cursor = rows[-1].id if len(rows) == SCAN_BATCH_SIZE else top
            if time.monotonic() - started > budget_seconds:
                break
        # `cursor`: every row with an id up to it that had committed is scanned. A row whose id was taken before the
        # mark commits within moments: once the mark is SCAN_SETTLE_SECONDS old, rows up to it are done for good.
        if state.mark_at is None or now - state.mark_at >= timedelta(seconds=SCAN_SETTLE_SECONDS):
            state.scanned_id = max(state.scanned_id, min(state.mark_id, cursor))
            state.mark_id, state.mark_at = cursor, now
        state.save()
    return written


def _highest_id() -> int:
    return UsageLog.objects.aggregate(highest=Max("id"))["highest"] or 0


def _signals_write(rows: list[_Row]) -> int:
    """For each row, its neighbours of the same user and prompt within the retry window; every answered row followed
    by the same prompt within the window gets a -1 (unless it has a signal already)."""
    if not rows:
        return 0
    window = timedelta(seconds=settings.LLMHUB["FEEDBACK_RETRY_SECONDS"])
    written = 0
    for start in range(0, len(rows), 500):
        chunk = rows[start:start + 500]
        neighbours = UsageLog.objects.filter(
            user_id__in={row.user_id for row in chunk}, prompt_hash__in={row.prompt_hash for row in chunk},
            created_at__gte=min(row.created_at for row in chunk) - window,
            created_at__lte=max(row.created_at for row in chunk) + window).values_list(*_FIELDS)
        series: dict[tuple[int, str], dict[int, _Row]] = {}
        for row in [*chunk, *(_Row(*values) for values in neighbours)]:
            series.setdefault((row.user_id, row.prompt_hash), {})[row.id] = row
        retried: dict[str, _Row] = {}
        for same_prompt in series.values():
            ordered = sorted(same_prompt.values(), key=lambda row: (row.created_at, row.id))
            for earlier, later in itertools.pairwise(ordered):
                if earlier.status in ANSWERED and earlier.answered_model \
                        and later.created_at - earlier.created_at <= window:
                    retried[earlier.request_id] = earlier
        existing = set(Feedback.objects.filter(request_id__in=list(retried)).values_list("request_id", flat=True))
        Feedback.objects.bulk_create(
            [Feedback(request_id=row.request_id, user_id=row.user_id, model_id=row.answered_model,
                      task=task_of(row.endpoint), score=-1, source=Feedback.Source.IMPLICIT,
                      created_at=row.created_at, updated_at=row.created_at)
             for row in retried.values() if row.request_id not in existing],
            ignore_conflicts=True)  # a vote given meanwhile stays
        written += len(retried.keys() - existing)
    return written
