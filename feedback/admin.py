from django.contrib import admin

from feedback.models import Feedback


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    list_display = ("request_id", "user", "model_id", "task", "score", "source", "updated_at")
    list_filter = ("source", "score", "task")
    search_fields = ("request_id", "model_id")
    raw_id_fields = ("user",)
    readonly_fields = ("request_id", "user", "model_id", "task", "source", "created_at", "updated_at")
    date_hierarchy = "updated_at"
