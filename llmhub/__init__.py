"""The Celery app (llmhub.celery) is loaded on first use, not with the package: a web process imports Celery only
when it queues a task (llmhub.celery.task_get), which keeps it out of the
start-up. `celery -A llmhub` finds it as `llmhub.celery` (or through `celery_app`)."""


def __getattr__(name: str):
    if name == "celery_app":
        from .celery import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ("celery_app",)
