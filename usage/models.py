import uuid

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
    tier = models.CharField(max_length=50, blank=True, default="", help_text="The caller's tier (slug) at the time.")
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
    attempt_details = models.JSONField(
        default=list, blank=True, help_text="Each attempt (at most the first 50): model, outcome, latency_ms, "
        "upstream_status, message (the generic text a client sees).")
    streamed = models.BooleanField(default=False)
    prompt_hash = models.CharField(
        max_length=32, blank=True, default="", help_text="A hash of the request's messages (feedback/: the same "
        "prompt sent again soon after is a retry, which counts against the earlier answer). Blank: not a chat.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    prompt_template = models.CharField(max_length=100, blank=True, default="",
                                       help_text="The prompt template the request was served with, if any.")
    prompt_version = models.PositiveIntegerField(null=True, blank=True, help_text="That template's version.")
    # The experiment arm that served the request (experiments app; a plain id, so usage depends on no experiment).
    experiment_id = models.PositiveIntegerField(null=True, blank=True)
    experiment_arm = models.CharField(max_length=50, blank=True, default="")
    route = models.JSONField(null=True, blank=True, help_text=(
        "How the request was routed: the policy, the winner and why, each other candidate and why it was skipped "
        "(tier, health, capability, context, quota, cost), and what the shadow policy would have chosen."))

    class Meta:
        indexes = [
            models.Index(fields=["user", "created_at"], name="usage_user_created_idx"),
            # Partial: the rows of no experiment (nearly all) cost the index nothing.
            models.Index(fields=["experiment_id", "experiment_arm"], name="usage_experiment_arm_idx",
                         condition=models.Q(experiment_id__isnull=False)),
        ]

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
    """The reservation of one request on all its counters, until it is settled (or expires: a crashed process leaks
    nothing). One row per request, whatever the number of counters: a decision inserts one row, a settle deletes it.

    `amounts` is "<counter key> <amount> <counter key> <amount> ..." (the counters of one owner, in key order);
    `expires_at` is in epoch milliseconds, so a decision formats no timestamp."""

    request_id = models.CharField(max_length=64, primary_key=True)
    amounts = models.TextField()
    expires_at = models.BigIntegerField(db_index=True)


class UsageRollup(models.Model):
    """The usage log summed per hour or per day (calendar-aligned in TIME_ZONE) and per user, API key, requested
    model, answering model, tier, endpoint, status and error type. Rows are recomputed from the log and replaced, never
    incremented (usage/rollups.py); they outlive the raw rows, which retention deletes.

    Latency and TTFT are fixed log-scale histograms (usage/histograms.py: a list of counts, the same bounds
    everywhere), so buckets merge by addition and percentiles come out of any merge.
    """

    class Period(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"

    period = models.CharField(max_length=8, choices=Period.choices)
    bucket_start = models.DateTimeField(help_text="The start of the hour or day, in TIME_ZONE.")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    api_key = models.ForeignKey("registry.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+")
    requested_model = models.CharField(max_length=100, blank=True)
    answered_model = models.CharField(max_length=100, blank=True)
    tier = models.CharField(max_length=50, blank=True)
    endpoint = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=UsageLog.Status.choices)
    error_type = models.CharField(max_length=100, blank=True, default="",
                                  help_text="The failure's kind (the log's error_type): model analytics count them.")
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0, help_text='Requests with status "error".')
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    latency_histogram = models.JSONField(help_text="Counts per bucket of usage/histograms.py (every request).")
    ttft_histogram = models.JSONField(help_text="Counts per bucket of usage/histograms.py (requests with a TTFT).")
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["period", "bucket_start"], name="usage_rollup_bucket_idx"),
            # Covering the usage page's read (one user's days by model and key): an index-only scan, never the wide
            # rows with their histograms.
            models.Index(fields=["user", "period", "bucket_start"], name="usage_rollup_user_cover_idx",
                         include=["answered_model", "api_key", "requests", "errors", "input_tokens",
                                  "output_tokens", "cost"]),
        ]

    def __str__(self) -> str:
        return f"{self.period} {self.bucket_start:%Y-%m-%d %H:%M} user {self.user_id}"


