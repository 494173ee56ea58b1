"""Experiments: sticky assignment of requests to arms (the request path's seam, `experiment_assign`), the writes
(start, stop an arm, promote, stop), and the periodic evaluation: guardrails, then the sequential test
(experiments/stats.py) on the primary metric.

Assignment stores nothing: a hash of (experiment, user) picks the arm by the weights, so a user keeps their arm in
every process and session. Only a stopped or promoted arm is written, and the snapshot of running experiments
(selectors.running_experiments) carries it to every process: the users of a stopped arm are spread over the
remaining ones by a second hash, and a promoted experiment serves its winner to everyone.
"""

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from experiments import stats
from experiments.models import Arm, Experiment, JudgeScore
from experiments.selectors import (
    Assignment,
    ExperimentPlan,
    RunningExperiments,
    Sums,
    arm_feedback,
    arm_judge_scores,
    arm_usage,
    experiment_get,
    running_experiments,
)
from llmhub.errors import ApplicationError

logger = logging.getLogger(__name__)

HIGHER_IS_BETTER = {Experiment.Metric.SUCCESS: True, Experiment.Metric.FEEDBACK: True, Experiment.Metric.JUDGE: True,
                    Experiment.Metric.COST: False, Experiment.Metric.LATENCY: False}


class ExperimentInvalid(ApplicationError):
    status = 400
    code = "invalid_experiment"


# --- Assignment (the request path) ----------------------------------------------------------------------------------

def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) fixed by `parts`: the same in every process and run (unlike hash())."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _weighted(weights: Sequence[int], unit: float) -> int:
    point, total = unit * sum(weights), 0
    for index, weight in enumerate(weights):
        total += weight
        if point < total:
            return index
    return len(weights) - 1


def assignment_pick(plan: ExperimentPlan, user_id: int) -> Assignment | None:
    """The user's arm: by the weights of every arm; one who drew a stopped arm gets one of the remaining arms (by
    their weights, from a second hash), so the users of arms still running keep theirs."""
    if plan.winner is not None:
        return plan.winner
    if not plan.arms:
        return None
    index = _weighted(plan.weights, _unit(plan.id, user_id))
    if plan.active[index]:
        return plan.arms[index]
    remaining = [i for i, active in enumerate(plan.active) if active and plan.weights[i] > 0]
    if not remaining:
        return None
    return plan.arms[remaining[_weighted([plan.weights[i] for i in remaining], _unit(plan.id, user_id, "rest"))]]


def assignment_find(running: RunningExperiments, user_id: int | None, *, prompt: str | None = None,
                    key: str | None = None) -> Assignment | None:
    """The arm of the experiment named by `key`, else of the one running on the prompt template `prompt`
    ("name", "name@label" or "name@version"); None when the request joins none."""
    if user_id is None:
        return None
    plan = running.by_key.get(key) if key else None
    if plan is None and prompt:
        plan = running.by_prompt.get(prompt.partition("@")[0])
    return assignment_pick(plan, user_id) if plan is not None else None


def experiment_assign(user_id: int | None, *, prompt: str | None = None, key: str | None = None) -> Assignment | None:
    """The request's arm (see `assignment_find`), from the in-memory snapshot of running experiments."""
    if user_id is None or not (prompt or key):
        return None
    return assignment_find(running_experiments.get(), user_id, prompt=prompt, key=key)


def arm_template_resolve(resolved, request, model, user_id: int | None):
    """prompts' resolver seam: the template version of the arm serving this user, for a request that uses the
    template an experiment runs on (and is served by the arm's model: a caller the arm's model is not allowed to keeps
    the version they asked for). Reads the snapshot `start_run` has just warmed; never builds it on the event loop."""
    running = running_experiments.peek()
    if running is None or user_id is None:
        return None
    assignment = assignment_find(running, user_id, prompt=request.name)
    if assignment is None or not assignment.template_ref or getattr(model, "id", None) != assignment.model_id:
        return None
    from prompts.services import prompt_version_get

    name, _, version = assignment.template_ref.partition("@")
    return prompt_version_get(name, version or None)


async def aexperiment_assign(user_id: int | None, *, prompt: str | None = None,
                             key: str | None = None) -> Assignment | None:
    """`experiment_assign` for the event loop: a warm snapshot is read in place, a stale one checked in a thread."""
    if user_id is None or not (prompt or key):
        return None
    return assignment_find(await running_experiments.aget(), user_id, prompt=prompt, key=key)


