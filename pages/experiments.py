"""The experiments pages (staff): the list, and one experiment's arms with their metrics and intervals, the test
against the control, the decision and why, and the promote and stop buttons. Viewing a running experiment evaluates
it (as beat does every minute)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from experiments.models import Experiment
from experiments.services import (
    ArmReport,
    Evaluation,
    ExperimentInvalid,
    experiment_evaluate,
    experiment_promote,
    experiment_stop,
)
from experiments.stats import Summary
from pages.usage_views import staff_required
from pages.views import _page

Metric = Experiment.Metric


def _format(metric: str, value: float) -> str:
    if metric in (Metric.SUCCESS, Metric.FEEDBACK):
        return f"{value:.1%}"
    if metric == Metric.COST:
        return f"${value:.6f}"
    if metric == Metric.LATENCY:
        return f"{value:.0f} ms"
    return f"{value:.3f}"


def _figure(metric: str, summary: Summary) -> dict:
    if summary.n == 0:
        return {"metric": metric, "label": Metric(metric).label, "value": "no data", "interval": "", "n": 0}
    low, high = summary.interval()
    low = max(0.0, low)  # every metric here is a rate, an amount or a duration
    return {"metric": metric, "label": Metric(metric).label, "value": _format(metric, summary.mean), "n": summary.n,
            "interval": f"{_format(metric, low)} – {_format(metric, high)}"}


def _difference(metric: str, value: float) -> str:
    text = _format(metric, abs(value))
    if metric in (Metric.SUCCESS, Metric.FEEDBACK):
        text = f"{abs(value) * 100:.1f} pts"
    return ("+" if value >= 0 else "−") + text


def _arm_row(report: ArmReport, primary: str) -> dict:
    comparison = report.comparison
    versus = None
    if comparison is not None:
        versus = {"ready": comparison.ready, "significant": comparison.significant,
                  "difference": _difference(primary, comparison.difference),
                  "interval": (f"{_difference(primary, comparison.lower)} to {_difference(primary, comparison.upper)}"
                               if comparison.ready else ""),
                  "p_value": f"{report.arm.p_value:.3g}" if report.arm.p_value is not None else "–"}
    return {"arm": report.arm, "control": report.control, "share": f"{report.share:.0%}", "requests": report.requests,
            "error_rate": f"{report.error_rate:.1%}", "primary": _figure(primary, report.primary.summary),
            "figures": [_figure(metric, measure.summary) for metric, measure in report.measures.items()
                        if metric != primary and measure.summary.n],
            "versus": versus}


def _context(evaluation: Evaluation) -> dict:
    experiment = evaluation.experiment
    return {"experiment": experiment, "evaluation": evaluation,
            "rows": [_arm_row(report, experiment.primary_metric) for report in evaluation.arms],
            "primary_label": Metric(experiment.primary_metric).label,
            "running": experiment.status == Experiment.Status.RUNNING}


@login_required
@staff_required
@require_GET
def experiments_list(request: HttpRequest) -> HttpResponse:
    return _page(request, "pages/experiments.html",
                 {"experiments": Experiment.objects.prefetch_related("arms").order_by("-created_at")[:200]})


@login_required
@staff_required
@require_GET
def experiment_detail(request: HttpRequest, experiment_id: int) -> HttpResponse:
    try:
        evaluation = experiment_evaluate(experiment_id=experiment_id)
    except Experiment.DoesNotExist:
        raise Http404("No such experiment.") from None
    return _page(request, "pages/experiment.html", _context(evaluation))


def _experiment_or_404(experiment_id: int) -> Experiment:
    experiment = Experiment.objects.filter(pk=experiment_id).first()
    if experiment is None:
        raise Http404("No such experiment.")
    return experiment


@login_required
@staff_required
@require_POST
def experiment_promote_view(request: HttpRequest, experiment_id: int) -> HttpResponse:
    experiment = _experiment_or_404(experiment_id)
    arm = request.POST.get("arm", "")
    try:
        promoted = experiment_promote(experiment=experiment, arm_name=arm,
                                      reason=f"Promoted by {request.user.get_username()}.")
    except ExperimentInvalid as error:
        messages.error(request, error.message)
    else:
        if promoted:
            messages.success(request, f"{arm} is promoted: every request of the experiment is served by it from now on.")
        else:
            messages.error(request, "Only a running experiment can promote an arm.")
    return redirect("pages:experiment", experiment_id=experiment.pk)


@login_required
@staff_required
@require_POST
def experiment_stop_view(request: HttpRequest, experiment_id: int) -> HttpResponse:
    experiment = _experiment_or_404(experiment_id)
    experiment_stop(experiment=experiment, reason=f"Stopped by {request.user.get_username()}.")
    messages.success(request, "The experiment is stopped: its requests are served as if it did not exist.")
    return redirect("pages:experiment", experiment_id=experiment.pk)
