"""Outages under traffic: two app processes in production mode (uvicorn, on this test's PostgreSQL database and on
a Redis server the test starts itself), steady /v1 traffic, then the database's connections are killed or the Redis
server is stopped and started again. No bare 500, no restart needed, one usage row per answered request."""

import contextlib
import http.client
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
import psycopg
import pytest
from django.db import connection
from psycopg import sql

from conftest import usage_rows
from llmhub.testing import PrivateRedis, ServerProcess, database_url, free_port, production_env, uvicorn_command
from registry.models import LLMModel
from registry.services import api_key_create, llm_models_set_enabled
from usage.models import UsageLog

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

MAX_STALE_SECONDS = 3.0
CHECK_SECONDS = 0.5


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer within the client's timeout
    headers: dict[str, str]
    body: dict
    seconds: float
    phase: str = ""

    @property
    def code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


def call(port: int, method: str, path: str, *, key: str, body: dict | None = None, timeout: float = 10.0) -> Answer:
    started = time.monotonic()
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        client.request(method, path, body=None if body is None else orjson.dumps(body),
                       headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        response = client.getresponse()
        raw = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
    except TimeoutError:
        return Answer(None, {}, {}, time.monotonic() - started)
    finally:
        client.close()
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = {"raw": raw[:200].decode(errors="replace")}
    return Answer(response.status, headers, payload, time.monotonic() - started)


def chat(port: int, key: str, text: str = "hello") -> Answer:
    return call(port, "POST", "/v1/chat/completions", key=key,
                body={"model": "demo", "messages": [{"role": "user", "content": text}], "max_tokens": 8})


def generate(port: int, key: str) -> Answer:
    return call(port, "POST", "/api/generate/", key=key, body={"prompt": "hi", "model": "demo", "max_tokens": 8})


def listed_models(port: int, key: str) -> set[str] | None:
    answer = call(port, "GET", "/v1/models", key=key)
    return {model["id"] for model in answer.body["data"]} if answer.status == 200 else None


def wait_until(condition, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@dataclass
class Traffic:
    """One client thread per app process sending chat completions with a known key, back to back."""

    ports: list[int]
    key: str
    phase: str = "before"
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> "Traffic":
        for port in self.ports:
            thread = threading.Thread(target=self._run, args=(port,), daemon=True)
            thread.start()
            self._threads.append(thread)
        assert wait_until(lambda: len(self.answers) >= 10 * len(self.ports), timeout=30), self.answers[-3:]
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, port: int) -> None:
        for number in itertools.count():
            if self._stop.is_set():
                return
            answer = chat(port, self.key, f"steady {port} {number}")
            self.answers.append(Answer(answer.status, answer.headers, answer.body, answer.seconds, self.phase))
            time.sleep(0.02)

    def summary(self) -> dict[tuple[str, int | None, str | None], int]:
        counts: dict = {}
        for answer in self.answers:
            counts[answer.phase, answer.status, answer.code] = counts.get((answer.phase, answer.status, answer.code), 0) + 1
        return counts


@dataclass
class Hub:
    redis: PrivateRedis
    apps: list[ServerProcess]
    ports: list[int]
    key: str
    user: object
    answers: list[Answer] = field(default_factory=list)  # answered outside Traffic, for the usage check

    def chat(self, port: int, key: str) -> Answer:
        answer = chat(port, key)
        self.answers.append(answer)
        return answer

    def logs(self) -> str:
        return "\n".join(f"--- app on {port}:\n{app.output()[-6000:]}" for port, app in zip(self.ports, self.apps,
                                                                                         strict=True))

    def stop_apps(self) -> None:
        """SIGTERM: each process drains and writes its queued usage rows."""
        for app in self.apps:
            app.stop(timeout=30)


@pytest.fixture
def hub(registry, make_user, api_key_for, settings, tmp_path, simulated_upstream) -> Iterator[Hub]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    # This process changes the registry as admin would in a third process: its invalidations go to the apps' Redis.
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": redis.url}}
    user = make_user("outage", tier="premium", is_staff=True)
    key = api_key_for(user)
    env = production_env(database_url=database_url(), redis_url=redis.url,
                         LLMHUB_SIMULATOR_URL=simulated_upstream.base_url,
                         LLMHUB_REGISTRY_CACHE_CHECK_SECONDS=str(CHECK_SECONDS),
                         LLMHUB_SNAPSHOT_MAX_STALE_SECONDS=str(MAX_STALE_SECONDS))
    ports = [free_port(), free_port()]
    apps = [ServerProcess(uvicorn_command("llmhub.asgi:application", port=port), env=env,
                          log=tmp_path / f"app-{port}.log").start() for port in ports]
    try:
        for app in apps:
            app.wait_output(lambda text: "Application startup complete" in text)
        yield Hub(redis=redis, apps=apps, ports=ports, key=key, user=user)
    finally:
        for app in apps:
            app.stop(timeout=30)
        redis.stop()


def bare_failures(answers: list[Answer]) -> list[Answer]:
    """No answer in time, or a server error that does not say when to retry."""
    return [answer for answer in answers
            if answer.status is None or (answer.status >= 500 and not (answer.status == 503 and "retry-after" in answer.headers))]


def answered_request_ids(answers: list[Answer]) -> list[str]:
    ids = [answer.headers.get("x-request-id") or answer.body.get("request_id") for answer in answers]
    return [request_id for request_id in ids if request_id]


def assert_one_usage_row_per_answer(hub: Hub, traffic: Traffic) -> None:
    hub.stop_apps()
    expected = answered_request_ids(traffic.answers + hub.answers)
    rows = usage_rows(len(expected))
    assert len(expected) == len(set(expected)) > 0
    assert sorted(row.request_id for row in rows) == sorted(expected)
    assert UsageLog.objects.count() == len(expected)


@contextlib.contextmanager
def database_down() -> Iterator[int]:
    """This test database refuses new connections and loses those it had, except this process's own (which the
    test goes on using); yields how many were cut. Done from the server's maintenance database `postgres`."""
    settings = connection.settings_dict
    name = settings["NAME"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own = cursor.fetchone()[0]
    with psycopg.connect(host=settings["HOST"] or "127.0.0.1", port=settings["PORT"] or 5432, user=settings["USER"],
                         password=settings["PASSWORD"] or None, dbname="postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        try:
            cut = admin.execute("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = %s AND pid <> %s) AS cut", (name, own)).fetchone()[0]
            yield cut
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


def test_it_serves_through_a_database_outage_and_heals_its_connections(hub):
    backup = LLMModel.objects.get(public_id="demo-backup")
    _, unseen_key = api_key_create(user=hub.user, name="first used during the outage")
    with Traffic(hub.ports, hub.key) as traffic:
        time.sleep(3 * CHECK_SECONDS)  # both processes have taken the new key's invalidation and warmed again
        hub.answers += [generate(port, hub.key) for port in hub.ports]  # memoises the user's preferences
        with database_down() as cut:
            traffic.phase = "database down"
            time.sleep(1.0)
            # A key no process has seen needs the database: 503 with Retry-After, in /v1's shape and in /api's.
            needing_database = [call(port, "POST", "/v1/chat/completions", key=unseen_key, body={
                "model": "demo", "messages": [{"role": "user", "content": "hi"}]}) for port in hub.ports]
            needing_database += [call(port, "GET", "/api/models/", key=unseen_key) for port in hub.ports]
            listed_during = [listed_models(port, hub.key) for port in hub.ports]
            # Django's side too (DRF views, a request cycle) needs no query for a known key and user.
            served_during = [generate(port, hub.key) for port in hub.ports]
            served_during += [call(port, "GET", "/api/models/", key=hub.key) for port in hub.ports]
            hub.answers += served_during
            time.sleep(2.0)
        traffic.phase = "database back"
        time.sleep(1.0)

        # Keys never seen before: their first use needs a query, in each process, on connections that were cut.
        _, new_key = api_key_create(user=hub.user, name="after the outage")
        first_uses = [hub.chat(port, key) for key in (unseen_key, new_key) for port in hub.ports]
        # A registry change made elsewhere is seen by both processes (their snapshot rebuilds query the database).
        llm_models_set_enabled(model_ids=[backup.pk], enabled=False)
        hidden = [wait_until(lambda port=port: "demo-backup" not in (listed_models(port, hub.key) or {"demo-backup"}),
                             timeout=5) for port in hub.ports]
        traffic.phase = "recovered"
        time.sleep(1.0)

    summary = traffic.summary()
    assert cut >= 2, "each app process held a database connection"
    assert [(answer.status, answer.code) for answer in needing_database] == [(503, "database_unavailable")] * 4, (
        needing_database, hub.logs())
    assert all(int(answer.headers["retry-after"]) >= 1 for answer in needing_database), needing_database
    assert all(listed is not None and "demo-backup" in listed for listed in listed_during), listed_during
    assert [answer.status for answer in served_during] == [200] * 4, (served_during, hub.logs())
    assert [answer.status for answer in first_uses] == [200] * 4, (first_uses, hub.logs())
    assert hidden == [True, True], hub.logs()
    # The warm snapshots served every request of a known key, during the outage too.
    assert {status for (_, status, _) in summary} == {200}, (summary, hub.logs())
    assert {phase for (phase, _, _) in summary} == {"before", "database down", "database back", "recovered"}, summary
    assert_one_usage_row_per_answer(hub, traffic)


def test_it_serves_from_memory_while_redis_is_down_and_resumes_invalidations(hub):
    backup = LLMModel.objects.get(public_id="demo-backup")
    assert all("demo-backup" in listed_models(port, hub.key) for port in hub.ports)
    with Traffic(hub.ports, hub.key) as traffic:
        hub.redis.stop()
        traffic.phase = "redis down"
        down_at = time.monotonic()
        # The broker is Redis: queueing a model test needs it.
        queued_during = call(hub.ports[0], "POST", "/api/models/demo/test", key=hub.key)
        # A registry change made while Redis is down reaches the other processes from the database, within the
        # staleness bound.
        llm_models_set_enabled(model_ids=[backup.pk], enabled=False)
        hidden = [wait_until(lambda port=port: "demo-backup" not in (listed_models(port, hub.key) or {"demo-backup"}),
                             timeout=MAX_STALE_SECONDS + 3) for port in hub.ports]
        time.sleep(max(0.0, 5.0 - (time.monotonic() - down_at)))

        hub.redis.start()
        traffic.phase = "redis back"
        time.sleep(2 * CHECK_SECONDS + 0.5)
        # Invalidations go through Redis again: a change is seen by both processes well within the staleness bound.
        changed_at = time.monotonic()
        llm_models_set_enabled(model_ids=[backup.pk], enabled=True)
        shown = [wait_until(lambda port=port: "demo-backup" in (listed_models(port, hub.key) or set()),
                            timeout=MAX_STALE_SECONDS) for port in hub.ports]
        shown_after = time.monotonic() - changed_at
        _, new_key = api_key_create(user=hub.user, name="after redis came back")
        first_uses = [hub.chat(port, new_key) for port in hub.ports]
        queued_after = call(hub.ports[1], "POST", "/api/models/demo/test", key=hub.key)
        time.sleep(1.0)

    summary = traffic.summary()
    assert (queued_during.status, queued_during.code) == (503, "queue_unavailable"), (queued_during, hub.logs())
    assert int(queued_during.headers["retry-after"]) >= 1 and queued_during.seconds < 2.0, queued_during
    assert hidden == [True, True], hub.logs()
    assert {status for (_, status, _) in summary} == {200}, (summary, hub.logs())
    assert {phase for (phase, _, _) in summary} == {"before", "redis down", "redis back"}, summary
    assert shown == [True, True] and shown_after < MAX_STALE_SECONDS, (shown_after, hub.logs())
    assert [answer.status for answer in first_uses] == [200, 200], (first_uses, hub.logs())
    assert queued_after.status == 202, queued_after
    assert_one_usage_row_per_answer(hub, traffic)
