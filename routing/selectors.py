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
