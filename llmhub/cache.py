"""One cache client per process, for the snapshots' version checks.

Django's `django.core.cache.cache` is one object per thread, and under ASGI one per asyncio task (asgiref's
`Local`): each `/v1` request that checked a snapshot's version built a new Redis client, connection pool and
TCP connection, closed only when the garbage collector reached it (`make soak`, production mode: about 8 new
Redis connections a second and 20-40 open at once for one process). The Redis back end's connection pool is
thread-safe and the local-memory one is a locked dict, so one instance serves every thread and task.
"""

from django.core.cache import BaseCache, caches
from django.core.signals import setting_changed


class ProcessCache:
    """Behaves as `django.core.cache.cache`, built once; rebuilt when a test changes CACHES."""

    _instance: BaseCache | None = None

    def __getattr__(self, name: str):
        instance = self._instance
        if instance is None:
            instance = self._instance = caches.create_connection("default")
        return getattr(instance, name)

    def reset(self, *, setting: str, **kwargs) -> None:
        if setting == "CACHES":
            self._instance = None


cache = ProcessCache()
setting_changed.connect(cache.reset, dispatch_uid="llmhub-process-cache")
