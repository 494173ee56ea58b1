import contextlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache
from rest_framework.test import APIClient

from feedback.selectors import preference_snapshots_clear
from health.breakers import breakers_reset
from prompts.selectors import prompt_snapshot
from registry.limits import limits_snapshot
from registry.selectors import api_key_snapshot, registry_snapshot
from routing.selectors import policies_snapshot
from usage.quota_backends import quota_database_path
from usage.writer import writer as usage_writer

pytest_plugins = ["llmhub.testing"]  # the simulated_upstream fixture

FIXTURE_FILE = Path(settings.BASE_DIR) / "fixtures" / "llm_models.json"
SERVICES_CONFIGURED = bool(os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"))
SERVICES_REQUIRED = os.environ.get("LLMHUB_REQUIRE_SERVICES") == "true"

# Production's default hands usage rows to a Redis stream that a consumer process writes (usage/stream.py). No test
# runs a consumer unless it says so (usage/tests/test_usage_stream.py): this process and the app processes tests
# start write their own rows.
os.environ["LLMHUB_USAGE_STREAM_URL"] = ""
settings.LLMHUB["USAGE_STREAM_URL"] = ""
# Nor does this process use the embedded mode's spool (usage/spool.py) unless a test says so: its tests read the
# in-memory queue. The app processes tests start use it, as they would anywhere.
settings.LLMHUB["USAGE_SPOOL"] = False
usage_writer.options_load()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # In the embedded run, tests that need PostgreSQL and Redis are skipped; under CI they run, and fail
    # if the services are missing.
    if SERVICES_CONFIGURED or SERVICES_REQUIRED:
        # CI runs both suites (`make test`, LLMHUB_TESTS_IN_BOTH_SUITES=true): a test whose outcome cannot depend on
        # the suite's database and Redis (its processes get an environment of their own, or it reads only code) runs
        # in the embedded suite only. `make test-services` alone still runs it.
        if os.environ.get("LLMHUB_TESTS_IN_BOTH_SUITES") == "true":
            once = pytest.mark.skip(reason="independent of the suite's database and Redis: the embedded suite runs it")
            for item in items:
                if "mode_independent" in item.keywords:
                    item.add_marker(once)
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL and Redis (run `make test-services` or CI=true)")
    for item in items:
        if "services" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_snapshots() -> Iterator[None]:
    # Each test's database is rolled back afterwards: in-memory snapshots must not outlive it.
    cache.clear()
    snapshots = (registry_snapshot, api_key_snapshot, limits_snapshot, prompt_snapshot, policies_snapshot)
    for snapshot in snapshots:
        snapshot.invalidate()
    preference_snapshots_clear()
    breakers_reset()  # shared in Redis with REDIS_URL: a model a test broke stays broken otherwise
    _quota_file_emptied()
    yield
    for snapshot in snapshots:
        snapshot.invalidate()
    preference_snapshots_clear()


def _quota_file_emptied() -> None:
    """The embedded quota back end keeps its counters in a file of its own beside the database
    (usage/quota_backends.py), which the test database's flush and rollback do not reach: each test starts with
    none, as it does with the database's own tables."""
    if not settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        return
    path = quota_database_path()
    if os.path.exists(path):
        with contextlib.closing(sqlite3.connect(path, timeout=20, isolation_level=None)) as quota_file:
            quota_file.execute("DELETE FROM usage_quotacounter")
            quota_file.execute("DELETE FROM usage_quotahold")


@pytest.fixture(scope="session", autouse=True)
def _snapshot_versions_removed() -> Iterator[None]:
    # Without Redis the snapshots' version tokens are files beside the database (llmhub/versions.py): the test
    # database's go with it.
    yield
    test_database = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if test_database and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        shutil.rmtree(f"{test_database}-versions", ignore_errors=True)
        shutil.rmtree(f"{test_database}-usage", ignore_errors=True)  # the usage spool of the apps tests started
        for suffix in ("", "-wal", "-shm"):  # the quota back end's file
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{test_database}-quotas.sqlite3{suffix}")


@pytest.fixture(scope="session", autouse=True)
def _postgresql_flush_by_delete() -> Iterator[None]:
    """After each transactional test pytest-django empties every table with one TRUNCATE. On PostgreSQL that costs
    0.5-1 s a test (new files for each of the ~40 tables) while the tables hold a few rows: hundreds of such tests
    made minutes of the services run. The same emptying is done here with DELETE, after taking the locks TRUNCATE
    takes (ACCESS EXCLUSIVE on every table), so it still waits for a transaction in flight and removes what it wrote.
    The foreign keys Django makes are deferrable: they are checked at the commit, when every table is empty.
    Content types and permissions, which only mirror the models, are kept: the flush's post_migrate signal, which
    recreated them all (a quarter of a second more), now finds them there (and still adds any a test removed)."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush
    kept = {"django_content_type", "auth_permission"}

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False) -> list[str]:
        if not tables or reset_sequences or allow_cascade:
            return truncate(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        names = [self.quote_name(table) for table in tables if table not in kept]
        return ["SET CONSTRAINTS ALL DEFERRED;", f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE;",
                *(f"DELETE FROM {name};" for name in names)]  # noqa: S608 (Django's own table names, quoted)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatabaseOperations, "sql_flush", sql_flush)
        yield


@pytest.fixture(autouse=True)
def _celery_eager_unless_worker(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tasks run in-process unless the test starts a real worker (fixture `celery_worker`): under CI=true,
    REDIS_URL makes Celery non-eager, and a task queued with no worker would never run."""
    if "celery_worker" in request.fixturenames:
        yield
        return
    from llmhub.celery import app

    saved, app.conf.task_always_eager = app.conf.task_always_eager, True
    yield
    app.conf.task_always_eager = saved


@pytest.fixture(autouse=True)
def _usage_writer_stopped() -> Iterator[None]:
    # What a test queued is written into its own database before that is rolled back or emptied, and the
    # writer thread's connection is closed, so PostgreSQL can drop the test database at the end.
    from usage.writer import writer

    yield
    writer.stop()


@pytest.fixture
def registry(db, simulated_upstream, monkeypatch):
    """The shipped fixture, loaded, its demo models pointing at the test's simulated upstream."""
    from registry.selectors import registry_get
    from registry.services import registry_load

    simulated_upstream.reset()
    monkeypatch.setenv("LLMHUB_SIMULATOR_URL", simulated_upstream.base_url)
    registry_load(path=FIXTURE_FILE)
    return registry_get()


@pytest.fixture(scope="session")
def _hub_server():
    from llmhub.testing import AsgiServer

    # Lifespan on, as `make serve` runs it: shutdown closes the upstream pools and flushes the usage log.
    with AsgiServer("llmhub.asgi:application", lifespan="on") as server:
        yield server


@pytest.fixture
def live_hub(transactional_db, registry, _hub_server, settings) -> Iterator[str]:
    """The whole app (ASGI, as in production) on a real port, with the registry loaded; yields its root URL."""
    from generation.services import cooldowns_reset
    from routing.stats import stats_reset

    # Production settings allow no host by default; the test server is reached as 127.0.0.1.
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1", "localhost"]
    cooldowns_reset()
    stats_reset()
    yield _hub_server.root_url
    cooldowns_reset()
    stats_reset()
    # Before the database is emptied: a request still in flight (a hung upstream) would write its usage row
    # or health change during the flush, and PostgreSQL picks the flush as a deadlock victim.
    _hub_server.wait_idle()
    usage_wait_idle()


@pytest.fixture
def two_app_processes(live_hub, simulated_upstream, tmp_path) -> Iterator[list[str]]:
    """Two more app processes (uvicorn, production settings) on the test's database and, in the services run, its
    Redis; yields their root URLs. They check their snapshots' versions only once a minute, so a change they serve
    at once reached them through the shared epoch (llmhub.snapshot), as every request reads it."""
    from llmhub.testing import ServerProcess, database_url, free_port, production_env, uvicorn_command

    env = production_env(database_url=database_url(), redis_url=os.environ.get("REDIS_URL") or None,
                         LLMHUB_SIMULATOR_URL=simulated_upstream.base_url, LLMHUB_REGISTRY_CACHE_CHECK_SECONDS="60")
    servers, roots = [], []
    try:
        for index in range(2):
            port = free_port()
            servers.append(ServerProcess(uvicorn_command("llmhub.asgi:application", port=port), env=env,
                                         log=tmp_path / f"app-{index}.log").start())
            roots.append(f"http://127.0.0.1:{port}")
        for server in servers:
            server.wait_output(lambda text: "Application startup complete" in text)
        yield roots
    finally:
        for server in servers:
            server.stop()


def usage_wait_idle() -> None:
    from health.status import health_flush
    from llmhub.testing import servers_turn
    from usage.services import usage_flush

    servers_turn()  # an answer's usage row is handed on the turn after its response
    usage_flush()
    health_flush()


def usage_rows(count: int, *, timeout: float = 5.0) -> list:
    """The usage log once it holds `count` rows (a stream's row is written as its response ends)."""
    import time

    from llmhub.testing import servers_turn
    from usage.models import UsageLog
    from usage.services import usage_flush

    deadline = time.monotonic() + timeout
    while True:
        servers_turn()  # an answer's usage row is handed on the turn after its response
        usage_flush()
        rows = list(UsageLog.objects.order_by("created_at", "id"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


@pytest.fixture
def make_user(db) -> Callable:
    from django.contrib.auth import get_user_model

    from registry.services import user_tier_set

    def make(username: str = "alice", *, tier: str | None = "free", **fields):
        user = get_user_model().objects.create_user(username=username, password="pw-" + username, **fields)
        if tier is not None:
            user_tier_set(user=user, tier_slug=tier)
        return user

    return make


@pytest.fixture
def free_user(make_user):
    return make_user("free-user", tier="free")


@pytest.fixture
def api_key_for() -> Callable:
    from registry.services import api_key_create

    def create(user) -> str:
        return api_key_create(user=user, name="test")[1]

    return create


@pytest.fixture
def client_for(api_key_for) -> Callable:
    """An APIClient authenticated with a fresh hub API key of `user`."""

    def make(user) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_for(user)}")
        return client

    return make


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings) -> None:
    # The production hasher costs ~0.5 s per user; tests create many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _unhashed_static_files(settings) -> None:
    # Production serves static files by the hashed names in `collectstatic`'s manifest, which a test run has not
    # built; pages that link static files (admin, browsable API, docs) would fail on a missing manifest entry.
    settings.STORAGES = {
        **settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
