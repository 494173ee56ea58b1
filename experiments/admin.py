"""Experiments in admin: edit a draft and its arms, start or stop it (actions); the page /experiments/<id>/ shows
the arms' metrics and the decision, and promotes."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from experiments.models import Arm, Experiment
from experiments.services import experiment_start, experiment_stop
from llmhub.errors import ApplicationError


class ArmInline(admin.TabularInline):
    model = Arm
    extra = 2
    fields = ("position", "name", "model_id", "template_ref", "params", "weight", "state", "reason")
    readonly_fields = ("state", "reason")

    # Changing arms or weights of a started experiment would move users between arms: only a draft's are edited.
    def get_readonly_fields(self, request: HttpRequest, obj: Experiment | None = None) -> tuple[str, ...]:
        return self.fields if obj is not None and obj.status != Experiment.Status.DRAFT else self.readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: Experiment | None = None) -> bool:
        return obj is None or obj.status == Experiment.Status.DRAFT

    def has_delete_permission(self, request: HttpRequest, obj: Experiment | None = None) -> bool:
        return obj is None or obj.status == Experiment.Status.DRAFT


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "status", "primary_metric", "prompt_name", "results", "evaluated_at")
    list_filter = ("status", "primary_metric")
    search_fields = ("key", "name", "prompt_name")
    readonly_fields = ("status", "decision", "evaluated_at", "started_at", "ended_at", "results")
    inlines = [ArmInline]
    actions = ["start", "stop"]
    fieldsets = (
        (None, {"fields": ("key", "name", "description", "prompt_name", "status", "results")}),
        ("Metric and test", {"fields": ("primary_metric", "alpha", "power", "minimum_effect", "min_samples",
                                        "auto_promote", "judge_model", "judge_sample_rate")}),
        ("Guardrails", {"fields": ("guardrail_cost_ratio", "guardrail_error_rate", "guardrail_min_requests")}),
        ("Decision", {"fields": ("decision", "evaluated_at", "started_at", "ended_at")}),
    )

    @admin.display(description="Results")
    def results(self, experiment: Experiment) -> str:
        if experiment.pk is None:
            return "-"
        return format_html('<a href="{}">Arms, metrics and decision</a>',
                           reverse("pages:experiment", args=[experiment.pk]))

    @admin.action(description="Start the selected experiments")
    def start(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        for experiment in queryset:
            try:
                experiment_start(experiment=experiment)
            except ApplicationError as error:
                self.message_user(request, f"Experiment {experiment.key}: {error.message}", messages.ERROR)
            else:
                self.message_user(request, f"Experiment {experiment.key} is running.", messages.SUCCESS)

    @admin.action(description="Stop the selected experiments")
    def stop(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        for experiment in queryset.filter(status__in=(Experiment.Status.RUNNING, Experiment.Status.PROMOTED)):
            experiment_stop(experiment=experiment)
            self.message_user(request, f"Experiment {experiment.key} is stopped.", messages.SUCCESS)
