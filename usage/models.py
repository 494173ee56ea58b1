from django.conf import settings
from django.db import models
from django.utils import timezone


class UsageLog(models.Model):
    """One row per request through the hub, append-only.

    Written in batches by usage/writer.py, never on the response path. Models are kept as their public
    ids (strings), so the history survives a model being renamed or deleted.
    """

    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"
        PARTIAL = "partial", "Partial (stream cut after it started)"

    request_id = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="usage_logs")
    api_key = models.ForeignKey("registry.ApiKey", null=True, on_delete=models.SET_NULL, related_name="usage_logs")
    endpoint = models.CharField(max_length=64, help_text='e.g. "v1.chat_completions", "api.generate", "api.translate".')
    requested_model = models.CharField(max_length=100, blank=True)
    answered_model = models.CharField(max_length=100, blank=True, help_text="Blank when no model answered.")
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(
        default=False, help_text="Counted locally with tiktoken because the upstream reported no usage."
    )
    cost = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    latency_ms = models.FloatField()
    ttft_ms = models.FloatField(null=True, blank=True, help_text="Time to first token (streams).")
    status = models.CharField(max_length=16, choices=Status.choices)
    http_status = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=100, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    streamed = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["user", "created_at"], name="usage_user_created_idx")]

    def __str__(self) -> str:
        return self.request_id


class QuotaCounter(models.Model):
    """The embedded quota back end's counter of one limit in one period window (production keeps it in Redis).

    Amounts are integers: requests, tokens, or cost in units of 1e-10 (the usage log's precision). `held` is
    what requests in flight reserved; `refused` counts the requests this counter refused."""

    key = models.CharField(max_length=255, unique=True)
    used = models.BigIntegerField(default=0)
    held = models.BigIntegerField(default=0)
    refused = models.BigIntegerField(default=0)
    window_end = models.DateTimeField(db_index=True)


class QuotaHold(models.Model):
    """A reservation of one request on one counter, until it is settled (or expires: a crashed process leaks nothing)."""

    request_id = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    amount = models.BigIntegerField()
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["request_id", "key"], name="unique_quota_hold")]
        indexes = [models.Index(fields=["key", "expires_at"], name="quota_hold_key_expiry_idx")]
