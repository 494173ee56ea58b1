"""Signals only invalidate the in-memory snapshots (see llmhub.snapshot)."""

from django.contrib.auth import get_user_model
from django.db.models.signals import m2m_changed, post_delete, post_save

from registry.limits import limits_snapshot
from registry.models import (
    ApiKey,
    LLMModel,
    ModelFallback,
    Provider,
    QuotaLimit,
    Tier,
    UserLLMConfig,
    UserModelPreferences,
    UserProfile,
)
from registry.selectors import api_key_snapshot, registry_snapshot


def _invalidate_registry(**kwargs) -> None:
    registry_snapshot.invalidate()


def _invalidate_api_keys(**kwargs) -> None:
    api_key_snapshot.invalidate()


def _invalidate_limits(**kwargs) -> None:
    limits_snapshot.invalidate()


def connect() -> None:
    for model in (Tier, QuotaLimit):
        post_save.connect(_invalidate_limits, sender=model, dispatch_uid=f"limits-save-{model.__name__}")
        post_delete.connect(_invalidate_limits, sender=model, dispatch_uid=f"limits-delete-{model.__name__}")
    for model in (Tier, Provider, LLMModel, ModelFallback, UserLLMConfig):
        post_save.connect(_invalidate_registry, sender=model, dispatch_uid=f"registry-save-{model.__name__}")
        post_delete.connect(_invalidate_registry, sender=model, dispatch_uid=f"registry-delete-{model.__name__}")
    m2m_changed.connect(_invalidate_registry, sender=LLMModel.allowed_tiers.through, dispatch_uid="registry-tiers")
    # The memo holds users' preferences and tier slugs: a renamed tier must not leave it pointing at a slug that is gone.
    for model in (ApiKey, UserProfile, UserModelPreferences, get_user_model(), Tier):
        post_save.connect(_invalidate_api_keys, sender=model, dispatch_uid=f"apikey-save-{model.__name__}")
        post_delete.connect(_invalidate_api_keys, sender=model, dispatch_uid=f"apikey-delete-{model.__name__}")
