"""The analytics pages: one model's figures and charts over a window (/models/<id>/analytics/), models side by side
for a task type (/analytics/), and the staff's recommendations (/analytics/recommendations/). Views only parse the
query and render; every figure comes from analytics.selectors (roll-ups plus the current hour)."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from analytics.selectors import (
    DEFAULT_WINDOW,
    GENERATION,
    TASKS,
    WINDOWS,
    analytics_chart_series,
    analytics_model,
    analytics_models,
    recommendations_recent,
)
from llmhub.errors import NotFound, TierRequired
from pages.usage_views import staff_required
from pages.views import _page
from registry.authentication import user_tier_get


def _choice(request: HttpRequest, name: str, choices, default: str | None) -> str | None:
    value = request.GET.get(name, default)
    if value is not None and value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}.")
    return value


def _bad_query(request: HttpRequest, template: str, error: ValueError) -> HttpResponse:
    return _page(request, template, {"error": str(error), "windows": WINDOWS, "tasks": TASKS}, status=400)


@login_required
@require_GET
def model_analytics(request: HttpRequest, model_id: str) -> HttpResponse:
    """One model the user may see; anyone else's own model, or none, is 404; a model above their tier 403."""
    try:
        window = _choice(request, "window", WINDOWS, DEFAULT_WINDOW)
        task = _choice(request, "task", TASKS, None) or None
    except ValueError as error:
        return _bad_query(request, "pages/analytics_model.html", error)
    try:
        report = analytics_model(user=request.user, tier=user_tier_get(request.user), model_id=model_id,
                                 window_key=window, task=task)
    except NotFound as error:
        raise Http404(error.message) from error
    except TierRequired as error:
        return _page(request, "pages/analytics_model.html", {"error": error.message, "windows": WINDOWS,
                                                              "tasks": TASKS}, status=403)
    context = {"report": report, "series": analytics_chart_series(report["points"], step=report["step"]),
               "window": window, "task": task, "windows": WINDOWS, "tasks": TASKS}
    return _page(request, "pages/analytics_model.html", context)


@login_required
@require_GET
def analytics_compare(request: HttpRequest) -> HttpResponse:
    """The models the user may see side by side for one task type (generation by default), and their providers."""
    try:
        window = _choice(request, "window", WINDOWS, DEFAULT_WINDOW)
        task = _choice(request, "task", TASKS, GENERATION)
    except ValueError as error:
        return _bad_query(request, "pages/analytics_compare.html", error)
    report = analytics_models(user=request.user, tier=user_tier_get(request.user), window_key=window, task=task)
    return _page(request, "pages/analytics_compare.html", {"report": report, "window": window, "task": task,
                                                           "windows": WINDOWS, "tasks": TASKS})


@login_required
@staff_required
@require_GET
def recommendations(request: HttpRequest) -> HttpResponse:
    return _page(request, "pages/analytics_recommendations.html", {"recommendations": recommendations_recent()})
