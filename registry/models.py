from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models


class StoredKey(models.Model):
    """An upstream API key, Fernet-encrypted (llmhub.crypto); only its last 4 characters are ever shown."""

    api_key_encrypted = models.TextField(blank=True, editable=False)
    api_key_last4 = models.CharField(max_length=4, blank=True, editable=False)

    class Meta:
        abstract = True


class ModelTraits(models.Model):
    """What a model can do and what it costs: the same for registry models and users' own."""

    supports_streaming = models.BooleanField(default=True)
    supports_json_mode = models.BooleanField(default=False)
    supports_tools = models.BooleanField(default=False)
    supports_vision = models.BooleanField(default=False)
    context_window = models.PositiveIntegerField(default=8192)
    input_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    output_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, default=0)

    class Meta:
        abstract = True


class Tier(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    rank = models.IntegerField(unique=True, help_text="Higher rank = more access.")
    description = models.TextField(blank=True)
    default_model = models.ForeignKey(
        "LLMModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="default_for_tiers"
    )
    max_own_models = models.PositiveIntegerField(
        null=True, blank=True, help_text="How many models of their own a member may add; blank = no cap."
    )
    own_models_metered = models.BooleanField(
        default=False, help_text="Users' own models count toward token and cost limits too (requests always count)."
    )

    class Meta:
        ordering = ["rank"]

    def __str__(self) -> str:
        return self.name


class Provider(StoredKey):
    slug = models.SlugField(unique=True)
    display_name = models.CharField(max_length=200)
    base_url = models.URLField(max_length=500)
    timeout_seconds = models.FloatField(default=60.0, validators=[MinValueValidator(0.1)])
    connect_timeout_seconds = models.FloatField(default=5.0, validators=[MinValueValidator(0.1)])
    extra_headers = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.display_name


def request_params_validate(value: object) -> None:
    """The shape of a model's `request_params` (the registry file's JSON Schema says the same)."""
    from registry.params import request_params_problems

    problems = request_params_problems(value)
    if problems:
        raise ValidationError(problems)


class LLMModel(StoredKey, ModelTraits):
    class Kind(models.TextChoices):
        CHAT = "chat"
        EMBEDDING = "embedding"
    class Api(models.TextChoices):
        CHAT = "chat", "Chat Completions (/chat/completions)"
        RESPONSES = "responses", "Responses (/responses)"

    # The registry file's id rule (fixtures/llm_models.schema.json): a slug that may hold dots, as `deepseek-v3.2`.
    public_id = models.CharField(max_length=100, unique=True, validators=[RegexValidator(
        r"^[a-z0-9][a-z0-9._-]*\Z",
        "Use lower-case letters, digits, dots, dashes and underscores, starting with a letter or digit.",
    )], help_text="Stable id used by the API, e.g. gpt-5-pro or gpt-4.1.")
    display_name = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200, help_text="Model name sent to the upstream.")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    base_url = models.URLField(max_length=500, blank=True, help_text="Overrides the provider's base URL.")
    api = models.CharField(max_length=16, choices=Api.choices, default=Api.CHAT, help_text=(
        "The upstream API the model is served on. Requests in the other API are translated (generation/"
        "responses_bridge.py): GPT-5 Pro, for one, is served only on /responses."))
    allowed_tiers = models.ManyToManyField(Tier, related_name="models", blank=True)
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False, help_text="The global default model.")
    fallbacks = models.ManyToManyField(
        "self", through="ModelFallback", symmetrical=False, related_name="fallback_for", blank=True
    )
    fallbacks_auto = models.BooleanField(
        default=False, verbose_name="Automatic fallbacks", help_text=(
            "Fall back to equivalent models (the same capabilities or more, allowed to the caller's tier, healthy), "
            "ordered by the tier's routing policy, instead of the hand-written list below."))
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CHAT,
                            help_text="chat: /v1/chat/completions (and /v1/completions); embedding: /v1/embeddings.")
    request_params = models.JSONField(
        default=dict, blank=True, validators=[request_params_validate],
        help_text='How requests are adapted to this model: {"unsupported": ["temperature"], '
                  '"renamed": {"max_tokens": "max_completion_tokens"}, "on_unsupported": "drop" or "refuse"}.')
    from_fixture = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider__slug", "display_name"]
        verbose_name = "LLM model"
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_global_default_model"
            )
        ]

    def __str__(self) -> str:
        return self.display_name


