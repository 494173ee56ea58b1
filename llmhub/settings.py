"""llmhub settings: one code base, two modes.

With nothing in the environment the app runs embedded: SQLite under var/, a local-memory cache and
Celery tasks executed in-process. DATABASE_URL, REDIS_URL and DJANGO_SECRET_KEY switch it to
PostgreSQL, Redis and real workers; production refuses to start without the settings it has no
safe default for.
"""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

REDIS_URL = env.str("REDIS_URL", default="")
DATABASE_URL = env.str("DATABASE_URL", default="")
# Production is whatever is not the embedded default: a real database or a real Redis.
EMBEDDED = not (DATABASE_URL or REDIS_URL)

_LOCAL_SECRET_KEY = "llmhub-local-only-insecure-secret-key-do-not-use-in-production"
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default=_LOCAL_SECRET_KEY if EMBEDDED else "")
if not EMBEDDED and (not SECRET_KEY or SECRET_KEY == _LOCAL_SECRET_KEY or len(SECRET_KEY) < 50):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be set to a random string of at least 50 characters in production "
        "(DATABASE_URL or REDIS_URL is set)."
    )

# Fernet keys for API keys at rest, newest first. Embedded mode derives one from SECRET_KEY.
ENCRYPTION_KEYS = env.list("LLMHUB_ENCRYPTION_KEYS", default=[])
if not EMBEDDED and not ENCRYPTION_KEYS:
    raise ImproperlyConfigured(
        "LLMHUB_ENCRYPTION_KEYS must be set in production: generate one with "
        "`python manage.py generate_encryption_key`."
    )

DEBUG = env.bool("DJANGO_DEBUG", default=EMBEDDED)
if DEBUG and not EMBEDDED:
    raise ImproperlyConfigured("DJANGO_DEBUG cannot be on in production.")

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"] if EMBEDDED else [])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "adrf",
    "drf_spectacular",
    "registry",
    "generation",
    "translation",
    "usage",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "llmhub.urls"
WSGI_APPLICATION = "llmhub.wsgi.application"
ASGI_APPLICATION = "llmhub.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url("DATABASE_URL", default="sqlite:///" + env.str("LLMHUB_SQLITE_PATH",
                                                                       default=str(VAR_DIR / "llmhub.sqlite3"))),
}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the usage writer and request handlers share the file without "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # A file, not shared-cache memory: live-server tests write from several threads at once.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}

if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "llmhub"}}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if EMBEDDED
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

# A 20 MB body must be refused before it is parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("LLMHUB_MAX_BODY_BYTES", default=2 * 1024 * 1024)

if not EMBEDDED:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "registry.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "llmhub.api.exception_handler",
    "DEFAULT_PAGINATION_CLASS": None,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "llmhub API",
    "DESCRIPTION": "One registry and one API for every LLM a team uses.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL or "cache+memory://")
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 1, "socket_timeout": 2, "max_retries": 1}

LLMHUB = {
    # Path of the model registry fixture loaded by `load_models` and `make run`.
    "MODELS_FILE": env.str("LLMHUB_MODELS_FILE", default=str(BASE_DIR / "fixtures" / "llm_models.json")),
    # How often a process re-checks the shared registry version (seconds); changes made in the same
    # process are seen at once.
    "REGISTRY_CACHE_CHECK_SECONDS": env.float("LLMHUB_REGISTRY_CACHE_CHECK_SECONDS", default=1.0),
    # Hosts ("host" or "host:port") that users' base URLs may reach over http and on private addresses
    # (registry/ssrf.py); embedded, the local simulated upstream on port 9100.
    "SSRF_ALLOWLIST": env.list("LLMHUB_SSRF_ALLOWLIST", default=["127.0.0.1:9100", "localhost:9100"] if EMBEDDED else []),
    # The usage log is written off the response path: pending rows are flushed this often, or as soon
    # as this many are waiting (usage/writer.py). 0 seconds turns the background writer off: rows are
    # then written by usage_flush() and at exit only.
    "USAGE_FLUSH_INTERVAL_SECONDS": env.float("LLMHUB_USAGE_FLUSH_INTERVAL_SECONDS", default=0.25),
    "USAGE_BATCH_SIZE": env.int("LLMHUB_USAGE_BATCH_SIZE", default=500),
    # Total time one request may spend across its fallback attempts.
    "GENERATION_DEADLINE_SECONDS": env.float("LLMHUB_GENERATION_DEADLINE_SECONDS", default=120.0),
    # Streaming: time to the upstream's first byte, and the longest silence between two chunks.
    "FIRST_BYTE_TIMEOUT_SECONDS": env.float("LLMHUB_FIRST_BYTE_TIMEOUT_SECONDS", default=60.0),
    "STREAM_IDLE_TIMEOUT_SECONDS": env.float("LLMHUB_STREAM_IDLE_TIMEOUT_SECONDS", default=60.0),
    # Cooldown of a model after an upstream 429 that gave no Retry-After.
    "DEFAULT_COOLDOWN_SECONDS": env.float("LLMHUB_DEFAULT_COOLDOWN_SECONDS", default=10.0),
    # Request caps (bad input gets a 4xx before anything is forwarded).
    "MAX_OUTPUT_TOKENS": env.int("LLMHUB_MAX_OUTPUT_TOKENS", default=32768),
    "MAX_MESSAGES": env.int("LLMHUB_MAX_MESSAGES", default=512),
    # Users' own endpoints get a strict timeout and response cap.
    "USER_MODEL_TIMEOUT_SECONDS": env.float("LLMHUB_USER_MODEL_TIMEOUT_SECONDS", default=30.0),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LLMHUB_LOG_LEVEL", default="INFO")},
    # httpx2 (the openai SDK's HTTP layer) logs every request at INFO: too much for the hot path.
    "loggers": {logger: {"level": "WARNING"} for logger in ("django.db.backends", "httpx2", "httpx", "openai")},
}
