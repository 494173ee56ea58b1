from decimal import Decimal

from django.contrib import admin
from django.db.models import Count, QuerySet, Sum
from django.http import HttpRequest

from usage.models import UsageLog, UsageRollup


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
