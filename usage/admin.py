from django.contrib import admin
from django.http import HttpRequest

from usage.models import UsageLog, UsageRollup


@admin.register(UsageLog)
class UsageLogAdmin(admin.ModelAdmin):
    """The usage log is append-only: staff may read it, never add, change or delete a row."""

    list_display = ("created_at", "request_id", "user", "endpoint", "answered_model", "status", "http_status",
                    "input_tokens", "output_tokens", "cost", "latency_ms")
    list_filter = ("status", "endpoint", "answered_model")
    search_fields = ("request_id",)
    list_select_related = ("user",)
    ordering = ("-created_at",)
    date_hierarchy = "created_at"
    # Counting every row of a large log on each page view is the slowest part of the changelist.
    show_full_result_count = False

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
