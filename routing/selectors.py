"""Reads of the routing policies, served from an in-memory snapshot (no query once warm)."""

from collections.abc import Mapping

from llmhub.snapshot import LocalSnapshot
from routing.policies import DEFAULT_POLICY, PolicySpec

Plan = tuple[PolicySpec, PolicySpec | None]  # the live policy and the shadow one (or None)
NO_PLAN: Plan = (DEFAULT_POLICY, None)


def _policies_build() -> Mapping[tuple[str, str], Plan]:
    from routing.models import RoutingPolicy

    plans = {}
    for row in RoutingPolicy.objects.select_related("tier"):
        params = dict(row.params or {})
        shadow = PolicySpec(row.shadow_policy, params) if row.shadow_policy else None
        plans[(row.tier.slug, row.task)] = (PolicySpec(row.policy, params), shadow)
    return plans


policies_snapshot: LocalSnapshot[Mapping[tuple[str, str], Plan]] = LocalSnapshot("routing-policies", _policies_build)


async def arouting_plan(tier_slug: str, task: str) -> Plan:
    """The tier's policy for the task (its row, else the tier's row for every task, else "default")."""
    plans = await policies_snapshot.aget()
    return plans.get((tier_slug, task)) or plans.get((tier_slug, "")) or NO_PLAN


def routing_plan(tier_slug: str, task: str) -> Plan:
    plans = policies_snapshot.get()
    return plans.get((tier_slug, task)) or plans.get((tier_slug, "")) or NO_PLAN


SHADOW_REPORT_MAX_ROWS = 100_000


def shadow_report(*, hours: float = 24.0) -> list[dict]:
    """Live policy against its shadow over the last `hours`, per tier and pair of policies: requests compared, how
    often they chose the same model, and the expected cost and latency of each one's choices (the expectations at
    the time, as the usage rows recorded them). Reads at most the newest SHADOW_REPORT_MAX_ROWS rows."""
    from datetime import timedelta

    from django.utils import timezone

    from usage.models import UsageLog

    since = timezone.now() - timedelta(hours=hours)
    rows = (UsageLog.objects.filter(created_at__gte=since, route__has_key="shadow").order_by("-created_at")
            .values_list("tier", "route")[:SHADOW_REPORT_MAX_ROWS])
    groups: dict[tuple[str, str, str], dict] = {}
    for tier, route in rows.iterator():
        shadow = route.get("shadow") or {}
        group = groups.setdefault((tier, route.get("policy", ""), shadow.get("policy", "")), {
            "requests": 0, "agree": 0, "live_cost": 0.0, "shadow_cost": 0.0, "live_latency": 0.0,
            "shadow_latency": 0.0, "latencies": 0})
        group["requests"] += 1
        group["agree"] += bool(shadow.get("agree"))
        group["live_cost"] += shadow.get("live_cost") or 0.0
        group["shadow_cost"] += shadow.get("cost") or 0.0
        if shadow.get("live_latency_ms") is not None and shadow.get("latency_ms") is not None:
            group["latencies"] += 1
            group["live_latency"] += shadow["live_latency_ms"]
            group["shadow_latency"] += shadow["latency_ms"]
    report = []
    for (tier, live, shadow), group in sorted(groups.items()):
        count, latencies = group["requests"], group["latencies"] or 1
        report.append({
            "tier": tier, "live_policy": live, "shadow_policy": shadow, "requests": count,
            "agreement": round(group["agree"] / count, 4),
            "live_expected_cost": round(group["live_cost"], 8), "shadow_expected_cost": round(group["shadow_cost"], 8),
            "cost_change": round(group["shadow_cost"] / group["live_cost"] - 1, 4) if group["live_cost"] else None,
            "live_expected_latency_ms": round(group["live_latency"] / latencies, 1),
            "shadow_expected_latency_ms": round(group["shadow_latency"] / latencies, 1),
        })
    return report
