"""llmhub settings: one code base, two modes.

With nothing in the environment the app runs embedded: SQLite under var/, a local-memory cache and
Celery tasks executed in-process. DATABASE_URL, REDIS_URL and DJANGO_SECRET_KEY switch it to
PostgreSQL, Redis and real workers; production refuses to start without the settings it has no
safe default for.
"""

import os
import sys
from pathlib import Path

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

REDIS_URL = env.str("REDIS_URL", default="")
DATABASE_URL = env.str("DATABASE_URL", default="")
# Production is whatever is not the embedded default: a real database or a real Redis.
EMBEDDED = not (DATABASE_URL or REDIS_URL)
# `make run` sets this: a Celery worker with embedded beat runs beside the app. With no Redis its broker is
# a folder under var/ (no server to install); app and worker share the snapshots' version tokens through files
# beside the database (llmhub/versions.py), as every embedded process does. Tasks then leave the app's process.
EMBEDDED_WORKER = env.bool("LLMHUB_EMBEDDED_WORKER", default=False) and not REDIS_URL

# `manage.py generate_encryption_key` makes the key production needs: the refusals below name it, so it runs
# where they would stop everything else (it prints a key and reads nothing).
_GENERATING_A_KEY = sys.argv[1:2] == ["generate_encryption_key"]
_REFUSE_UNSAFE = not EMBEDDED and not _GENERATING_A_KEY

_LOCAL_SECRET_KEY = "llmhub-local-only-insecure-secret-key-do-not-use-in-production"
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default=_LOCAL_SECRET_KEY if EMBEDDED else "")
if _REFUSE_UNSAFE and (not SECRET_KEY or SECRET_KEY == _LOCAL_SECRET_KEY or len(SECRET_KEY) < 50):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be set to a random string of at least 50 characters in production "
        "(DATABASE_URL or REDIS_URL is set)."
    )

# Fernet keys for API keys at rest, newest first. Embedded mode derives one from SECRET_KEY.
ENCRYPTION_KEYS = env.list("LLMHUB_ENCRYPTION_KEYS", default=[])
if _REFUSE_UNSAFE and not ENCRYPTION_KEYS:
    raise ImproperlyConfigured(
        "LLMHUB_ENCRYPTION_KEYS must be set in production: generate one with "
        "`python manage.py generate_encryption_key`."
    )
for _position, _key in enumerate(ENCRYPTION_KEYS if not _GENERATING_A_KEY else [], start=1):
    try:
        Fernet(_key)
    except ValueError:
        # Refused now rather than on the first request that needs a key; the key itself is never printed.
        raise ImproperlyConfigured(
            f"LLMHUB_ENCRYPTION_KEYS: key {_position} is not a Fernet key (32 url-safe base64-encoded bytes): "
            "generate one with `python manage.py generate_encryption_key`."
        ) from None

DEBUG = env.bool("DJANGO_DEBUG", default=EMBEDDED)
if DEBUG and not EMBEDDED:
    raise ImproperlyConfigured("DJANGO_DEBUG cannot be on in production.")
# The DEBUG page and the 500 e-mails never show a secret (a stored key in a frame, an Authorization header).
DEFAULT_EXCEPTION_REPORTER = "llmhub.error_reports.SecretsHiddenReporter"
DEFAULT_EXCEPTION_REPORTER_FILTER = "llmhub.error_reports.SecretsFilter"

ALLOWED_HOSTS = [host for host in env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"]
                                           if EMBEDDED else []) if host.strip()]
if _REFUSE_UNSAFE and not ALLOWED_HOSTS:
    # Django would answer every request 400; /v1 checks the same list (llmhub/asgi.py).
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS must name the host names llmhub is served under in production, comma-separated "
        "(e.g. llmhub.example.com)."
    )
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
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc, pinned and served by the app (the docs work offline)
    "registry",
    "health",
    "prompts",
    "generation",
    "translation",
    "usage",
    "analytics",
    "feedback",
    "experiments",
    "routing",
    "pages",
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
    # The embedded database, its test copies and the local broker live in var/ (not in git).
    VAR_DIR.mkdir(exist_ok=True)
    # WAL lets the usage writer and request handlers share the file without "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # A file, not shared-cache memory: live-server tests write from several threads at once.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}