class ModelFallback(models.Model):
    model = models.ForeignKey(LLMModel, on_delete=models.CASCADE, related_name="fallback_links")
    fallback = models.ForeignKey(LLMModel, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["model", "fallback"], name="unique_fallback")]


class UserProfile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="llm_profile")
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="members")

    def __str__(self) -> str:
        return f"{self.user} ({self.tier})"


class ApiKey(models.Model):
    """A hub API key. Only its SHA-256 is stored; the key itself is shown once, when created."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="hub_api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Refused from this moment on; blank = never.")
    # Written at most once a minute per key, off the request path (registry/key_usage.py): accurate to that.
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "hub API key"
        indexes = [models.Index(fields=["user", "-created_at"], name="apikey_user_created")]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class UserLLMConfig(StoredKey, ModelTraits):
    """A model a user brought: their endpoint and key, usable only by them."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="llm_configs")
    slug = models.SlugField(max_length=100, help_text="The id the owner uses in API calls.")
    display_name = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200)
    base_url = models.URLField(max_length=500)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["owner_id", "slug"]
        verbose_name = "user model"
        constraints = [models.UniqueConstraint(fields=["owner", "slug"], name="unique_user_model_slug")]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.owner})"


class UserModelPreferences(models.Model):
    """A user's default model, default per task type, and favourites (model ids: registry or own)."""

    TASK_TYPES = ("generation", "translation", "code")

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="llm_preferences")
    default_model = models.CharField(max_length=100, blank=True)
    task_defaults = models.JSONField(default=dict, blank=True)
    favourites = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "user model preferences"


class QuotaLimit(models.Model):
    """One limit of a tier, of one user (overriding their tier's limit of the same metric, period and model), or
    of one hub API key (on top of its owner's; never above them). Enforced by usage.quotas."""

    class Metric(models.TextChoices):
        REQUESTS = "requests"
        TOKENS = "tokens"
        COST = "cost"

    class Period(models.TextChoices):
        MINUTE = "minute"
        HOUR = "hour"
        DAY = "day"
        MONTH = "month"

    tier = models.ForeignKey(Tier, null=True, blank=True, on_delete=models.CASCADE, related_name="limits")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                             related_name="llm_limits")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="limits")
    metric = models.CharField(max_length=16, choices=Metric.choices)
    period = models.CharField(max_length=16, choices=Period.choices)
    limit = models.DecimalField(
        max_digits=20, decimal_places=6, null=True, blank=True, validators=[MinValueValidator(0)],
        help_text="Requests or tokens (whole numbers), or cost in the models' price currency. Blank (user overrides "
                  "only) lifts the tier's limit of the same metric, period and model.",
    )
    model = models.CharField(max_length=100, blank=True, help_text="A model id to limit only that model; blank = all.")

    class Meta:
        ordering = ["metric", "period", "model"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(tier__isnull=False, user__isnull=True, api_key__isnull=True)
                | models.Q(tier__isnull=True, user__isnull=False, api_key__isnull=True)
                | models.Q(tier__isnull=True, user__isnull=True, api_key__isnull=False),
                name="quota_limit_has_one_owner",
            ),
            *(models.UniqueConstraint(fields=[owner, "metric", "period", "model"], condition=models.Q(
                **{f"{owner}__isnull": False}), name=f"unique_{owner}_quota_limit") for owner in ("tier", "user", "api_key")),
        ]

    def __str__(self) -> str:
        scope = f" of {self.model}" if self.model else ""
        value = "unlimited" if self.limit is None else format(self.limit.normalize(), "f")
        return f"{self.metric}{scope} per {self.period}: {value}"
