from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db import models
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from llmhub.errors import ConfigurationError
from registry.limits import LimitSpec, api_key_limits_problems, limit_problems, limits_build
from registry.models import (
    ApiKey,
    LLMModel,
    ModelFallback,
    Provider,
    QuotaLimit,
    Tier,
    UserLLMConfig,
    UserProfile,
)
from registry.services import (
    api_key_create,
    api_key_revoke,
    llm_models_set_enabled,
    secret_assign,
    secret_redirect_check,
    user_tier_resolve,
)
from registry.validators import header_name_validator, header_value_validator

User = get_user_model()
admin.site.site_header = "llmhub administration"
admin.site.site_title = "llmhub admin"
admin.site.index_title = "Registry, users, keys and usage"
admin.site.enable_nav_sidebar = False  # the breadcrumbs lead back; the lists get the whole width
# A base URL typed without a scheme is an https one (also Django 6's default).
URLS_ASSUME_HTTPS = {models.URLField: {"assume_scheme": "https"}}


class SecretKeyForm(forms.ModelForm):
    """The key is write-only: the form never renders it; only its last 4 characters are shown."""

    api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave blank to keep the stored key.",
    )
    clear_api_key = forms.BooleanField(required=False, label="Remove the stored key")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.api_key_encrypted:
            last4 = self.instance.api_key_last4
            self.fields["api_key"].help_text = f"A key is stored{f' (…{last4})' if last4 else ''}. " \
                "Leave blank to keep it; type a new one to replace it."

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.instance.pk and {"base_url", "provider"} & set(self.changed_data):
            try:
                secret_redirect_check(
                    instance=self.instance,
                    base_url=cleaned.get("base_url") or "",
                    provider=cleaned.get("provider"),
                    new_key_given=bool(cleaned.get("api_key")),
                    key_cleared=bool(cleaned.get("clear_api_key")),
                )
            except ConfigurationError as error:
                self.add_error(error.extra["field"], error.message)
        return cleaned

    def save(self, commit: bool = True):
        instance = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            secret_assign(instance, "")
        elif self.cleaned_data.get("api_key"):
            secret_assign(instance, self.cleaned_data["api_key"])
        if commit:
            instance.save()
            self.save_m2m()
        return instance


