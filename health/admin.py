"""The health of registry models and users' models in their admin pages (health/admin.py extends registry's): a
status line and column, the recent connectivity tests, and the "Test connectivity" action."""

from django.contrib import admin, messages
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from health.breakers import breaker_reset
from health.model_tests import QueueUnavailable, model_test_start
from health.models import ModelTest
from health.status import HealthSpec, model_key_of, model_status_of
from registry.admin import LLMModelAdmin, UserLLMConfigAdmin
from registry.models import LLMModel, UserLLMConfig


class ModelTestInline(admin.TabularInline):
    """The model's recent connectivity tests, read-only (the history is trimmed by the scheduler)."""

    model = ModelTest
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-created_at",)
    fields = readonly_fields = ("created_at", "state", "reachable", "key_accepted", "model_found", "latency_ms",
                                "capabilities", "error", "finished_at")
    verbose_name_plural = "recent connectivity tests"

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class LLMModelTestInline(ModelTestInline):
    fk_name = "llm_model"


class UserModelTestInline(ModelTestInline):
    fk_name = "user_model"


def _breaker_words(health: HealthSpec) -> list[str]:
    breaker, words = health.breaker, []
    if breaker.state != "closed":
        words.append(f"circuit breaker {breaker.state.replace('_', '-')} since {breaker.since:%Y-%m-%d %H:%M:%S %Z}: "
                     f"{breaker.reason}")
    if breaker.cooled_until is not None:
        words.append(f"cooling down until {breaker.cooled_until:%H:%M:%S %Z} ({breaker.cool_reason})")
    return words


class ModelTestsAdminMixin:
    """The "Test connectivity" and "Reset circuit breaker" actions and the health line of registry models and
    users' models."""

    @admin.display(description="Health")
    def health_status(self, obj: LLMModel | UserLLMConfig) -> str:
        if obj.pk is None:
            return "-"
        health = model_status_of(obj)
        details = [health.status]
        if health.last_checked_at is not None:
            details.append(f"last tested {health.last_checked_at:%Y-%m-%d %H:%M:%S %Z}")
        if health.last_latency_ms is not None:
            details.append(f"{health.last_latency_ms:.0f} ms")
        return ", ".join([*details, *_breaker_words(health)])

    @admin.display(description="Health")
    def health_column(self, obj: LLMModel | UserLLMConfig) -> str:
        health = model_status_of(obj)
        latency = f" · {health.last_latency_ms:.0f} ms" if health.last_latency_ms is not None else ""
        breaker = health.breaker.state
        shown = f" · breaker {breaker.replace('_', '-')}" if breaker != "closed" else ""
        return format_html('<span class="llmhub-health" data-status="{}" data-breaker="{}" title="{}">{}{}{}</span>',
                           health.status, breaker, "; ".join(_breaker_words(health)), health.status, latency, shown)

    @admin.action(description="Reset circuit breaker")
    def reset_breaker(self, request: HttpRequest, queryset) -> None:
        for model in queryset:
            breaker_reset(model_key_of(model))
        self.message_user(request, "Circuit breakers reset: the models take traffic again.", messages.SUCCESS)

    @admin.action(description="Test connectivity")
    def test_connectivity(self, request: HttpRequest, queryset) -> None:
        target = "user_model" if queryset.model is UserLLMConfig else "llm_model"
        for model in queryset:
            try:
                test = model_test_start(**{target: model}, requested_by=request.user)
            except QueueUnavailable as error:
                self.message_user(request, error.message, messages.ERROR)
                return
            # The model's page lists its recent tests (an inline): the message links to them.
            results = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[model.pk])
            link = format_html('<a href="{}#tests-group">see the results</a>', results)
            if test.state == ModelTest.State.QUEUED:
                self.message_user(request, format_html("{}: test queued; {} once it has run.", model, link))
            elif test.state == ModelTest.State.SUCCEEDED:
                working = ", ".join(name for name, works in test.capabilities.items() if works) or "none"
                self.message_user(request, format_html("{}: answered in {} ms; works: {}; {}.", model,
                                                       f"{test.latency_ms:.0f}", working, link), messages.SUCCESS)
            else:
                self.message_user(request, format_html("{}: test failed ({}); {}.", model, test.error or test.state,
                                                       link), messages.WARNING)


def _after(names: tuple[str, ...], anchor: str, name: str) -> tuple[str, ...]:
    at = names.index(anchor) + 1
    return (*names[:at], name, *names[at:])


admin.site.unregister(LLMModel)
admin.site.unregister(UserLLMConfig)


@admin.register(LLMModel)
class LLMModelHealthAdmin(ModelTestsAdminMixin, LLMModelAdmin):
    list_display = (*LLMModelAdmin.list_display, "health_column")
    inlines = (*LLMModelAdmin.inlines, LLMModelTestInline)
    actions = (*LLMModelAdmin.actions, "test_connectivity", "reset_breaker")
    readonly_fields = (*LLMModelAdmin.readonly_fields, "health_status")
    fieldsets = (
        (LLMModelAdmin.fieldsets[0][0], {**LLMModelAdmin.fieldsets[0][1],
                                         "fields": (*LLMModelAdmin.fieldsets[0][1]["fields"], "health_status")}),
        *LLMModelAdmin.fieldsets[1:],
    )


@admin.register(UserLLMConfig)
class UserLLMConfigHealthAdmin(ModelTestsAdminMixin, UserLLMConfigAdmin):
    list_display = (*UserLLMConfigAdmin.list_display, "health_column")
    inlines = (*UserLLMConfigAdmin.inlines, UserModelTestInline)
    actions = (*(UserLLMConfigAdmin.actions or ()), "test_connectivity", "reset_breaker")
    fields = _after(UserLLMConfigAdmin.fields, "enabled", "health_status")
    readonly_fields = (*UserLLMConfigAdmin.readonly_fields, "health_status")
