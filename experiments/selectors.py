"""Reads of experiments: the running ones as an in-memory snapshot (the request path's, no query once warm), and
each arm's metrics from the usage log, feedback and judge scores."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from django.db.models import Count, ExpressionWrapper, F, FloatField, Q, Sum

from experiments.models import Arm, Experiment, JudgeScore
from llmhub.snapshot import LocalSnapshot


@dataclass(frozen=True, slots=True)
class Assignment:
    """The arm a request is served by: its model and parameters, and the template version to render
    (`template_ref`, "name@version", blank for the request's own prompt)."""

    experiment_id: int
    experiment_key: str
    arm: str
    model_id: str
    params: Mapping[str, Any]
    template_ref: str
    judge_model: str = ""  # the experiment's judge: scores this share of its answers (generation/judging.py)
    judge_sample_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class ExperimentPlan:
    """A running or promoted experiment as assignment needs it."""

    id: int
    key: str
    prompt_name: str
    arms: tuple[Assignment, ...]  # every arm with a weight, control first
    weights: tuple[int, ...]
    active: tuple[bool, ...]
    winner: Assignment | None  # promoted: everyone gets it


@dataclass(frozen=True, slots=True)
class RunningExperiments:
    by_key: Mapping[str, ExperimentPlan] = field(default_factory=dict)
    by_prompt: Mapping[str, ExperimentPlan] = field(default_factory=dict)


def _plan(experiment: Experiment) -> ExperimentPlan:
    arms = [arm for arm in experiment.arms.all() if arm.weight > 0 or arm.state == Arm.State.WINNER]
    assignments = tuple(Assignment(experiment.id, experiment.key, arm.name, arm.model_id,
                                   MappingProxyType(dict(arm.params or {})), arm.template_ref,
                                   experiment.judge_model, experiment.judge_sample_rate) for arm in arms)
    winner = next((a for a, arm in zip(assignments, arms, strict=True) if arm.state == Arm.State.WINNER), None)
    return ExperimentPlan(id=experiment.id, key=experiment.key, prompt_name=experiment.prompt_name, arms=assignments,
                          weights=tuple(arm.weight for arm in arms),
                          active=tuple(arm.state == Arm.State.ACTIVE for arm in arms),
                          winner=winner if experiment.status == Experiment.Status.PROMOTED else None)


def _running_build() -> RunningExperiments:
    experiments = Experiment.objects.filter(status__in=(Experiment.Status.RUNNING, Experiment.Status.PROMOTED)) \
        .prefetch_related("arms").order_by("created_at", "id")
    plans = [_plan(experiment) for experiment in experiments]
    # One experiment per prompt at a time (services refuse a second); the newest wins should two slip through.
    return RunningExperiments(by_key=MappingProxyType({plan.key: plan for plan in plans}),
                              by_prompt=MappingProxyType({plan.prompt_name: plan for plan in plans if plan.prompt_name}))


# Invalidated on every save and delete of experiments and arms (experiments/signals.py): every process serves a stop or
# a promotion from its next request on (immediate: the request path reads the shared epoch, llmhub.snapshot).
running_experiments = LocalSnapshot("experiments", _running_build, immediate=True)


# --- Metrics per arm ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Sums:
    """n observations of a metric, their sum and sum of squares."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0


@dataclass(frozen=True, slots=True)
class ArmUsage:
    requests: int = 0
    successes: int = 0
    errors: int = 0
    cost: Sums = Sums()
    latency: Sums = Sums()


def arm_usage(experiment_id: int) -> dict[str, ArmUsage]:
    """Each arm's requests, successes, errors, cost and latency, from the usage log's rows of the experiment."""
    from usage.models import UsageLog

    rows = (UsageLog.objects.filter(experiment_id=experiment_id).values("experiment_arm")
            .annotate(requests=Count("id"), successes=Count("id", filter=Q(status="ok")),
                      errors=Count("id", filter=Q(status="error")),
                      cost_total=Sum("cost"),
                      cost_squares=Sum(ExpressionWrapper(F("cost") * F("cost"), output_field=FloatField())),
                      latency_total=Sum("latency_ms"),
                      latency_squares=Sum(ExpressionWrapper(F("latency_ms") * F("latency_ms"),
                                                            output_field=FloatField()))))
    return {row["experiment_arm"]: ArmUsage(
        requests=row["requests"], successes=row["successes"], errors=row["errors"],
        cost=Sums(row["requests"], float(row["cost_total"] or 0), float(row["cost_squares"] or 0)),
        latency=Sums(row["requests"], float(row["latency_total"] or 0), float(row["latency_squares"] or 0)),
    ) for row in rows}


def arm_judge_scores(experiment_id: int) -> dict[str, Sums]:
    rows = (JudgeScore.objects.filter(experiment_id=experiment_id).values("arm")
            .annotate(n=Count("id"), total=Sum("score"),
                      squares=Sum(ExpressionWrapper(F("score") * F("score"), output_field=FloatField()))))
    return {row["arm"]: Sums(row["n"], float(row["total"] or 0), float(row["squares"] or 0)) for row in rows}


def judge_score_exists(request_id: str) -> bool:
    return JudgeScore.objects.filter(request_id=request_id).exists()


def _no_feedback(experiment_id: int) -> dict[str, Sums]:
    return {}


def arm_votes(experiment_id: int) -> dict[str, Sums]:
    """Users' thumbs (feedback app: 1 up, 0 down, explicit and implicit) on the experiment's requests, per arm."""
    from feedback.models import Feedback
    from usage.models import UsageLog

    requests = UsageLog.objects.filter(experiment_id=experiment_id)
    arms = dict(requests.filter(request_id__in=Feedback.objects.values("request_id"))
                .values_list("request_id", "experiment_arm"))
    sums: dict[str, list[float]] = {}
    for request_id, score in Feedback.objects.filter(request_id__in=list(arms)).values_list("request_id", "score"):
        up = 1.0 if score > 0 else 0.0
        totals = sums.setdefault(arms[request_id], [0, 0.0])
        totals[0] += 1
        totals[1] += up
    return {arm: Sums(n, total, total) for arm, (n, total) in sums.items()}


# Per-request thumbs (1 up, 0 down) summed per arm; `feedback_source_set` points it elsewhere (None: no feedback).
_feedback_source: Callable[[int], dict[str, Sums]] = arm_votes


def feedback_source_set(reader: Callable[[int], dict[str, Sums]] | None) -> None:
    """Points the feedback metric at `reader(experiment_id) -> {arm: Sums}` (None: no feedback)."""
    global _feedback_source
    _feedback_source = reader or _no_feedback


def arm_feedback(experiment_id: int) -> dict[str, Sums]:
    return _feedback_source(experiment_id)


def experiment_get(experiment_id: int) -> Experiment:
    return Experiment.objects.prefetch_related("arms").get(pk=experiment_id)
