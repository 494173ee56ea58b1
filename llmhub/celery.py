"""The Celery app. Tasks live in each app's tasks.py (autodiscovered); the beat schedule is in settings
(CELERY_BEAT_SCHEDULE). With no REDIS_URL tasks run eagerly, in-process, except under `make run`
(LLMHUB_EMBEDDED_WORKER=true), where a worker with embedded beat consumes a broker folder under var/."""

import os

from celery import Celery
from celery.signals import worker_process_shutdown, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmhub.settings")

app = Celery("llmhub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def task_get(name: str):
    """The task registered under `name`. A web process imports no tasks module until it queues a task: the first
    such call imports every app's tasks.py (what a worker does as it starts), so a service can queue another app's
    task by name without importing it."""
    if name not in app.tasks:
        app.loader.import_default_modules()
    return app.tasks[name]


@worker_ready.connect
def _model_tests_schedule_now(sender, **kwargs) -> None:
    # Beat's first run comes one interval after it starts: the embedded worker tests the models at once, so a
    # fresh `make run` shows live status within seconds.
    from django.conf import settings

    if settings.EMBEDDED_WORKER:
        sender.app.send_task("registry.tasks.model_tests_schedule")


@worker_process_shutdown.connect(dispatch_uid="usage-writer-flush")
def _usage_writer_flush(**kwargs) -> None:
    # A forked worker process skips `atexit`: the usage writer writes what it still holds (usage.writer).
    from usage.writer import _flush_before_worker_exit

    _flush_before_worker_exit(**kwargs)
