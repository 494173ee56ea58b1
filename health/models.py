"""What is known about each model: its connectivity tests and its current status. The tables were made by the
registry app (health/migrations/0001 takes them over without touching them)."""

from django.conf import settings
from django.db import models


class ModelTest(models.Model):
    """One connectivity test of a registry model or a user model, and its result."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    llm_model = models.ForeignKey("registry.LLMModel", null=True, blank=True, on_delete=models.CASCADE,
                                  related_name="tests")
    user_model = models.ForeignKey("registry.UserLLMConfig", null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="tests")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    reachable = models.BooleanField(null=True)
    key_accepted = models.BooleanField(null=True)
    model_found = models.BooleanField(null=True)
    latency_ms = models.FloatField(null=True)
    capabilities = models.JSONField(default=dict, blank=True)
    error = models.CharField(max_length=300, blank=True, help_text="A generic message, never an upstream body.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "registry_modeltest"  # made by the registry app, before health had an app of its own
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(llm_model__isnull=False, user_model__isnull=True)
                | models.Q(llm_model__isnull=True, user_model__isnull=False),
                name="model_test_has_one_target",
            )
        ]
        indexes = [models.Index(fields=["llm_model", "-created_at"], name="registry_mo_llm_mod_ce46fd_idx"),
                   models.Index(fields=["user_model", "-created_at"], name="registry_mo_user_mo_4a136e_idx")]

    def __str__(self) -> str:
        target = self.llm_model if self.llm_model_id is not None else self.user_model
        return f"Test of {target} at {self.created_at:%Y-%m-%d %H:%M:%S} ({self.get_state_display().lower()})"


class ModelHealth(models.Model):
    """The current status of a model, derived from its tests and live traffic (see health.status)."""

    class Status(models.TextChoices):
        HEALTHY = "healthy"
        DEGRADED = "degraded"
        DOWN = "down"
        UNKNOWN = "unknown"

    llm_model = models.OneToOneField("registry.LLMModel", null=True, blank=True, on_delete=models.CASCADE,
                                     related_name="health")
    user_model = models.OneToOneField("registry.UserLLMConfig", null=True, blank=True, on_delete=models.CASCADE,
                                      related_name="health")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UNKNOWN)
    last_checked_at = models.DateTimeField(null=True)
    last_latency_ms = models.FloatField(null=True)
    live_failures = models.PositiveIntegerField(default=0, help_text="Consecutive failed live requests.")
    last_live_failure_at = models.DateTimeField(null=True)
    last_live_success_at = models.DateTimeField(null=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "registry_modelhealth"