def judge_sampled(request_id: str, rate: float) -> bool:
    """Whether the judge scores this request's answer: a fixed share `rate` of requests, decided by the request id
    (the same in every process, so a retried task never changes it)."""
    return rate > 0 and _unit("judge", request_id) < rate


# --- Writes -------------------------------------------------------------------------------------------------------

def judge_score_record(*, experiment_id: int, arm: str, request_id: str, score: float) -> bool:
    """Stores the judge's score (0..1) of one request's answer; False when it already has one (a task run twice)."""
    _, created = JudgeScore.objects.get_or_create(request_id=request_id, defaults={
        "experiment_id": experiment_id, "arm": arm, "score": min(1.0, max(0.0, score))})
    return created



def experiment_start(*, experiment: Experiment) -> Experiment:
    """Draft → running, once its arms make sense: two or more with traffic, each on a model of the registry, and no
    other running experiment on the same prompt template."""
    from registry.selectors import registry_get

    arms = list(experiment.arms.all())
    if sum(1 for arm in arms if arm.weight > 0) < 2:
        raise ExperimentInvalid("An experiment needs at least two arms with a weight above 0.")
    models = registry_get().models
    unknown = sorted({arm.model_id for arm in arms if arm.model_id not in models})
    if unknown:
        raise ExperimentInvalid(f"Unknown model: {', '.join(unknown)}.", extra={"param": "model_id"})
    if experiment.prompt_name and Experiment.objects.filter(
            prompt_name=experiment.prompt_name, status=Experiment.Status.RUNNING).exclude(pk=experiment.pk).exists():
        raise ExperimentInvalid(f"Another experiment is running on the prompt '{experiment.prompt_name}'.")
    if experiment.status != Experiment.Status.DRAFT:
        raise ExperimentInvalid(f"Only a draft can start; this one is {experiment.status}.")
    experiment.status, experiment.started_at = Experiment.Status.RUNNING, timezone.now()
    experiment.save(update_fields=["status", "started_at"])
    return experiment


def experiment_stop(*, experiment: Experiment, reason: str = "Stopped by hand.") -> Experiment:
    """Ends the experiment: its requests are served as if it did not exist."""
    experiment.status, experiment.ended_at = Experiment.Status.STOPPED, timezone.now()
    experiment.decision = reason
    experiment.save(update_fields=["status", "ended_at", "decision"])
    return experiment


def arm_stop(*, arm: Arm, reason: str) -> bool:
    """Stops an active arm (its users move to the remaining arms from the next request on); False if it was not
    active (another evaluation got there first)."""
    with transaction.atomic():
        stopped = Arm.objects.filter(pk=arm.pk, state=Arm.State.ACTIVE).update(state=Arm.State.STOPPED, reason=reason)
    if stopped:
        running_experiments.invalidate()
        logger.info("experiment %s: arm %s stopped: %s", arm.experiment_id, arm.name, reason)
    return bool(stopped)


def experiment_promote(*, experiment: Experiment, arm_name: str, reason: str = "Promoted by hand.") -> bool:
    """Serves `arm_name` to everyone from the next request on, in every process; False if the experiment was no
    longer running."""
    with transaction.atomic():
        winner = Arm.objects.filter(experiment=experiment, name=arm_name).first()
        if winner is None:
            raise ExperimentInvalid(f"The experiment has no arm '{arm_name}'.", extra={"param": "arm"})
        promoted = Experiment.objects.filter(pk=experiment.pk, status=Experiment.Status.RUNNING).update(
            status=Experiment.Status.PROMOTED, ended_at=timezone.now(), decision=f"{arm_name} promoted: {reason}")
        if promoted:
            Arm.objects.filter(experiment=experiment).exclude(pk=winner.pk).filter(state=Arm.State.ACTIVE).update(
                state=Arm.State.STOPPED, reason=f"{arm_name} was promoted.")
            Arm.objects.filter(pk=winner.pk).update(state=Arm.State.WINNER, reason=reason)
    if promoted:
        running_experiments.invalidate()
        logger.info("experiment %s: arm %s promoted: %s", experiment.pk, arm_name, reason)
    return bool(promoted)


# --- Evaluation ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Measure:
    """One arm's figure on one metric: n, mean and a 95% (fixed-sample) interval of its own."""

    metric: str
    summary: stats.Summary

    @property
    def interval(self) -> tuple[float, float]:
        return self.summary.interval()