if REDIS_URL:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # Redis away: a command fails within a second (one immediate retry replaces a pooled connection that a Redis
    # restart closed), so the snapshots serve from memory at once rather than waiting on it (llmhub/snapshot.py).
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5,
                                      "retry": Retry(NoBackoff(), 1)}}}
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
# WhiteNoise serves the source folders too, not only what `collectstatic` wrote to STATIC_ROOT: the app (uvicorn,
# the tests' live server) then serves its pages' CSS and JS without a collectstatic step. Production still runs
# collectstatic; the hashed names the pages link to come from STATIC_ROOT.
WHITENOISE_USE_FINDERS = True
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
LOGOUT_REDIRECT_URL = LOGIN_URL

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
    "DEFAULT_SCHEMA_CLASS": "llmhub.api.AutoSchema",
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
    # The API is JSON: forms are for the browsable API's and the pages' own use, not a documented interface.
    "PARSER_WHITELIST": ["rest_framework.parsers.JSONParser"],
    # Two fields named `state`: a model test's keeps the name it had, a hub API key's gets its own.
    "ENUM_NAME_OVERRIDES": {"StateEnum": "health.models.ModelTest.State",
                            "ApiKeyStateEnum": ["active", "expired", "revoked"],
                            "BreakerStateEnum": ["closed", "open", "half_open"]},
    # The docs' scripts and styles come from drf-spectacular-sidecar's static files, never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": True, "displayRequestDuration": True},
}

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL",
                            default=REDIS_URL or ("filesystem://localhost/" if EMBEDDED_WORKER else "memory://"))
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL or "cache+memory://")
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not (REDIS_URL or EMBEDDED_WORKER))
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis down: a publish tries twice with no pause between (kombu waits 2 s by default) and a connection
# attempt gives up after 0.75 s, so enqueuing fails within 2 s and an API can answer 503.
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 0.75, "socket_timeout": 2, "max_retries": 1,
                                   "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # One folder is both the producers' outbox and the worker's inbox (`make run` creates them).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(VAR_DIR / "broker" / "queue"),
        "data_folder_out": str(VAR_DIR / "broker" / "queue"),
        "control_folder": str(VAR_DIR / "broker" / "control"),
        "processed_folder": str(VAR_DIR / "broker" / "processed"),
    }
# Usage roll-ups (usage/rollups.py): how often the beat task recomputes the buckets touched since its last runs.
USAGE_ROLLUP_INTERVAL_SECONDS = env.float("LLMHUB_USAGE_ROLLUP_INTERVAL_SECONDS", default=60.0)
USAGE_RETENTION_DAYS = env.int("LLMHUB_USAGE_RETENTION_DAYS", default=90)
if USAGE_RETENTION_DAYS < 2:
    # The newest final day is the retention plus one: with less than 2 days, late rows of yesterday would be lost.
    raise ImproperlyConfigured("LLMHUB_USAGE_RETENTION_DAYS must be at least 2.")
BILLING_EVENT_RETENTION_DAYS = env.int("LLMHUB_BILLING_EVENT_RETENTION_DAYS", default=90)
if BILLING_EVENT_RETENTION_DAYS < 35:
    # An event's dedupe key must outlive its period (a month), or a threshold of this month could fire twice.
    raise ImproperlyConfigured("LLMHUB_BILLING_EVENT_RETENTION_DAYS must be at least 35.")
