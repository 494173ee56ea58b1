"""Prompt templates: a template has immutable numbered versions, and labels (`production`, `candidate`) that point
at one of them. Moving a label is the only way a served prompt changes without the client naming a version."""

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class PromptTemplate(models.Model):
    name = models.CharField(max_length=100, unique=True, validators=[RegexValidator(NAME_PATTERN)],
                            help_text="Used by clients as metadata.prompt = name, name@label or name@version.")
    description = models.TextField(blank=True)
    from_fixture = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class PromptVersion(models.Model):
    """Immutable once saved: a change is a new version (the usage log names the version that served a request)."""

    template = models.ForeignKey(PromptTemplate, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    system = models.TextField(blank=True, help_text="The system part; {{ name }} substitutes a declared variable.")
    user = models.TextField(blank=True, help_text="The user part (the last user message); {{ name }} as above.")
    variables = models.JSONField(default=dict, blank=True, help_text='e.g. {"tone": {"type": "enum", "values": '
                                 '["formal", "casual"], "default": "formal"}, "n": {"type": "int"}}')
    params = models.JSONField(default=dict, blank=True,
                              help_text='Defaults a request may override: {"temperature": 0.2, "max_tokens": 400}.')
    variants = models.JSONField(default=list, blank=True,
                                help_text='Per model or provider: [{"model": "demo", "system": "...", "params": {}}, '
                                '{"provider": "openai", "user": "..."}]; what a variant leaves out is the base\'s.')
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["template", "-version"]
        constraints = [models.UniqueConstraint(fields=["template", "version"], name="prompt_version_unique")]

    def __str__(self) -> str:
        return f"{self.template.name}@{self.version}" if self.template_id else f"@{self.version}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise ValidationError("A prompt version cannot be changed once saved: add a new version.")
        super().save(*args, **kwargs)

    def clean(self) -> None:
        from prompts.rendering import TemplateRefused, version_compile

        try:
            version_compile(name="", version=self.version or 0, system=self.system, user=self.user,
                            variables=self.variables, params=self.params, variants=self.variants)
        except TemplateRefused as error:
            raise ValidationError(error.problems) from None


class PromptLabel(models.Model):
    template = models.ForeignKey(PromptTemplate, on_delete=models.CASCADE, related_name="labels")
    name = models.CharField(max_length=50, validators=[RegexValidator(r"^[a-z][a-z0-9_-]*$")],
                            help_text="e.g. production, candidate.")
    version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="labels")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["template", "name"]
        constraints = [models.UniqueConstraint(fields=["template", "name"], name="prompt_label_unique")]

    def __str__(self) -> str:
        return f"{self.template.name}@{self.name}"

    def clean(self) -> None:
        if self.version_id and self.template_id and self.version.template_id != self.template_id:
            raise ValidationError({"version": "The version must belong to this template."})
