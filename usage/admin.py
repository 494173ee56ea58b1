from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet, Sum
from django.http import HttpRequest

from usage.billing import EVENT_TYPES
from usage.models import BillingEvent, UsageLog, UsageRollup, WebhookDelivery, WebhookEndpoint
from usage.webhooks import (
    WebhookConfigError,
    webhook_deliveries_retry,
    webhook_endpoint_check,
    webhook_endpoint_save,
)


class RecentValuesFilter(admin.SimpleListFilter):
    """Choices from the newest rows only (read through the created_at index): a DISTINCT over the whole log, as
    Django's default filter runs on every page view, grows with the table."""

    sample = 5000

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        newest = UsageLog.objects.order_by("-created_at").values_list(self.parameter_name, flat=True)[: self.sample]
        return [(value, value or "(none)") for value in sorted(set(newest))]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.parameter_name: value})


class EndpointFilter(RecentValuesFilter):
    title = "endpoint"
    parameter_name = "endpoint"


class AnsweredModelFilter(RecentValuesFilter):
    title = "answered model"
    parameter_name = "answered_model"


@admin.register(UsageLog)
class UsageLogAdmin(admin.ModelAdmin):
    """The usage log is append-only: staff may read it, never add, change or delete a row.

    Every query of the list stays bounded at any size of the log: no date drill-down (its year and month
    aggregation read every row), fixed date ranges instead; filter choices from the newest rows; no full count."""

    # Every column in view at 1280 px; the request id is searched for, and shown on the row's page.
    list_display = ("created_at", "user", "endpoint", "answered_model", "outcome", "tokens", "cost_shown", "latency")
    list_filter = ("created_at", "status", EndpointFilter, AnsweredModelFilter)
    search_fields = ("request_id",)
    list_select_related = ("user",)
    ordering = ("-created_at",)
    show_full_result_count = False

    # Totals are summed only over a chosen date range: a sum over the whole log would read every row.
    TOTALS_NEED = "created_at__gte"

    @admin.display(description="Status", ordering="status")
    def outcome(self, obj: UsageLog) -> str:
        detail = f" · {obj.error_type}" if obj.error_type else ""
        return f"{obj.get_status_display().split(' (')[0]} · {obj.http_status}{detail}"

    @admin.display(description="Tokens in / out")
    def tokens(self, obj: UsageLog) -> str:
        return f"{obj.input_tokens:,} / {obj.output_tokens:,}{' (est.)' if obj.tokens_estimated else ''}"

    @admin.display(description="Cost", ordering="cost")
    def cost_shown(self, obj: UsageLog) -> str:
        return f"{obj.cost.normalize():f}"

    @admin.display(description="Latency", ordering="latency_ms")
    def latency(self, obj: UsageLog) -> str:
        ttft = f" (first token {obj.ttft_ms:,.0f})" if obj.ttft_ms is not None else ""
        return f"{obj.latency_ms:,.0f} ms{ttft}"

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            response.context_data["usage_totals"] = self._totals(request, changelist.queryset)
        return response

    def _totals(self, request: HttpRequest, queryset: QuerySet) -> dict | None:
        if self.TOTALS_NEED not in request.GET:
            return None
        totals = queryset.order_by().aggregate(requests=Count("id"), input_tokens=Sum("input_tokens"),
                                               output_tokens=Sum("output_tokens"), cost=Sum("cost"))
        totals["cost"] = f"{Decimal(totals['cost'] or 0).normalize():f}"
        return totals

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageLog | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageLog | None = None) -> bool:
        return False


@admin.register(UsageRollup)
class UsageRollupAdmin(admin.ModelAdmin):
    """Roll-ups are recomputed by the beat task (usage/rollups.py): read-only here."""

    list_display = ("bucket_start", "period", "user", "api_key", "tier", "endpoint", "answered_model", "status",
                    "requests", "errors", "input_tokens", "output_tokens", "cost")
    list_filter = ("period", "status", "tier", "endpoint", "answered_model")
    list_select_related = ("user", "api_key")
    ordering = ("-bucket_start",)
    date_hierarchy = "bucket_start"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageRollup | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageRollup | None = None) -> bool:
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class WebhookEndpointForm(forms.ModelForm):
    """The secret is write-only: never rendered, stored encrypted; the URL goes through the SSRF guard."""

    url = forms.URLField(max_length=2048, assume_scheme="https",  # a URL typed without a scheme is an https one
                         help_text=WebhookEndpoint._meta.get_field("url").help_text)
    secret = forms.CharField(
        required=False, strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only, at least 16 characters; receivers verify signatures with it "
                  "(e.g. `python -c \"import secrets; print(secrets.token_urlsafe(32))\"`).")
    event_types = forms.MultipleChoiceField(choices=[(name, name) for name in EVENT_TYPES],
                                            widget=forms.CheckboxSelectMultiple, initial=list(EVENT_TYPES))

    class Meta:
        model = WebhookEndpoint
        fields = ("name", "url", "secret", "event_types", "enabled")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.secret_encrypted:
            self.fields["secret"].help_text = ("A secret is stored. Leave blank to keep it; type a new one to replace "
                                               "it (required when the URL changes).")

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            # self.instance is still the stored endpoint here (the form copies its values onto it after clean()).
            cleaned["url"], cleaned["event_types"] = webhook_endpoint_check(
                endpoint=self.instance, url=cleaned["url"], secret=cleaned.get("secret") or None,
                event_types=cleaned["event_types"])
        except WebhookConfigError as error:
            self.add_error(error.extra["field"], error.message)
        return cleaned

    def save(self, commit: bool = True) -> WebhookEndpoint:
        # The service saves (WebhookEndpointAdmin.save_model): its checks are the ones that count.
        return super().save(commit=False)


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ("name", "url", "enabled", "event_types", "secret_stored", "updated_at")
    list_filter = ("enabled",)

    @admin.display(boolean=True, description="secret stored")
    def secret_stored(self, obj: WebhookEndpoint) -> bool:
        return bool(obj.secret_encrypted)

    def save_model(self, request: HttpRequest, obj: WebhookEndpoint, form: WebhookEndpointForm, change: bool) -> None:
        webhook_endpoint_save(endpoint=obj, secret=form.cleaned_data.get("secret") or None)


class WebhookDeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    extra = 0
    can_delete = False
    fields = readonly_fields = ("endpoint", "status", "attempts", "next_attempt_at", "delivered_at",
                                "response_status", "last_error")

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(BillingEvent)
class BillingEventAdmin(ReadOnlyAdmin):
    """The outbox: written by the quota back ends and the period-close task, read-only here."""

    list_display = ("created_at", "type", "event_id", "dispatched_at")
    list_filter = ("type",)
    search_fields = ("dedupe_key",)
    ordering = ("-created_at",)
    show_full_result_count = False
    fields = ("event_id", "type", "created_at", "dispatched_at", "dedupe_key", "payload")
    readonly_fields = fields
    inlines = [WebhookDeliveryInline]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("event", "endpoint", "status", "attempts", "last_attempt_at", "next_attempt_at",
                    "response_status", "last_error")
    list_filter = ("status", "endpoint")
    list_select_related = ("event", "endpoint")
    ordering = ("-pk",)
    show_full_result_count = False
    actions = ["retry_now"]

    @admin.action(description="Retry selected deliveries now")
    def retry_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = webhook_deliveries_retry(delivery_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{count} deliveries will be sent again within the next sweep.", messages.SUCCESS)