WEBHOOK_SWEEP_SECONDS = env.float("LLMHUB_WEBHOOK_SWEEP_SECONDS", default=10.0)
FEEDBACK_SCAN_SECONDS = env.float("LLMHUB_FEEDBACK_SCAN_SECONDS", default=30.0)
CELERY_BEAT_SCHEDULE = {
    # Checks every minute which models are due a test (LLMHUB["MODEL_TEST_INTERVAL_SECONDS"]).
    "model-tests-schedule": {"task": "registry.tasks.model_tests_schedule", "schedule": 60.0,
                             "options": {"expires": 55}},
    "model-tests-reap": {"task": "registry.tasks.model_tests_reap", "schedule": 60.0, "options": {"expires": 55}},
    # A run that could not start within the interval is dropped: the next one does its work.
    "usage-rollups-update": {"task": "usage.tasks.usage_rollups_update", "schedule": USAGE_ROLLUP_INTERVAL_SECONDS,
                             "options": {"expires": max(1.0, USAGE_ROLLUP_INTERVAL_SECONDS - 5)}},
    "usage-log-prune": {"task": "usage.tasks.usage_log_prune", "schedule": 600.0, "options": {"expires": 590}},
    # Billing hooks (usage/billing.py, usage/webhooks.py): dispatch new events and (re)send due deliveries; write
    # the `usage.period_closed` events of days and months whose roll-ups are complete.
    "webhooks-sweep": {"task": "usage.tasks.webhooks_sweep", "schedule": WEBHOOK_SWEEP_SECONDS,
                       "options": {"expires": max(1.0, WEBHOOK_SWEEP_SECONDS - 1)}},
    "billing-periods-close": {"task": "usage.tasks.billing_periods_close", "schedule": 300.0,
                              "options": {"expires": 290}},
    # Model recommendations (analytics/services.py): at most one per task, tier and day, so hourly is enough.
    "analytics-recommendations": {"task": "analytics.tasks.recommendations_update", "schedule": 3600.0,
                                  "options": {"expires": 3500}},
    # Feedback (feedback/services.py): retries found in the new usage rows count against the earlier answer.
    "feedback-implicit-scan": {"task": "feedback.tasks.feedback_implicit_scan", "schedule": FEEDBACK_SCAN_SECONDS,
                               "options": {"expires": max(1.0, FEEDBACK_SCAN_SECONDS - 1)}},
    # Experiments: guardrails and the sequential test of every running experiment (also run on its page's view).
    "experiments-evaluate": {"task": "experiments.tasks.experiments_evaluate", "schedule": 60.0,
                             "options": {"expires": 55}},
}
CELERY_BEAT_SCHEDULE_FILENAME = env.str("CELERY_BEAT_SCHEDULE_FILENAME", default=str(VAR_DIR / "celerybeat-schedule"))

