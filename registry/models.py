from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models


class Tier(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    rank = models.IntegerField(unique=True, help_text="Higher rank = more access.")
    description = models.TextField(blank=True)
    default_model = models.ForeignKey(
        "LLMModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="default_for_tiers"
    )

    class Meta:
        ordering = ["rank"]

    def __str__(self) -> str:
        return self.name


class Provider(models.Model):
    slug = models.SlugField(unique=True)
    display_name = models.CharField(max_length=200)
    base_url = models.URLField(max_length=500)
    api_key_encrypted = models.TextField(blank=True, editable=False)
    api_key_last4 = models.CharField(max_length=4, blank=True, editable=False)
    timeout_seconds = models.FloatField(default=60.0, validators=[MinValueValidator(0.1)])
    connect_timeout_seconds = models.FloatField(default=5.0, validators=[MinValueValidator(0.1)])
    extra_headers = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.display_name


class LLMModel(models.Model):
    public_id = models.SlugField(max_length=100, unique=True, help_text="Stable id used by the API, e.g. gpt-5-pro.")
    display_name = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200, help_text="Model name sent to the upstream.")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    base_url = models.URLField(max_length=500, blank=True, help_text="Overrides the provider's base URL.")
    api_key_encrypted = models.TextField(blank=True, editable=False)
    api_key_last4 = models.CharField(max_length=4, blank=True, editable=False)
    allowed_tiers = models.ManyToManyField(Tier, related_name="models", blank=True)
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False, help_text="The global default model.")
    supports_streaming = models.BooleanField(default=True)
    supports_json_mode = models.BooleanField(default=False)
    supports_tools = models.BooleanField(default=False)
    supports_vision = models.BooleanField(default=False)
    context_window = models.PositiveIntegerField(default=8192)
    input_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    output_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    fallbacks = models.ManyToManyField(
        "self", through="ModelFallback", symmetrical=False, related_name="fallback_for", blank=True
    )
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
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "hub API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"