@dataclass(frozen=True, slots=True)
class ArmReport:
    arm: Arm
    control: bool
    share: float  # of the traffic, by the weights
    requests: int
    error_rate: float
    measures: dict[str, Measure]
    primary: Measure
    comparison: stats.Comparison | None  # against the control (None for the control)


@dataclass(frozen=True, slots=True)
class Evaluation:
    experiment: Experiment
    arms: list[ArmReport]
    decision: str
    horizon_per_arm: int | None  # the planned observations per arm for the stated power (None before data)
    alpha_per_comparison: float


def _measures(requests: int, successes: int, cost: Sums, latency: Sums, feedback: Sums | None,
              judge: Sums | None) -> dict[str, Measure]:
    metric = Experiment.Metric
    return {
        metric.SUCCESS: Measure(metric.SUCCESS, stats.Summary.of_binary(requests, successes)),
        metric.COST: Measure(metric.COST, stats.Summary.of_sums(cost.n, cost.total, cost.squares)),
        metric.LATENCY: Measure(metric.LATENCY, stats.Summary.of_sums(latency.n, latency.total, latency.squares)),
        metric.FEEDBACK: Measure(metric.FEEDBACK, stats.Summary.of_sums(*_sums(feedback))),
        metric.JUDGE: Measure(metric.JUDGE, stats.Summary.of_sums(*_sums(judge))),
    }


def _sums(sums: Sums | None) -> tuple[int, float, float]:
    return (sums.n, sums.total, sums.squares) if sums is not None else (0, 0.0, 0.0)


def experiment_evaluate(*, experiment_id: int, act: bool = True) -> Evaluation:
    """Measures every arm and, for a running experiment with `act`, acts: an arm past a guardrail is stopped, an arm
    the sequential test finds worse than the control is stopped, a winner is promoted when `auto_promote` is on.
    The decision and why is saved on the experiment. Safe to run twice at once (each change is conditional)."""
    experiment = experiment_get(experiment_id)
    arms = list(experiment.arms.all())
    usage, feedback, judge = arm_usage(experiment.id), arm_feedback(experiment.id), arm_judge_scores(experiment.id)
    total_weight = sum(arm.weight for arm in arms) or 1
    metric, higher = experiment.primary_metric, HIGHER_IS_BETTER[experiment.primary_metric]
    comparisons = max(1, len(arms) - 1)
    alpha = experiment.alpha / comparisons  # Bonferroni over the treatments: α for the experiment as a whole
    reports: list[ArmReport] = []
    control_measure: Measure | None = None
    for position, arm in enumerate(arms):
        used = usage.get(arm.name)
        requests = used.requests if used else 0
        measures = _measures(requests, used.successes if used else 0, used.cost if used else Sums(),
                             used.latency if used else Sums(), feedback.get(arm.name), judge.get(arm.name))
        primary = measures[metric]
        comparison = None
        if position == 0:
            control_measure = primary
        else:
            tau = stats.mixture_tau(control_mean=control_measure.summary.mean, minimum_effect=experiment.minimum_effect)
            comparison = stats.compare(control_measure.summary, primary.summary, alpha=alpha, tau=tau,
                                       min_samples=experiment.min_samples)
        reports.append(ArmReport(arm=arm, control=position == 0, share=arm.weight / total_weight, requests=requests,
                                 error_rate=(used.errors / requests) if requests else 0.0, measures=measures,
                                 primary=primary, comparison=comparison))
    horizon = _horizon(experiment, reports, alpha=alpha)
    decision = experiment.decision
    if act and experiment.status == Experiment.Status.RUNNING and reports:
        decision = _act(experiment, reports, higher=higher, horizon=horizon)
        Experiment.objects.filter(pk=experiment.pk, status=Experiment.Status.RUNNING).update(
            decision=decision, evaluated_at=timezone.now())
        experiment.refresh_from_db()
        for report in reports:
            report.arm.refresh_from_db()
        decision = experiment.decision
    return Evaluation(experiment=experiment, arms=reports, decision=decision, horizon_per_arm=horizon,
                      alpha_per_comparison=alpha)


def _horizon(experiment: Experiment, reports: list[ArmReport], *, alpha: float) -> int | None:
    control = reports[0].primary.summary if reports else None
    if control is None or control.n < experiment.min_samples or control.variance <= 0:
        return None
    tau = stats.mixture_tau(control_mean=control.mean, minimum_effect=experiment.minimum_effect)
    return stats.horizon(control_variance=control.variance, treatment_variance=control.variance,
                         effect=tau, tau=tau, alpha=alpha, power=experiment.power) // 2 + 1


def _percent(value: float) -> str:
    return f"{value:.1%}"


def _act(experiment: Experiment, reports: list[ArmReport], *, higher: bool, horizon: int | None) -> str:
    """Applies guardrails and the test's verdicts; returns the decision and why."""
    notes: list[str] = []
    control = reports[0]
    control_cost = control.measures[Experiment.Metric.COST].summary
    for report in reports:
        arm = report.arm
        if arm.state != Arm.State.ACTIVE or report.requests < experiment.guardrail_min_requests:
            continue
        reason = None
        if report.error_rate > experiment.guardrail_error_rate:
            reason = (f"Guardrail: error rate {_percent(report.error_rate)} is above "
                      f"{_percent(experiment.guardrail_error_rate)} over {report.requests} requests.")
        cost = report.measures[Experiment.Metric.COST].summary
        if (reason is None and not report.control and control.requests >= experiment.guardrail_min_requests
                and control_cost.mean > 0 and cost.mean >= experiment.guardrail_cost_ratio * control_cost.mean):
            reason = (f"Guardrail: cost per request {cost.mean / control_cost.mean:.2f}× the control's "
                      f"(limit {experiment.guardrail_cost_ratio:g}×) over {report.requests} requests.")
        if reason is not None and arm_stop(arm=arm, reason=reason):
            arm.state = Arm.State.STOPPED
            notes.append(f"{arm.name} stopped. {reason}")
    metric_label = Experiment.Metric(experiment.primary_metric).label.lower()
    winners = []
    for report in reports[1:]:
        comparison, arm = report.comparison, report.arm
        if comparison is None or not comparison.ready:
            continue
        p_value = min(comparison.p_value, arm.p_value if arm.p_value is not None else 1.0)
        Arm.objects.filter(pk=arm.pk).update(p_value=p_value)  # no signal: the snapshot does not hold it
        if not comparison.significant or arm.state != Arm.State.ACTIVE or control.arm.state == Arm.State.STOPPED:
            continue
        better = (comparison.difference > 0) == higher
        interval = f"difference {comparison.difference:+.4g} (always-valid interval {comparison.lower:+.4g} to " \
                   f"{comparison.upper:+.4g}, p {p_value:.3g})"
        if better:
            winners.append((report, interval))
        else:
            reason = f"Significantly worse than the control on {metric_label}: {interval}."
            if arm_stop(arm=arm, reason=reason):
                arm.state = Arm.State.STOPPED
                notes.append(f"{arm.name} stopped. {reason}")
    if winners:
        best, interval = max(winners, key=lambda w: w[0].primary.summary.mean * (1 if higher else -1))
        why = f"better than the control on {metric_label}: {interval}."
        if experiment.auto_promote and experiment_promote(experiment=experiment, arm_name=best.arm.name,
                                                          reason=f"Automatically: {why}"):
            return " ".join([*notes, f"{best.arm.name} promoted automatically: {why}"])
        return " ".join([*notes, f"{best.arm.name} is {why} Promote it."])
    if control.arm.state == Arm.State.STOPPED:
        return " ".join([*notes, "The control is stopped: stop the experiment or promote an arm."])
    if not any(r.arm.state == Arm.State.ACTIVE for r in reports[1:]):
        return " ".join([*notes, "Every treatment is stopped; all traffic goes to the control: stop the experiment "
                                 "or promote the control."])
    smallest = min((r.primary.summary.n for r in reports if r.arm.state == Arm.State.ACTIVE), default=0)
    if horizon is not None and smallest >= horizon:
        return " ".join([*notes, f"No difference of {experiment.minimum_effect:.0%} or more found by the planned "
                                 f"{horizon} per arm (power {experiment.power:.0%}): keep the control and stop."])
    planned = f" of about {horizon} planned per arm" if horizon is not None else ""
    return " ".join([*notes, f"Collecting: {smallest} observations{planned}; no significant difference on "
                             f"{metric_label} yet (α {experiment.alpha:g}, looked at continuously)."])


def experiments_evaluate_running() -> int:
    """Beat: evaluates every running experiment; returns how many."""
    ids = list(Experiment.objects.filter(status=Experiment.Status.RUNNING).values_list("pk", flat=True))
    for experiment_id in ids:
        try:
            experiment_evaluate(experiment_id=experiment_id)
        except Exception:
            logger.exception("experiment %s: evaluation failed", experiment_id)
    return len(ids)