LLMHUB = {
    # Feedback (feedback/): the same prompt sent again within this many seconds of an answer counts against it; the
    # router's counts cover this many days and are re-read per user at most this often (seconds) in each process.
    "FEEDBACK_RETRY_SECONDS": env.float("LLMHUB_FEEDBACK_RETRY_SECONDS", default=120.0),
    "FEEDBACK_WINDOW_DAYS": env.int("LLMHUB_FEEDBACK_WINDOW_DAYS", default=30),
    "FEEDBACK_SNAPSHOT_SECONDS": env.float("LLMHUB_FEEDBACK_SNAPSHOT_SECONDS", default=60.0),
    # The registry file `load_models` (and `make run`) reads; empty: fixtures/llm_models.json. A path named here that
    # does not exist is an error (never the legacy OPENAI_* fallback).
    "MODELS_FILE": env.str("LLMHUB_MODELS_FILE", default=""),
    # How often a process re-checks the shared registry version (seconds); changes made in the same
    # process are seen at once.
    "REGISTRY_CACHE_CHECK_SECONDS": env.float("LLMHUB_REGISTRY_CACHE_CHECK_SECONDS", default=1.0),
    # Routing (routing/): expected latency and success per model come from this many hours of hourly roll-ups,
    # re-read this often (seconds) off the request path, and move with live outcomes in between.
    "ROUTING_STATS_WINDOW_HOURS": env.int("LLMHUB_ROUTING_STATS_WINDOW_HOURS", default=24),
    "ROUTING_STATS_REFRESH_SECONDS": env.float("LLMHUB_ROUTING_STATS_REFRESH_SECONDS", default=60.0),
    # While the shared cache (Redis) is unreachable, the snapshots serve from memory; one older than this is
    # rebuilt from the database, so a change made meanwhile is seen within this bound.
    "SNAPSHOT_MAX_STALE_SECONDS": env.float("LLMHUB_SNAPSHOT_MAX_STALE_SECONDS", default=30.0),
    # The snapshots' version tokens (llmhub/versions.py) must be seen by every process: with Redis they live in
    # the cache; without it, whose cache is per process, in files: by default beside the SQLite database in use
    # (`<database>-versions`, like its -wal and -shm), else var/snapshot-versions.
    "SNAPSHOT_VERSIONS": "cache" if REDIS_URL else "files",
    "SNAPSHOT_VERSIONS_DIR": env.str("LLMHUB_SNAPSHOT_VERSIONS_DIR", default=""),
    # Hosts ("host" or "host:port") that users' base URLs may reach over http and on private addresses
    # (registry/ssrf.py); embedded, the local simulated upstream on port 9100.
    "SSRF_ALLOWLIST": env.list("LLMHUB_SSRF_ALLOWLIST", default=["127.0.0.1:9100", "localhost:9100"] if EMBEDDED else []),
    # The usage log is written off the response path: pending rows are flushed this often, or as soon
    # as this many are waiting (usage/writer.py). 0 seconds turns the background writer off: rows are
    # then written by usage_flush() and at exit only.
    "USAGE_FLUSH_INTERVAL_SECONDS": env.float("LLMHUB_USAGE_FLUSH_INTERVAL_SECONDS", default=0.25),
    "USAGE_BATCH_SIZE": env.int("LLMHUB_USAGE_BATCH_SIZE", default=500),
    # A Redis URL: request processes hand usage rows to a Redis stream there, and `manage.py usage_consume` writes
    # them (usage/stream.py). Production's default: REDIS_URL (set it empty to opt out). Empty: each process writes
    # its own rows (usage/writer.py).
    "USAGE_STREAM_URL": env.str("LLMHUB_USAGE_STREAM_URL", default="" if EMBEDDED else REDIS_URL),
    # Without a stream, on SQLite: app processes hand usage rows to an append-only spool folder (usage/spool.py), by
    # default beside the database (`<database>-usage`), which `manage.py usage_consume` (else the app processes
    # themselves) writes to the database. False: each app process queues its rows in memory.
    "USAGE_SPOOL": env.bool("LLMHUB_USAGE_SPOOL", default=True),
    "USAGE_SPOOL_DIR": env.str("LLMHUB_USAGE_SPOOL_DIR", default=""),
    # Roll-ups and retention (usage/rollups.py): raw usage rows older than this many days (whole days in TIME_ZONE)
    # are deleted, this many per transaction; the roll-ups stay. A log id counts as rolled up for good once a scan
    # this many seconds after it was handed out has covered it.
    "USAGE_RETENTION_DAYS": USAGE_RETENTION_DAYS,
    "USAGE_RETENTION_BATCH_SIZE": env.int("LLMHUB_USAGE_RETENTION_BATCH_SIZE", default=5000),
    "USAGE_ROLLUP_SETTLE_SECONDS": env.float("LLMHUB_USAGE_ROLLUP_SETTLE_SECONDS", default=30.0),
    # Total time one request may spend across its fallback attempts.
    "GENERATION_DEADLINE_SECONDS": env.float("LLMHUB_GENERATION_DEADLINE_SECONDS", default=120.0),
    # Streaming: time to the upstream's first byte, and the longest silence between two chunks.
    "FIRST_BYTE_TIMEOUT_SECONDS": env.float("LLMHUB_FIRST_BYTE_TIMEOUT_SECONDS", default=60.0),
    "STREAM_IDLE_TIMEOUT_SECONDS": env.float("LLMHUB_STREAM_IDLE_TIMEOUT_SECONDS", default=60.0),
    # Cooldown of a model after an upstream 429 that gave no Retry-After.
    "DEFAULT_COOLDOWN_SECONDS": env.float("LLMHUB_DEFAULT_COOLDOWN_SECONDS", default=10.0),
    # Circuit breakers (health/breakers.py): this many consecutive failed requests open a model's breaker (401/403
    # at once), for BREAKER_OPEN_SECONDS, doubled after each failed trial up to BREAKER_OPEN_MAX_SECONDS; failures
    # further apart than BREAKER_FAILURE_WINDOW_SECONDS do not add up. Shared through Redis (HEALTH_REDIS_URL,
    # default REDIS_URL), in process memory without it.
    "BREAKER_FAILURES": env.int("LLMHUB_BREAKER_FAILURES", default=3),
    "BREAKER_OPEN_SECONDS": env.float("LLMHUB_BREAKER_OPEN_SECONDS", default=30.0),
    "BREAKER_OPEN_MAX_SECONDS": env.float("LLMHUB_BREAKER_OPEN_MAX_SECONDS", default=600.0),
    "BREAKER_FAILURE_WINDOW_SECONDS": env.float("LLMHUB_BREAKER_FAILURE_WINDOW_SECONDS", default=300.0),
    "HEALTH_REDIS_URL": env.str("LLMHUB_HEALTH_REDIS_URL", default=REDIS_URL),
    # Request caps (bad input gets a 4xx before anything is forwarded).
    "MAX_OUTPUT_TOKENS": env.int("LLMHUB_MAX_OUTPUT_TOKENS", default=32768),
    "MAX_MESSAGES": env.int("LLMHUB_MAX_MESSAGES", default=512),
    # `n` (choices per request) may be at most this; each choice is billed output.
    "MAX_CHOICES": env.int("LLMHUB_MAX_CHOICES", default=16),
    # A request body not received in full within this many seconds gets 408 (a client that sends fewer bytes
    # than its Content-Length must not hold a request open).
    "BODY_TIMEOUT_SECONDS": env.float("LLMHUB_BODY_TIMEOUT_SECONDS", default=30.0),
    # Origins browsers may call /v1 from (CORS, preflight included); "*" for any. Empty: no CORS headers.
    "CORS_ORIGINS": env.list("LLMHUB_CORS_ORIGINS", default=[]),
    # Users' own endpoints get a strict timeout and response cap.
    "USER_MODEL_TIMEOUT_SECONDS": env.float("LLMHUB_USER_MODEL_TIMEOUT_SECONDS", default=30.0),
    # Connectivity tests (registry/model_tests.py). Beat re-tests every enabled model whose last test is this
    # old, and each model keeps this many finished tests.
    "MODEL_TEST_INTERVAL_SECONDS": env.float("LLMHUB_MODEL_TEST_INTERVAL_SECONDS", default=300.0),
    "MODEL_TEST_HISTORY": env.int("LLMHUB_MODEL_TEST_HISTORY", default=20),
    # One request of a test; the whole test (later checks are skipped past it); its task's time limits.
    "MODEL_TEST_CHECK_TIMEOUT_SECONDS": env.float("LLMHUB_MODEL_TEST_CHECK_TIMEOUT_SECONDS", default=10.0),
    "MODEL_TEST_BUDGET_SECONDS": env.float("LLMHUB_MODEL_TEST_BUDGET_SECONDS", default=45.0),
    "MODEL_TEST_SOFT_TIME_LIMIT_SECONDS": env.float("LLMHUB_MODEL_TEST_SOFT_TIME_LIMIT_SECONDS", default=60.0),
    "MODEL_TEST_TIME_LIMIT_SECONDS": env.float("LLMHUB_MODEL_TEST_TIME_LIMIT_SECONDS", default=75.0),
    # The reaper fails tests running past the hard limit plus this margin, or queued this long.
    "MODEL_TEST_REAP_MARGIN_SECONDS": env.float("LLMHUB_MODEL_TEST_REAP_MARGIN_SECONDS", default=60.0),
    "MODEL_TEST_QUEUED_TIMEOUT_SECONDS": env.float("LLMHUB_MODEL_TEST_QUEUED_TIMEOUT_SECONDS", default=600.0),
    # A tested plain chat slower than this makes the model degraded; a test reads at most this much per answer.
    "MODEL_TEST_SLOW_MS": env.float("LLMHUB_MODEL_TEST_SLOW_MS", default=5000.0),
    "MODEL_TEST_MAX_RESPONSE_BYTES": env.int("LLMHUB_MODEL_TEST_MAX_RESPONSE_BYTES", default=1024 * 1024),
    # Self-service hub API keys (/keys/, /api/keys/): how many unrevoked, unexpired keys a user may hold, and how
    # often at most a key's "last used" is written (per key, off the request path; registry/key_usage.py).
    "MAX_API_KEYS_PER_USER": env.int("LLMHUB_MAX_API_KEYS_PER_USER", default=20),
    "API_KEY_LAST_USED_SECONDS": env.float("LLMHUB_API_KEY_LAST_USED_SECONDS", default=60.0),
    # Prometheus /metrics (usage/metrics.py): scrapes send `Authorization: Bearer <token>`; without a token the
    # page is open only embedded, to loopback clients. Each server's processes share a folder under METRICS_DIR.
    "METRICS_TOKEN": env.str("LLMHUB_METRICS_TOKEN", default=""),
    "METRICS_DIR": env.str("LLMHUB_METRICS_DIR", default=str(VAR_DIR / "prometheus")),
    # Quotas (usage/quotas.py): counters in this Redis, else in the database (embedded). A decision the back end
    # cannot make within the timeout is a 503 (fail closed). A reservation never settled (a crashed process)
    # is given back after QUOTA_HOLD_SECONDS; it must outlast the longest request.
    "QUOTA_REDIS_URL": env.str("LLMHUB_QUOTA_REDIS_URL", default=REDIS_URL),
    "QUOTA_TIMEOUT_SECONDS": env.float("LLMHUB_QUOTA_TIMEOUT_SECONDS", default=0.8),
    "QUOTA_HOLD_SECONDS": env.float("LLMHUB_QUOTA_HOLD_SECONDS", default=900.0),
    "QUOTA_REDIS_MAX_CONNECTIONS": env.int("LLMHUB_QUOTA_REDIS_MAX_CONNECTIONS", default=32),
    # Retry-After of a token or cost refusal caused only by reservations in flight (they settle within seconds).
    "QUOTA_IN_FLIGHT_RETRY_SECONDS": env.int("LLMHUB_QUOTA_IN_FLIGHT_RETRY_SECONDS", default=2),
    # Billing hooks (README "Billing hooks"). `quota.threshold` fires when a limit's settled usage reaches these
    # percentages of it, once per limit, period window and owner. `usage.period_closed` is written for a day this
    # long after it ended (and once its roll-ups are complete).
    "BILLING_THRESHOLD_PERCENTS": env.list("LLMHUB_BILLING_THRESHOLD_PERCENTS", cast=int, default=[80, 100]),
    "BILLING_PERIOD_CLOSE_DELAY_SECONDS": env.float("LLMHUB_BILLING_PERIOD_CLOSE_DELAY_SECONDS", default=600.0),
    # Dispatched events with no delivery pending are deleted this long after they were written (with their deliveries).
    "BILLING_EVENT_RETENTION_DAYS": BILLING_EVENT_RETENTION_DAYS,
    # Webhook deliveries: one attempt's timeouts, the attempts before a delivery is marked failed, and the backoff
    # between them (base x 2^(attempt-1), capped, ±10% jitter). The sweep runs every WEBHOOK_SWEEP_SECONDS.
    "WEBHOOK_TIMEOUT_SECONDS": env.float("LLMHUB_WEBHOOK_TIMEOUT_SECONDS", default=5.0),
    "WEBHOOK_MAX_ATTEMPTS": env.int("LLMHUB_WEBHOOK_MAX_ATTEMPTS", default=10),
    "WEBHOOK_RETRY_BASE_SECONDS": env.float("LLMHUB_WEBHOOK_RETRY_BASE_SECONDS", default=30.0),
    "WEBHOOK_RETRY_MAX_SECONDS": env.float("LLMHUB_WEBHOOK_RETRY_MAX_SECONDS", default=6 * 3600.0),
    "WEBHOOK_SWEEP_SECONDS": WEBHOOK_SWEEP_SECONDS,
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
