from django.core.exceptions import ValidationError
from django.db import models

from routing.policies import DEFAULT_PARAMS, POLICIES, TASKS


def routing_params_validate(value) -> None:
    if not isinstance(value, dict):
        raise ValidationError("Parameters are a JSON object.")
    unknown = set(value) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValidationError(f"Unknown parameters: {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(sorted(DEFAULT_PARAMS))}.")
    for name in ("success_floor",):
        if name in value and not (isinstance(value[name], int | float) and 0 <= value[name] <= 1):
            raise ValidationError(f"{name} is a number from 0 to 1.")
    for name in ("cost_cap_ratio", "confidence_z", "latency_objective_ms"):
        if value.get(name) is not None and not (isinstance(value[name], int | float) and value[name] > 0):
            raise ValidationError(f"{name} is a positive number.")
    if "max_candidates" in value and not (isinstance(value["max_candidates"], int) and 1 <= value["max_candidates"] <= 10):
        raise ValidationError("max_candidates is a whole number from 1 to 10.")
    if "models" in value and not (isinstance(value["models"], dict)
                                  and all(isinstance(v, str) for v in value["models"].values())):
        raise ValidationError('models maps task types to model ids: {"code": "qwen3-coder-plus"}.')


class RoutingPolicy(models.Model):
    """How requests of one tier (and task type) are routed when they name no model, and which candidate policy
    runs beside it in shadow mode. A blank task is the tier's policy for every task without its own row."""

    tier = models.ForeignKey("registry.Tier", on_delete=models.CASCADE, related_name="routing_policies")
    task = models.CharField(max_length=32, blank=True, choices=[(task, task) for task in TASKS],
                            help_text="Blank: every task type without a row of its own.")
    policy = models.CharField(max_length=32, choices=[(name, name) for name in POLICIES], default="default")
    shadow_policy = models.CharField(
        max_length=32, blank=True, choices=[(name, name) for name in POLICIES],
        help_text="Runs beside the live policy on real traffic, recording what it would have chosen (see "
                  "`manage.py routing_shadow_report`); blank: none.")
    params = models.JSONField(default=dict, blank=True, validators=[routing_params_validate], help_text=(
        'e.g. {"success_floor": 0.95, "latency_objective_ms": 2000, "cost_cap_ratio": 3, "max_candidates": 3, '
        '"models": {"code": "qwen3-coder-plus"}}. Shared by the live and the shadow policy.'))
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "routing policies"
        constraints = [models.UniqueConstraint(fields=["tier", "task"], name="routing_policy_per_tier_task")]

    def __str__(self) -> str:
        return f"{self.tier.slug}/{self.task or '*'}: {self.policy}"
