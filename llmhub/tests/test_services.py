"""Under `make test-services` (and CI=true) the suite must really run on PostgreSQL and Redis."""

import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection

pytestmark = [pytest.mark.services, pytest.mark.django_db]


def test_it_runs_on_postgresql():
    assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        assert cursor.fetchone()[0].startswith("PostgreSQL")


def test_it_caches_in_redis():
    assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    server = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    assert server.ping()

    cache.set("llmhub:services-check", {"round": "trip"}, timeout=30)

    assert cache.get("llmhub:services-check") == {"round": "trip"}
    assert server.exists(cache.make_key("llmhub:services-check")) == 1
    cache.delete("llmhub:services-check")
    assert server.exists(cache.make_key("llmhub:services-check")) == 0


def test_it_queues_tasks_on_redis():
    assert settings.CELERY_BROKER_URL.startswith("redis://")
