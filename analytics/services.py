"""Model recommendations: a cheaper model for a task and tier, with its evidence, written once per day.

The rule, for each task type and tier, over the last `WINDOW` (the roll-ups, as analytics/selectors.py reads them):
1. The tier's current model for the task is the one that answered most of the tier's requests of that task; it needs
   at least `min_requests` of them.
2. A candidate is any other enabled registry chat model the tier may use, with at least `min_requests` requests of
   the task (from every tier: a model's success and latency do not depend on who calls it).
3. It qualifies when, on the task's requests of every tier, it costs at least `min_saving_percent` less per 1,000
   requests, succeeds at the same rate or better, and its p95 latency is at most `latency_tolerance_percent` above
   the current model's.
4. The qualifying candidate with the largest saving is recommended: one `Recommendation` row per (day, task, tier)
   and, in the same transaction, one `recommendation.created` billing event. A rerun on the same day writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from analytics.models import Recommendation
from analytics.selectors import TASKS, Stats, analytics_grouped, stats_fold, window_get
from registry.selectors import ModelSpec, registry_get
from usage.billing import RECOMMENDATION_CREATED, BillingEventEntry, billing_events_insert
from usage.rollups import local_date

WINDOW = "7d"
DEFAULTS = {"MIN_REQUESTS": 100, "MIN_SAVING_PERCENT": 10, "LATENCY_TOLERANCE_PERCENT": 20}


@dataclass(frozen=True, slots=True)
class Rule:
    min_requests: int
    min_saving_percent: Decimal
    latency_tolerance_percent: Decimal

    @classmethod
    def configured(cls) -> Rule:
        def value(name: str):
            return settings.LLMHUB.get(f"ANALYTICS_RECOMMENDATION_{name}", DEFAULTS[name])

        return cls(min_requests=int(value("MIN_REQUESTS")),
                   min_saving_percent=Decimal(str(value("MIN_SAVING_PERCENT"))),
                   latency_tolerance_percent=Decimal(str(value("LATENCY_TOLERANCE_PERCENT"))))


@dataclass(frozen=True, slots=True)
class Finding:
    task: str
    tier: str
    current: str
    recommended: str
    saving_percent: Decimal
    evidence: dict
    message: str


def _evidence_of(stats: Stats) -> dict:
    return {"requests": stats.requests, "success_rate": stats.success_rate, "latency_p95_ms": stats.latency_ms(0.95),
            "cost_per_1k_requests": str(stats.cost_per_1k_requests.quantize(Decimal("0.000001")))}


def _qualifies(current: Stats, candidate: Stats, rule: Rule) -> Decimal | None:
    """The candidate's saving in percent when it meets the rule against the current model, else None."""
    if candidate.requests < rule.min_requests or not current.cost_per_1k_requests:
        return None
    saving = (1 - candidate.cost_per_1k_requests / current.cost_per_1k_requests) * 100
    if saving < rule.min_saving_percent or candidate.success_rate < current.success_rate:
        return None
    current_p95, candidate_p95 = current.latency_ms(0.95), candidate.latency_ms(0.95)
    if current_p95 is not None and (candidate_p95 is None or Decimal(str(candidate_p95)) > Decimal(
            str(current_p95)) * (1 + rule.latency_tolerance_percent / 100)):
        return None
    return saving.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def recommendations_find(*, now: datetime | None = None, rule: Rule | None = None) -> list[Finding]:
    """What the rule (see the module) recommends now, per task and tier. Reads only."""
    rule = rule or Rule.configured()
    registry = registry_get()
    window = window_get(WINDOW, now=now)
    models = [model for model in registry.models.values() if model.kind == "chat"]
    grouped = analytics_grouped(window=window, models=models)
    by_task_model = stats_fold(grouped, by=(2, 1))
    by_tier_task_model = stats_fold(grouped, by=(3, 2, 1))
    findings = []
    for tier in sorted(registry.tiers.values(), key=lambda tier: tier.rank):
        for task in TASKS:
            used = {key[2]: stats for key, stats in by_tier_task_model.items() if key[:2] == (tier.slug, task)}
            if not used:
                continue
            current_id, current_tier_stats = max(used.items(), key=lambda item: (item[1].requests, item[0]))
            if current_tier_stats.requests < rule.min_requests or current_id not in registry.models:
                continue
            current = by_task_model[(task, current_id)]
            best: tuple[Decimal, ModelSpec, Stats] | None = None
            for model in models:
                if model.id == current_id or not model.enabled or not model.allows(tier):
                    continue
                candidate = by_task_model.get((task, model.id))
                saving = _qualifies(current, candidate, rule) if candidate else None
                if saving is not None and (best is None or saving > best[0]):
                    best = (saving, model, candidate)
            if best is None:
                continue
            saving, model, candidate = best
            evidence = {
                "window": {"key": window.key, "start": window.start.isoformat(), "end": window.now.isoformat()},
                "tier_requests_of_current": current_tier_stats.requests,
                "current": {"model": current_id, **_evidence_of(current)},
                "recommended": {"model": model.id, **_evidence_of(candidate)},
                "rule": {"min_requests": rule.min_requests, "min_saving_percent": str(rule.min_saving_percent),
                         "latency_tolerance_percent": str(rule.latency_tolerance_percent)},
            }
            p95 = candidate.latency_ms(0.95)
            message = (f"{task} for tier {tier.slug}: model {model.id} is {saving}% cheaper per 1,000 requests than "
                       f"{current_id} at the same or better success rate ({_percent(candidate.success_rate)} vs "
                       f"{_percent(current.success_rate)}) and p95 latency within {rule.latency_tolerance_percent}% "
                       f"({'–' if p95 is None else f'{p95:,.0f} ms'} vs "
                       f"{'–' if current.latency_ms(0.95) is None else f'{current.latency_ms(0.95):,.0f} ms'}), "
                       f"over {current.requests + candidate.requests:,} requests in the last {window.key}.")
            findings.append(Finding(task=task, tier=tier.slug, current=current_id, recommended=model.id,
                                    saving_percent=saving, evidence=evidence, message=message))
    return findings


def recommendations_update(*, now: datetime | None = None, rule: Rule | None = None) -> int:
    """Writes today's recommendations (one per task and tier at most) and their billing events; returns how many it
    wrote. Idempotent per day: a rerun, or two runs at once, write each once."""
    now = now or timezone.now()
    period = local_date(now)
    written = 0
    for finding in recommendations_find(now=now, rule=rule):
        with transaction.atomic():
            recommendation, created = Recommendation.objects.get_or_create(
                period=period, task=finding.task, tier=finding.tier,
                defaults={"current_model": finding.current, "recommended_model": finding.recommended,
                          "saving_percent": finding.saving_percent, "message": finding.message,
                          "evidence": finding.evidence, "created_at": now})
            if not created:
                continue
            billing_events_insert([BillingEventEntry(
                type=RECOMMENDATION_CREATED,
                dedupe_key=f"{RECOMMENDATION_CREATED}:{period.isoformat()}:{finding.task}:{finding.tier}",
                payload={"recommendation_id": recommendation.pk, "period": period.isoformat(), "task": finding.task,
                         "tier": finding.tier, "current_model": finding.current,
                         "recommended_model": finding.recommended, "saving_percent": str(finding.saving_percent),
                         "message": finding.message, "evidence": finding.evidence},
                created_at=now)])
            written += 1
    return written
