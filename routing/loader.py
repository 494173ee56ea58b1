"""A tier's routing policy in the registry file: `tiers[i].routing` (what admin's *Routing policies* hold).

    "routing": {"policy": "cost", "shadow_policy": "performance", "params": {"success_floor": 0.97},
                "by_task": {"code": {"policy": "task", "params": {"models": {"code": "qwen3-coder-plus"}}}}}

The top level is the tier's row for every task without its own (task blank; absent `policy`: no such row), each
`by_task` entry a task's own row. Checked with the rest of the file (every problem by its JSON path, nothing
changed); applied in the load's transaction: a tier that declares `routing` gets exactly these rows (rows of other
tasks are deleted), a tier that does not keeps what admin set. Loading the same file twice changes nothing. The
registry knows the section only through `file_section_register`.
"""

from dataclasses import dataclass

from django.core.exceptions import ValidationError

from routing.models import routing_params_validate
from routing.policies import POLICIES, TASKS


@dataclass(frozen=True, slots=True)
class PolicyRow:
    policy: str
    shadow_policy: str
    params: dict


@dataclass(frozen=True, slots=True)
class TierRouting:
    tier: str
    rows: dict[str, PolicyRow]  # task ("" = every task without its own) → its row


def _row(at: str, value: dict, problems: list[str]) -> PolicyRow | None:
    count = len(problems)
    for name in ("policy", "shadow_policy"):
        chosen = value.get(name)
        if chosen and chosen not in POLICIES:
            problems.append(f'{at}.{name}: unknown policy "{chosen}" (known: {", ".join(POLICIES)})')
    params = value.get("params", {})
    try:
        routing_params_validate(params)
    except ValidationError as error:
        problems.extend(f"{at}.params: {message}" for message in error.messages)
    if len(problems) > count or "policy" not in value:
        return None
    return PolicyRow(policy=value["policy"], shadow_policy=value.get("shadow_policy", ""), params=params)


def routing_section_parse(found: list[tuple[str, str, dict]], problems: list[str]) -> list[TierRouting]:
    """The tiers' `routing` values (the loader's (path, tier slug, value) each) as rows, or problems by path."""
    parsed = []
    for at, tier, value in found:
        rows = {}
        if (row := _row(at, value, problems)) is not None:
            rows[""] = row
        for task, item in value.get("by_task", {}).items():
            where = f"{at}.by_task.{task}"
            if task not in TASKS:
                problems.append(f'{where}: unknown task "{task}" (known: {", ".join(TASKS)})')
            elif (row := _row(where, item, problems)) is not None:
                rows[task] = row
        parsed.append(TierRouting(tier=tier, rows=rows))
    return parsed


def routing_section_sync(entries: list[TierRouting], problems: list[str]) -> list[tuple[str, str, str]]:
    """Makes each declaring tier's policy rows those of the file (inside `registry_sync`'s transaction)."""
    from registry.models import Tier
    from routing.models import RoutingPolicy

    states = []
    for entry in entries:
        tier = Tier.objects.get(slug=entry.tier)
        stored = {row.task: row for row in RoutingPolicy.objects.filter(tier=tier)}
        had_rows, changed = bool(stored), False
        for task, row in entry.rows.items():
            fields = {"policy": row.policy, "shadow_policy": row.shadow_policy, "params": row.params}
            current = stored.pop(task, None)
            if current is None:
                RoutingPolicy.objects.create(tier=tier, task=task, **fields)
                changed = True
            elif any(getattr(current, name) != value for name, value in fields.items()):
                for name, value in fields.items():
                    setattr(current, name, value)
                current.save()  # its signal invalidates the policy snapshot
                changed = True
        for leftover in stored.values():
            leftover.delete()
            changed = True
        states.append(("routing", entry.tier, "unchanged" if not changed else "updated" if had_rows else "created"))
    return states


def section_register() -> None:
    from registry.loader import file_section_register

    file_section_register("routing", parse=routing_section_parse, sync=routing_section_sync, per_tier=True)
