from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from llmhub.errors import ConfigurationError
from registry.models import ApiKey, LLMModel, ModelFallback, Provider, Tier, UserProfile
from registry.services import (
    api_key_create,
    api_key_revoke,
    llm_models_set_enabled,
    secret_assign,
    secret_redirect_check,
)

User = get_user_model()


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


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "rank", "default_model")
    search_fields = ("slug", "name")
    ordering = ("rank",)


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = SecretKeyForm
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
    list_display = ("display_name", "public_id", "provider", "upstream_model", "enabled", "is_default", "tiers")
    list_filter = ("provider", "allowed_tiers", "enabled", "supports_streaming", "supports_tools")
    search_fields = ("public_id", "display_name", "upstream_model")
    filter_horizontal = ("allowed_tiers",)
    inlines = (ModelFallbackInline,)
    actions = ("enable_models", "disable_models")
    fieldsets = (
        (None, {"fields": ("public_id", "display_name", "upstream_model", "provider", "enabled", "is_default")}),
        ("Endpoint", {"fields": ("base_url", "api_key", "clear_api_key")}),
        ("Access", {"fields": ("allowed_tiers",)}),
        ("Capabilities", {"fields": ("supports_streaming", "supports_json_mode", "supports_tools", "supports_vision",
                                     "context_window")}),
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
        fields = ("user", "name")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "user", "created_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__username")
    readonly_fields = ("prefix", "created_at", "revoked_at")
    actions = ("revoke_keys",)
    autocomplete_fields = ("user",)

    def get_form(self, request: HttpRequest, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request: HttpRequest, obj=None):
        return ("user", "name") if obj is None else ("user", "name", "prefix", "created_at", "revoked_at")

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            obj.save(update_fields=["name"])
            return
        created, raw_key = api_key_create(user=form.cleaned_data["user"], name=form.cleaned_data["name"])
        form.instance = obj = created
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
    inlines = (UserProfileInline,)
    list_filter = (*UserAdmin.list_filter, "llm_profile__tier")
