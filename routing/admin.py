from django.contrib import admin

from routing.models import RoutingPolicy


@admin.register(RoutingPolicy)
class RoutingPolicyAdmin(admin.ModelAdmin):
    list_display = ("tier", "task", "policy", "shadow_policy", "updated_at")
    list_filter = ("policy", "tier")
    fields = ("tier", "task", "policy", "shadow_policy", "params")