class UsageDaySummary(models.Model):
    """A daily bucket of the roll-ups summed over every dimension but one pair: per tier and answering model
    (`user` null) or per user (`tier` and `answered_model` blank, `per_user` true). Written with the day's roll-ups
    in the same transaction (usage/rollups.py), so the staff view reads a few thousand rows for any range rather
    than every user's every bucket."""

    bucket_start = models.DateTimeField(help_text="The start of the day, in TIME_ZONE.")
    per_user = models.BooleanField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    tier = models.CharField(max_length=50, blank=True)
    answered_model = models.CharField(max_length=100, blank=True)
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=24, decimal_places=10, default=0)

    class Meta:
        verbose_name_plural = "usage day summaries"
        indexes = [models.Index(fields=["per_user", "bucket_start"], name="usage_day_summary_idx",
                                include=["user", "tier", "answered_model", "requests", "errors", "input_tokens",
                                         "output_tokens", "cost"])]

    def __str__(self) -> str:
        return f"{self.bucket_start:%Y-%m-%d} {'user ' + str(self.user_id) if self.per_user else self.tier}"


class UsageRollupState(models.Model):
    """One row: how far the roll-ups have read the usage log, by row id (usage/rollups.py explains the marks)."""

    rolled_up_id = models.BigIntegerField(
        default=0, help_text="Every log row with an id up to this one is in the roll-ups for good.")
    mark_id = models.BigIntegerField(default=0, help_text="The highest log id seen at mark_at.")
    mark_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"rolled up to id {self.rolled_up_id}"


# --- Billing hooks (usage/billing.py, usage/webhooks.py) ----------------------------------------------------------

class BillingEvent(models.Model):
    """The outbox: one row per billing event, written in the same transaction as what caused it, then dispatched
    (a delivery per subscribed endpoint, and the `usage.signals.billing_event` signal) by the webhooks sweep.

    `dedupe_key` makes an event happen once (a threshold once per limit, period and owner; a closed period once
    per user); `public_id` is the id receivers de-duplicate by. The payload never holds a secret."""

    class Type(models.TextChoices):
        QUOTA_THRESHOLD = "quota.threshold", "quota.threshold"
        PERIOD_CLOSED = "usage.period_closed", "usage.period_closed"
        RECOMMENDATION_CREATED = "recommendation.created", "recommendation.created"
        BREAKER_OPENED = "model.breaker_opened", "model.breaker_opened"

    public_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=64, choices=Type.choices)
    dedupe_key = models.CharField(max_length=400, unique=True)
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    dispatched_at = models.DateTimeField(null=True, blank=True,
                                         help_text="When its deliveries were created and the signal sent.")

    class Meta:
        indexes = [models.Index(fields=["id"], condition=models.Q(dispatched_at__isnull=True),
                                name="billing_event_undispatched_idx")]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"

    @property
    def event_id(self) -> str:
        return f"evt_{self.public_id.hex}"


class WebhookEndpoint(models.Model):
    """Where billing events are POSTed, signed with the endpoint's secret (write-only, encrypted at rest)."""

    # Secrets under LLMHUB_ENCRYPTION_KEYS: `rotate_encryption_key` re-encrypts these fields too.
    encrypted_fields = ("secret_encrypted",)

    name = models.CharField(max_length=100)
    url = models.URLField(max_length=2048, help_text="https only (http for hosts on LLMHUB_SSRF_ALLOWLIST); "
                                                     "internal addresses are refused.")
    secret_encrypted = models.TextField(blank=True, editable=False)
    event_types = models.JSONField(default=list, help_text="The event types sent to this endpoint.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name


class WebhookDelivery(models.Model):
    """One event to one endpoint: attempted until the endpoint answers 2xx, with backoff, up to
    LLMHUB["WEBHOOK_MAX_ATTEMPTS"] times. A worker owns an attempt while `claimed_until` is in the future."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (attempts exhausted)"

    event = models.ForeignKey(BillingEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_until = models.DateTimeField(null=True, blank=True)
    queued_until = models.DateTimeField(null=True, blank=True,
                                        help_text="A task for it is queued: the sweep leaves it alone until then.")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_excerpt = models.CharField(max_length=200, blank=True)
    last_error = models.CharField(max_length=200, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        constraints = [models.UniqueConstraint(fields=["event", "endpoint"], name="unique_webhook_delivery")]
        indexes = [models.Index(fields=["next_attempt_at"], condition=models.Q(status="pending"),
                                name="webhook_delivery_due_idx")]

    def __str__(self) -> str:
        return f"{self.event} → {self.endpoint}"


class BillingState(models.Model):
    """One row: the last day whose `usage.period_closed` events are written (usage/billing.py)."""

    closed_through = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
