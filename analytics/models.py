from django.db import models
from django.utils import timezone


class Recommendation(models.Model):
    """A cheaper model for a task and tier, with the evidence that it does as well (analytics/services.py): at most
    one per task, tier and period, written with its `recommendation.created` billing event."""

    period = models.DateField(help_text="The day (TIME_ZONE) the recommendation was made for.")
    task = models.CharField(max_length=32)
    tier = models.CharField(max_length=50)
    current_model = models.CharField(max_length=100, help_text="The model the tier uses most for the task.")
    recommended_model = models.CharField(max_length=100)
    saving_percent = models.DecimalField(max_digits=5, decimal_places=1,
                                         help_text="How much cheaper per 1,000 requests.")
    message = models.TextField()
    evidence = models.JSONField(help_text="Both models' figures over the window, and the rule's thresholds.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-period", "task", "tier"]
        constraints = [models.UniqueConstraint(fields=["period", "task", "tier"],
                                               name="recommendation_once_per_period")]

    def __str__(self) -> str:
        return f"{self.period} {self.task} {self.tier}: {self.recommended_model}"
