"""Admin for prompt templates: a version is added, never edited (its fields are read-only once saved); a label is
moved by choosing another version of its template. Each save invalidates the prompt snapshot in every process."""

from django.contrib import admin

from prompts.models import PromptLabel, PromptTemplate, PromptVersion

VERSION_FIELDS = ("version", "system", "user", "variables", "params", "variants", "note", "created_at")


class PromptVersionInline(admin.StackedInline):
    model = PromptVersion
    extra = 0
    fields = VERSION_FIELDS
    readonly_fields = VERSION_FIELDS
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # added on the version's own page (its number is the next one)


class PromptLabelInline(admin.TabularInline):
    model = PromptLabel
    extra = 1
    fields = ("name", "version", "updated_at")
    readonly_fields = ("updated_at",)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "version":
            template_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
            kwargs["queryset"] = PromptVersion.objects.filter(template_id=template_id).select_related("template")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(PromptTemplate)
class PromptTemplateAdmin(admin.ModelAdmin):
    list_display = ("name", "labels_shown", "latest_version", "from_fixture", "created_at")
    search_fields = ("name", "description")
    readonly_fields = ("from_fixture", "created_at")
    inlines = (PromptLabelInline, PromptVersionInline)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("labels__version", "versions")

    @admin.display(description="labels")
    def labels_shown(self, template: PromptTemplate) -> str:
        return ", ".join(f"{label.name} → {label.version.version}" for label in template.labels.all())

    @admin.display(description="latest version")
    def latest_version(self, template: PromptTemplate) -> int | None:
        return max((version.version for version in template.versions.all()), default=None)


@admin.register(PromptVersion)
class PromptVersionAdmin(admin.ModelAdmin):
    list_display = ("__str__", "template", "version", "note", "created_at")
    list_filter = ("template",)
    fields = ("template", *VERSION_FIELDS)
    readonly_fields = ("version", "created_at")

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request)  # immutable once saved: shown, not edited

    def save_model(self, request, obj: PromptVersion, form, change: bool) -> None:
        if not change:
            latest = PromptVersion.objects.filter(template=obj.template).order_by("-version").first()
            obj.version = (latest.version if latest else 0) + 1
        super().save_model(request, obj, form, change)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # usage rows name versions: they stay


@admin.register(PromptLabel)
class PromptLabelAdmin(admin.ModelAdmin):
    list_display = ("__str__", "template", "name", "version", "updated_at")
    list_filter = ("template", "name")
    list_select_related = ("template", "version")
