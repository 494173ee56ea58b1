"""Settings, read in a fresh process from a clean environment: embedded defaults, production, refusals."""

import json
import os
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.conf import settings

BASE_DIR = str(settings.BASE_DIR)
# Fresh processes with environments of their own: the same test in either suite.
pytestmark = pytest.mark.mode_independent
# Anything that could steer the settings is removed before a test sets exactly what it means.
STEERING_PREFIXES = ("DJANGO_", "LLMHUB_", "CELERY_", "DATABASE_", "REDIS_")
PRODUCTION = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test",
    "REDIS_URL": "redis://127.0.0.1:6379/15",
    "DJANGO_SECRET_KEY": "prod-test-4Gk9wQz7Lr2Xv8Nb5Tj3Hc6Ym1Ps0Fd-Ue7Wa9Ki2Oq4Zx8Rn5Bv3Lt6",
    "LLMHUB_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    "DJANGO_ALLOWED_HOSTS": "llmhub.example.com",
}
LOCAL_SECRET_KEY = "llmhub-local-only-insecure-secret-key-do-not-use-in-production"
SHOW_SETTINGS = """
import json, django
django.setup()
from django.conf import settings
print(json.dumps({
    "DEBUG": settings.DEBUG,
    "ENGINE": settings.DATABASES["default"]["ENGINE"],
    "DB_NAME": str(settings.DATABASES["default"]["NAME"]),
    "CACHE": settings.CACHES["default"]["BACKEND"],
    "EAGER": settings.CELERY_TASK_ALWAYS_EAGER,
    "BROKER": settings.CELERY_BROKER_URL,
    "ALLOWED_HOSTS": settings.ALLOWED_HOSTS,
    "SSL_REDIRECT": settings.SECURE_SSL_REDIRECT,
    "VERSIONS": settings.LLMHUB["SNAPSHOT_VERSIONS"],
    "USAGE_STREAM": settings.LLMHUB["USAGE_STREAM_URL"],
}))
"""


def clean_env(**variables: str | None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(STEERING_PREFIXES)}
    env.pop("CI", None)
    env["DJANGO_SETTINGS_MODULE"] = "llmhub.settings"
    env.update({name: value for name, value in variables.items() if value is not None})
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)


def production(**changes: str | None) -> dict[str, str]:
    variables = {**PRODUCTION, **changes}
    return clean_env(**{name: value for name, value in variables.items() if value is not None})


def shown_settings(env: dict[str, str]) -> dict:
    result = run(["-c", SHOW_SETTINGS], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_it_passes_check_deploy_in_production_settings():
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production())

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_it_runs_production_on_postgresql_redis_and_real_workers():
    shown = shown_settings(production())

    assert shown["DEBUG"] is False
    assert shown["ENGINE"] == "django.db.backends.postgresql"
    assert shown["CACHE"] == "django.core.cache.backends.redis.RedisCache"
    assert shown["EAGER"] is False
    assert shown["BROKER"] == PRODUCTION["REDIS_URL"]
    assert shown["ALLOWED_HOSTS"] == ["llmhub.example.com"]
    assert shown["SSL_REDIRECT"] is True
    assert shown["VERSIONS"] == "cache"  # the snapshots' version tokens live in Redis
    assert shown["USAGE_STREAM"] == PRODUCTION["REDIS_URL"]  # usage rows leave through the Redis stream
    assert shown_settings(production(LLMHUB_USAGE_STREAM_URL=""))["USAGE_STREAM"] == ""  # unless opted out


def test_it_runs_embedded_with_nothing_set():
    shown = shown_settings(clean_env())

    assert shown["DEBUG"] is True
    assert shown["ENGINE"] == "django.db.backends.sqlite3"
    assert shown["DB_NAME"].startswith(os.path.join(BASE_DIR, "var"))
    assert shown["CACHE"] == "django.core.cache.backends.locmem.LocMemCache"
    assert shown["EAGER"] is True
    assert shown["BROKER"] == "memory://"
    # The cache is per process: the snapshots' version tokens live in files every process reads.
    assert shown["VERSIONS"] == "files"
    assert shown["USAGE_STREAM"] == ""  # each process writes its own usage rows


def test_it_generates_an_encryption_key_in_production_before_any_key_is_set():
    """Issue 16: the error that names `generate_encryption_key` came from settings the command itself could not load."""
    env = production(DJANGO_SECRET_KEY=None, LLMHUB_ENCRYPTION_KEYS=None, DJANGO_ALLOWED_HOSTS=None)

    result = run(["manage.py", "generate_encryption_key"], env)

    assert result.returncode == 0, result.stderr
    assert Fernet(result.stdout.strip().encode())
    assert run(["manage.py", "check"], env).returncode != 0  # everything else is still refused


@pytest.mark.parametrize(("changes", "variable"), [
    ({"DJANGO_SECRET_KEY": None}, "DJANGO_SECRET_KEY"),
    ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY"),
    ({"DJANGO_SECRET_KEY": LOCAL_SECRET_KEY}, "DJANGO_SECRET_KEY"),
    ({"DJANGO_SECRET_KEY": "short-secret"}, "DJANGO_SECRET_KEY"),
    ({"LLMHUB_ENCRYPTION_KEYS": None}, "LLMHUB_ENCRYPTION_KEYS"),
    ({"LLMHUB_ENCRYPTION_KEYS": ""}, "LLMHUB_ENCRYPTION_KEYS"),
    ({"LLMHUB_ENCRYPTION_KEYS": "not-a-fernet-key"}, "LLMHUB_ENCRYPTION_KEYS"),
    ({"DJANGO_DEBUG": "true"}, "DJANGO_DEBUG"),
    ({"DJANGO_ALLOWED_HOSTS": None}, "DJANGO_ALLOWED_HOSTS"),
    ({"DJANGO_ALLOWED_HOSTS": " , "}, "DJANGO_ALLOWED_HOSTS"),
    ({"DATABASE_URL": None, "DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY"),  # REDIS_URL alone is production too
])
def test_it_refuses_to_start_in_production_without_a_safe_setting(changes, variable):
    result = run(["manage.py", "check"], production(**changes))

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr
    for secret in (PRODUCTION["DJANGO_SECRET_KEY"], PRODUCTION["LLMHUB_ENCRYPTION_KEYS"]):
        assert secret not in result.stderr + result.stdout


@pytest.mark.parametrize("entry_point", [
    ["-c", "import llmhub.wsgi"],
    ["-c", "import llmhub.asgi"],
    ["-c", "from llmhub.celery import app; print(app.conf.broker_url)"],
])
def test_it_refuses_to_serve_or_work_without_a_secret_key(entry_point):
    result = run(entry_point, production(DJANGO_SECRET_KEY=None))

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr
