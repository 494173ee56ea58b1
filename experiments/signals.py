"""Signals only invalidate the snapshot of running experiments (see llmhub.snapshot)."""

from django.db.models.signals import post_delete, post_save

from experiments.models import Arm, Experiment
from experiments.selectors import running_experiments


def _invalidate(**kwargs) -> None:
    running_experiments.invalidate()


def connect() -> None:
    for model in (Experiment, Arm):
        post_save.connect(_invalidate, sender=model, dispatch_uid=f"experiments-save-{model.__name__}")
        post_delete.connect(_invalidate, sender=model, dispatch_uid=f"experiments-delete-{model.__name__}")
