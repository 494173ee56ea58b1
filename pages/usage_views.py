"""The usage pages: a user's own usage (/usage/), one request's attempts, and the staff view across users with its
CSV export. Views only parse input and render; every figure comes from usage.selectors (roll-ups plus the current
hour, never a scan of the raw log)."""

import csv
from collections.abc import AsyncIterator, Iterator
from io import StringIO

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required, user_passes_test
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from feedback.selectors import feedback_for_requests
from llmhub.api import error_body
from pages.views import _page
from registry.authentication import user_tier_get
from usage.models import UsageRollup
from usage.selectors import (
    PAGE_DAYS,
    RANGE_DAYS,
    usage_overview,
    usage_page_user,
    usage_quota_bars,
    usage_request_get,
    usage_requests_recent,
    usage_rollups_csv_rows,
)

CSV_ROWS_PER_CHUNK = 2000


def _staff(user) -> bool:
    if not user.is_staff:
        raise PermissionDenied("Staff only.")
    return True


staff_required = user_passes_test(_staff)


@login_required
@require_GET
def usage_mine(request: HttpRequest) -> HttpResponse:
    tier = user_tier_get(request.user)
    recent = usage_requests_recent(user_id=request.user.pk)
    feedback = feedback_for_requests(user_id=request.user.pk, request_ids=[row.request_id for row in recent])
    for row in recent:
        row.feedback = feedback.get(row.request_id)
    context = {"usage": usage_page_user(user_id=request.user.pk),
               "quotas": usage_quota_bars(user_id=request.user.pk, tier_slug=tier.slug), "recent": recent}
    return _page(request, "pages/usage.html", context)


@login_required
@require_GET
def usage_request(request: HttpRequest, request_id: str) -> HttpResponse:
    """One of the user's own requests and its attempts; anyone else's is 404 (whether it exists is not told)."""
    row = usage_request_get(user_id=request.user.pk, request_id=request_id)
    if row is None:
        raise Http404("No such request.")
    feedback = feedback_for_requests(user_id=request.user.pk, request_ids=[row.request_id]).get(row.request_id)
    return _page(request, "pages/usage_request.html", {"row": row, "feedback": feedback})


def _range_days(request: HttpRequest) -> int | None:
    value = request.GET.get("days", str(PAGE_DAYS))
    return int(value) if value in {str(days) for days in RANGE_DAYS} else None


def _bad_range(request: HttpRequest) -> HttpResponse:
    message = f"days must be one of {', '.join(map(str, RANGE_DAYS))}."
    return _page(request, "pages/usage_all.html", {"error": message, "ranges": RANGE_DAYS}, status=400)


@login_required
@staff_required
@require_GET
def usage_all(request: HttpRequest) -> HttpResponse:
    """Staff: everyone's usage over 7, 30 or 90 days."""
    days = _range_days(request)
    if days is None:
        return _bad_range(request)
    return _page(request, "pages/usage_all.html", {"overview": usage_overview(days=days), "days": days,
                                                   "ranges": RANGE_DAYS})


@login_required
@staff_required
@require_GET
def usage_export(request: HttpRequest) -> HttpResponse:
    """Staff: the roll-ups of the range as CSV (`?days=7|30|90`, `?period=day|hour`), streamed in chunks."""
    days, period = _range_days(request), request.GET.get("period", UsageRollup.Period.DAY)
    fields = {}
    if days is None:
        fields["days"] = [f"Must be one of {', '.join(map(str, RANGE_DAYS))}."]
    if period not in UsageRollup.Period.values:
        fields["period"] = ["Must be day or hour."]
    if fields:
        return JsonResponse(error_body(code="invalid", message="Invalid input.", fields=fields), status=400)
    rows = usage_rollups_csv_rows(days=days, period=period)
    response = StreamingHttpResponse(_csv_chunks(rows), content_type="text/csv; charset=utf-8")
    stamp = timezone.localtime().strftime("%Y%m%d")
    response["Content-Disposition"] = f'attachment; filename="llmhub-usage-{period}-{days}d-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    return response


def _csv_cell(value):
    # A text cell starting like a formula would run as one in a spreadsheet (CSV injection).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def _csv_text(rows: Iterator[tuple], count: int) -> str | None:
    """The next `count` rows as CSV text; None once there are none left."""
    buffer = StringIO()
    writer = csv.writer(buffer)
    written = 0
    for row in rows:
        writer.writerow([_csv_cell(value) for value in row])
        written += 1
        if written == count:
            break
    return buffer.getvalue() if written else None


async def _csv_chunks(rows: Iterator[tuple]) -> AsyncIterator[str]:
    # An async iterator, so ASGI streams it chunk by chunk (Django would read a sync one whole first). Each chunk
    # is read in the request's own thread, where the database cursor lives.
    while (chunk := await sync_to_async(_csv_text)(rows, CSV_ROWS_PER_CHUNK)) is not None:
        yield chunk
