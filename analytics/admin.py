from django.contrib import admin

from analytics.models import Recommendation


@admin.register(Recommendation)
class RecommendationAdmin(admin.ModelAdmin):
    """Read-only: recommendations are written by the hourly task (analytics/services.py)."""

    list_display = ("period", "task", "tier", "current_model", "recommended_model", "saving_percent")
    list_filter = ("task", "tier")
    readonly_fields = [field.name for field in Recommendation._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
