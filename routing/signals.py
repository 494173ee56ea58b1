"""Signals only invalidate the policy snapshot (see llmhub.snapshot)."""

from django.db.models.signals import post_delete, post_save

from routing.models import RoutingPolicy
from routing.selectors import policies_snapshot


def _invalidate(**kwargs) -> None:
    policies_snapshot.invalidate()


post_save.connect(_invalidate, sender=RoutingPolicy, dispatch_uid="routing-policy-save")
post_delete.connect(_invalidate, sender=RoutingPolicy, dispatch_uid="routing-policy-delete")
