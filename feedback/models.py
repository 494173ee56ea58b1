"""Users' feedback on their requests' answers: explicit thumbs, and the implicit signal of a retry."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class Feedback(models.Model):
    """One signal per request (request ids are unique across users): a user's thumbs (`explicit`), or a retry of
    the same prompt soon after it (`implicit`, always -1, written by feedback/services.py:feedback_implicit_scan).
    A vote replaces whatever the request had; a retry never replaces a vote.

    The answering model and the task are copied from the usage row, so the signal outlives the raw log's retention."""

    class Source(models.TextChoices):
        EXPLICIT = "explicit", "Explicit (thumbs)"
        IMPLICIT = "implicit", "Implicit (retried soon after)"

    request_id = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    model_id = models.CharField(max_length=100, blank=True,
                                help_text="The usage row's answering model(s), comma-separated; blank: none answered.")
    task = models.CharField(max_length=32, help_text='"translation" or "generation" (feedback/selectors.py:task_of).')
    score = models.SmallIntegerField(choices=[(1, "👍 +1"), (-1, "👎 -1")])
    source = models.CharField(max_length=16, choices=Source.choices)
    comment = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "feedback"
        indexes = [
            # The router's per-user snapshot (feedback/selectors.py:preference_counts_refresh).
            models.Index(fields=["user", "updated_at"], name="feedback_user_updated_idx",
                         include=["task", "model_id", "score"]),
            models.Index(fields=["updated_at"], name="feedback_updated_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.score:+d} ({self.source})"


class FeedbackScanState(models.Model):
    """One row: how far `feedback_implicit_scan` has read the usage log, by row id (see the scan for the marks)."""

    scanned_id = models.BigIntegerField(default=0, help_text="Every log row up to this id has been scanned for good.")
    mark_id = models.BigIntegerField(default=0, help_text="The highest log id scanned at mark_at.")
    mark_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"scanned to id {self.scanned_id}"