class ProviderForm(SecretKeyForm):
    def clean_extra_headers(self) -> dict[str, str]:
        # Sent with every upstream call: anything but a mapping of strings would break the registry for everyone.
        headers = self.cleaned_data.get("extra_headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise forms.ValidationError('Enter a JSON object of header names to string values, e.g. {"X-Team": "a"}.')
        for name, value in headers.items():
            header_name_validator(name)
            header_value_validator(value)
        return headers


class QuotaLimitForm(forms.ModelForm):
    """Whole numbers for requests and tokens; a blank limit only where the inline allows lifting one."""

    lifting_allowed = False

    def clean(self) -> dict:
        cleaned = super().clean()
        metric = cleaned.get("metric")
        if metric and "limit" not in self.errors:
            _, problems = limit_problems(metric=metric, limit=cleaned.get("limit"), where="limit",
                                         lifting_allowed=self.lifting_allowed)
            for problem in problems:
                self.add_error("limit", problem.removeprefix("limit: ").capitalize() + ".")
        return cleaned


class LiftingQuotaLimitForm(QuotaLimitForm):
    lifting_allowed = True


class QuotaLimitInline(admin.TabularInline):
    model = QuotaLimit
    form = QuotaLimitForm
    extra = 0
    fields = ("metric", "period", "limit", "model")
    verbose_name = "quota limit"
    verbose_name_plural = "quota limits (periods are calendar-aligned in TIME_ZONE; no limits = unlimited)"


class TierQuotaLimitInline(QuotaLimitInline):
    fk_name = "tier"


class UserQuotaLimitInline(QuotaLimitInline):
    """Overrides of the user's tier limits: same metric, period and model replaces it; a blank limit lifts it."""

    fk_name = "user"
    form = LiftingQuotaLimitForm
    verbose_name_plural = "quota overrides (replace the tier's limit of the same metric, period and model; " \
                          "a blank limit lifts it)"


class ApiKeyQuotaLimitFormSet(forms.BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        if any(self.errors) or self.instance.pk is None:
            return
        wanted = [LimitSpec(form.cleaned_data["metric"], form.cleaned_data["period"], form.cleaned_data.get("limit"),
                            form.cleaned_data.get("model") or "")
                  for form in self.forms if form.cleaned_data and not form.cleaned_data.get("DELETE")]
        owner = self.instance.user
        owner_limits = limits_build().owner_limits(tier_slug=user_tier_resolve(user=owner).slug, user_id=owner.pk)
        problems = api_key_limits_problems(owner_limits=owner_limits, key_limits=wanted)
        if problems:
            raise forms.ValidationError(["A key's limits cannot be above its owner's.", *problems])


class ApiKeyQuotaLimitInline(QuotaLimitInline):
    """The key's own limits, counted per key, on top of its owner's."""

    fk_name = "api_key"
    formset = ApiKeyQuotaLimitFormSet
    verbose_name_plural = "the key's own quota limits (counted per key; never above its owner's)"


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "rank", "default_model", "max_own_models")
    inlines = (TierQuotaLimitInline,)
    search_fields = ("slug", "name")
    ordering = ("rank",)


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    formfield_overrides = URLS_ASSUME_HTTPS
    list_display = ("display_name", "slug", "base_url", "key_stored")
    search_fields = ("slug", "display_name", "base_url")
    fields = ("slug", "display_name", "base_url", "api_key", "clear_api_key", "timeout_seconds",
              "connect_timeout_seconds", "extra_headers")

    @admin.display(boolean=True, description="Key stored")
    def key_stored(self, obj: Provider) -> bool:
        return bool(obj.api_key_encrypted)


class ModelFallbackInline(admin.TabularInline):
    model = ModelFallback
    fk_name = "model"
    extra = 0
    ordering = ("position",)
    autocomplete_fields = ("fallback",)


@admin.register(LLMModel)
class LLMModelAdmin(admin.ModelAdmin):
    form = SecretKeyForm
    # What matters at a glance, all in view at 1280 px (the upstream name is on the model's page, and searchable).
    list_display = ("display_name", "public_id", "provider", "enabled", "is_default", "tiers")
    list_filter = ("provider", "kind", "api", "allowed_tiers", "enabled", "supports_streaming", "supports_tools")
    search_fields = ("public_id", "display_name", "upstream_model")
    # A handful of tiers: checkboxes, all in view (the two-list picker hides them behind a search).
    formfield_overrides = {**URLS_ASSUME_HTTPS, models.ManyToManyField: {"widget": forms.CheckboxSelectMultiple}}
    inlines = (ModelFallbackInline,)
    actions = ("enable_models", "disable_models")
    fieldsets = (
        (None, {"fields": ("public_id", "display_name", "upstream_model", "provider", "kind", "enabled",
                           "is_default")}),
        ("Endpoint", {"fields": ("base_url", "api", "api_key", "clear_api_key")}),
        ("Access", {"fields": ("allowed_tiers", "fallbacks_auto")}),
        ("Capabilities", {"fields": ("supports_streaming", "supports_json_mode", "supports_tools", "supports_vision",
                                     "context_window", "request_params")}),
        ("Prices (per million tokens)", {"fields": ("input_price_per_million", "output_price_per_million")}),
    )

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("provider").prefetch_related("allowed_tiers")

    @admin.display(description="Tiers")
    def tiers(self, obj: LLMModel) -> str:
        return ", ".join(tier.slug for tier in obj.allowed_tiers.all())

    @admin.action(description="Enable selected models")
    def enable_models(self, request: HttpRequest, queryset) -> None:
        count = llm_models_set_enabled(model_ids=list(queryset.values_list("pk", flat=True)), enabled=True)
        self.message_user(request, f"Enabled {count} model(s).", messages.SUCCESS)

    @admin.action(description="Disable selected models")
    def disable_models(self, request: HttpRequest, queryset) -> None:
        count = llm_models_set_enabled(model_ids=list(queryset.values_list("pk", flat=True)), enabled=False)
        self.message_user(request, f"Disabled {count} model(s).", messages.SUCCESS)


class ApiKeyAddForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ("user", "name", "expires_at")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "user", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__username")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke_keys",)
    autocomplete_fields = ("user",)
    inlines = (ApiKeyQuotaLimitInline,)

    def get_inlines(self, request: HttpRequest, obj=None):
        return self.inlines if obj is not None else ()

    def get_form(self, request: HttpRequest, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request: HttpRequest, obj=None):
        return ("user", "name", "expires_at") if obj is None else (
            "user", "name", "expires_at", "prefix", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        # A key belongs to the user it was made for; only its label and expiry can change.
        return self.readonly_fields if obj is None else ("user", *self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            obj.save(update_fields=["name", "expires_at"])
            return
        created, raw_key = api_key_create(user=form.cleaned_data["user"], name=form.cleaned_data["name"],
                                          expires_at=form.cleaned_data["expires_at"])
        # The admin goes on to log and show `obj`, the instance it built from the form: make it the created row.
        obj.pk = created.pk
        obj.refresh_from_db()
        obj._state.adding = False
        # The raw key lives only on this request; response_add shows it once.
        request._llmhub_new_key = raw_key

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue=None) -> HttpResponse:
        context = {**self.admin_site.each_context(request), "api_key": obj, "raw_key": request._llmhub_new_key,
                   "opts": self.opts, "title": "API key created"}
        return TemplateResponse(request, "admin/registry/apikey_created.html", context)

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset) -> None:
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
        self.message_user(request, "Revoked.", messages.SUCCESS)


class UserProfileInline(admin.StackedInline):
    model = UserProfile
    can_delete = False
    verbose_name = "LLM tier"


admin.site.unregister(User)


@admin.register(User)
class LLMHubUserAdmin(UserAdmin):
    inlines = (UserProfileInline, UserQuotaLimitInline)
    list_filter = (*UserAdmin.list_filter, "llm_profile__tier")


@admin.register(UserLLMConfig)
class UserLLMConfigAdmin(admin.ModelAdmin):
    """Users' own models, for support: read-only but for `enabled` (their endpoint and key are their owner's)."""

    list_display = ("display_name", "slug", "owner", "upstream_model", "base_url", "enabled")
    list_filter = ("enabled",)
    search_fields = ("slug", "display_name", "upstream_model", "base_url", "owner__username")
    fields = ("owner", "slug", "display_name", "upstream_model", "base_url", "api_key_last4", "enabled",
              "supports_streaming", "supports_json_mode", "supports_tools", "supports_vision", "context_window",
              "input_price_per_million", "output_price_per_million", "created_at", "updated_at")
    readonly_fields = tuple(name for name in fields if name != "enabled")

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("owner")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
