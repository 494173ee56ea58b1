"""Signals only invalidate the in-memory snapshot (see llmhub.snapshot)."""

from django.db.models.signals import post_delete, post_save

from prompts.models import PromptLabel, PromptTemplate, PromptVersion
from prompts.selectors import prompt_snapshot


def _invalidate(**kwargs) -> None:
    prompt_snapshot.invalidate()


def connect() -> None:
    for model in (PromptTemplate, PromptVersion, PromptLabel):
        post_save.connect(_invalidate, sender=model, dispatch_uid=f"prompts-save-{model.__name__}")
        post_delete.connect(_invalidate, sender=model, dispatch_uid=f"prompts-delete-{model.__name__}")
