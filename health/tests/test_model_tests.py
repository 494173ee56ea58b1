"""Connectivity tests of models as Celery tasks, over real HTTP against the simulated upstream.

The default run executes tasks eagerly; with REDIS_URL (`make test-services`) they go through Redis to a real
worker started in a thread. Tests that run tasks use `transactional_db`: the worker's connection must see the
rows."""

import http.client
import json
import socket
import time
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.contrib.messages import get_messages
from django.db import connections
from django.utils import timezone

from generation.tasks import model_test_run
from health.model_tests import (
    QueueUnavailable,
    model_test_start,
    model_tests_enqueue_due,
    model_tests_reap,
)
from health.models import ModelHealth, ModelTest
from health.status import health_flush, health_reset, model_status
from health.tasks import model_tests_reap as reap_task
from health.tasks import model_tests_schedule
from llmhub.celery import app
from registry.models import LLMModel, UserLLMConfig
from registry.selectors import registry_get, registry_snapshot
from registry.services import secret_assign

FINISHED = (ModelTest.State.SUCCEEDED, ModelTest.State.FAILED)
ALL_CAPABILITIES = {"chat": True, "streaming": True, "json_mode": True, "tools": True}
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module", autouse=True)
def celery_worker():
    """Eager: nothing to start. Otherwise a worker in a thread, on the configured broker (Redis)."""
    if app.conf.task_always_eager:
        yield None
        return
    app.control.purge()  # messages left by earlier runs name rows that do not exist here
    # The worker's threads must not keep database sessions open: the test database is dropped at the end.
    task_postrun.connect(_connections_close, dispatch_uid="test-worker-connections")
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=30) as worker:
            yield worker
    finally:
        task_postrun.disconnect(dispatch_uid="test-worker-connections")


def _connections_close(**kwargs) -> None:
    connections.close_all()


@pytest.fixture(autouse=True)
def _fresh_health():
    health_reset()
    yield
    wait_for_tests()
    health_flush()
    health_reset()


def wait_for_tests(timeout: float = 30.0) -> None:
    """Until no test is queued or running (a worker may still be writing when a test ends)."""
    deadline = time.monotonic() + timeout
    while ModelTest.objects.exclude(state__in=FINISHED).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def finished(test: ModelTest, timeout: float = 30.0) -> ModelTest:
    deadline = time.monotonic() + timeout
    while True:
        test.refresh_from_db()
        if test.state in FINISHED or time.monotonic() > deadline:
            return test
        time.sleep(0.05)


@pytest.fixture
def allow_local(settings, simulated_upstream):
    """Users' base URLs may reach the test's simulator (and `allow_local(port)` another local port)."""

    def allow(*ports: int) -> None:
        hosts = [f"127.0.0.1:{port}" for port in (simulated_upstream.port, *ports)]
        settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": hosts}

    allow()
    return allow


@pytest.fixture
def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def user_model(owner, *, base_url: str, upstream_model: str = "demo", key: str = "sk-user-key-0001",
               slug: str = "mine", **fields) -> UserLLMConfig:
    model = UserLLMConfig(owner=owner, slug=slug, display_name=slug, upstream_model=upstream_model, base_url=base_url,
                          **fields)
    secret_assign(model, key)
    model.save()
    return model


def registry_model(public_id: str = "demo") -> LLMModel:
    return LLMModel.objects.get(public_id=public_id)


def test_it_detects_the_capabilities_of_the_simulated_upstream(registry):
    test = finished(model_test_start(llm_model=registry_model()))

    assert test.state == "succeeded" and test.error == ""
    assert (test.reachable, test.key_accepted, test.model_found) == (True, True, True)
    assert test.capabilities == ALL_CAPABILITIES
    assert 0 < test.latency_ms < 5000
    assert test.started_at <= test.finished_at
    health = model_status(registry_get().models["demo"])
    assert (health.status, health.last_latency_ms) == ("healthy", test.latency_ms)


def test_it_tests_a_model_served_on_the_responses_api_on_that_api(registry, simulated_upstream):
    LLMModel.objects.filter(public_id="demo").update(api="responses")
    registry_snapshot.invalidate()
    simulated_upstream.reset()

    test = finished(model_test_start(llm_model=registry_model()))

    assert (test.state, test.error, test.capabilities) == ("succeeded", "", ALL_CAPABILITIES)
    # chat, streaming, JSON and tools, all on /v1/responses
    assert simulated_upstream._control("GET", "/_sim/stats")["responses_requests"] == {"demo": 4}


def test_it_finds_a_capability_the_model_refuses(registry, make_user, simulated_upstream, allow_local):
    model = user_model(make_user(), base_url=simulated_upstream.base_url, upstream_model="demo@notools")

    test = finished(model_test_start(user_model=model))

    assert test.state == "succeeded"
    assert test.capabilities == {**ALL_CAPABILITIES, "tools": False}


def test_it_reports_a_rejected_key_and_marks_the_model_down(registry, make_user, simulated_upstream, allow_local):
    key = "sk-rejected-canary-7f3a9c"
    owner = make_user()
    model = user_model(owner, base_url=simulated_upstream.base_url, key=key)

    test = finished(model_test_start(user_model=model, requested_by=owner))

    assert (test.state, test.error, test.key_accepted, test.reachable) == ("failed", "key rejected", False, True)
    assert model_status(registry_get().own_models(owner.pk)["mine"]).status == "down"
    assert ModelHealth.objects.get(user_model=model).status == "down"
    stored = json.dumps(list(ModelTest.objects.values()), default=str)
    assert key not in stored and "Incorrect API key" not in stored


@pytest.mark.parametrize("key", ["sk-planted\r\nX-Injected: 1", "sk-plantéd-key-0123"])
def test_it_reports_a_key_http_cannot_carry_without_calling_the_upstream(registry, make_user, simulated_upstream,
                                                                       allow_local, key):
    # Saving such a key is refused now (issue 16, item 15); one stored before is a failed test, not a crash.
    model = user_model(make_user(), base_url=simulated_upstream.base_url, key=key)
    simulated_upstream.reset()

    test = finished(model_test_start(user_model=model))

    assert (test.state, test.error) == ("failed", "key or headers invalid")
    assert simulated_upstream.stats() == {}


def test_it_marks_an_unreachable_host_down_within_the_time_limit(registry, make_user, allow_local, closed_port):
    allow_local(closed_port)
    owner = make_user()
    model = user_model(owner, base_url=f"http://127.0.0.1:{closed_port}/v1")

    started = time.monotonic()
    test = finished(model_test_start(user_model=model))

    assert time.monotonic() - started < app.tasks["registry.tasks.model_test_run"].soft_time_limit
    assert (test.state, test.reachable, test.error) == ("failed", False, "unreachable")
    assert model_status(registry_get().own_models(owner.pk)["mine"]).status == "down"


def test_it_refuses_a_users_endpoint_off_the_allowlist(registry, make_user, simulated_upstream, settings):
    settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": []}
    model = user_model(make_user(), base_url=simulated_upstream.base_url)
    simulated_upstream.reset()

    test = finished(model_test_start(user_model=model))

    assert (test.state, test.reachable, test.error) == ("failed", False, "address not allowed")
    assert simulated_upstream.stats() == {}


def test_it_times_out_a_model_that_never_answers(registry, settings):
    settings.LLMHUB = {**settings.LLMHUB, "MODEL_TEST_CHECK_TIMEOUT_SECONDS": 0.5, "MODEL_TEST_BUDGET_SECONDS": 2}
    model = registry_model()
    model.upstream_model = "demo@hang"
    model.save()

    test = finished(model_test_start(llm_model=model))

    assert (test.state, test.reachable, test.error, test.capabilities) == ("failed", True, "timeout", {"chat": None})


def test_it_records_a_crashed_test_as_failed(registry, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("boom: something in our own code broke")

    monkeypatch.setattr("generation.model_testing.model_check", crash)

    test = finished(model_test_start(llm_model=registry_model()))

    assert (test.state, test.error, test.reachable) == ("failed", "test crashed", None)
    assert test.finished_at is not None
    assert not ModelHealth.objects.exists()  # a crash says nothing about the model


def test_it_runs_a_test_once(registry, simulated_upstream):
    test = ModelTest.objects.create(llm_model=registry_model())  # queued, as a duplicate delivery would find it
    simulated_upstream.reset()

    model_test_run(test.pk)
    first = ModelTest.objects.get(pk=test.pk)
    calls = simulated_upstream.stats()
    model_test_run(test.pk)

    again = ModelTest.objects.get(pk=test.pk)
    assert first.state == "succeeded" and again.finished_at == first.finished_at
    assert simulated_upstream.stats() == calls  # the second run called nothing
    assert ModelTest.objects.count() == 1 and ModelHealth.objects.count() == 1


def test_it_runs_again_a_test_whose_worker_died(registry):
    abandoned = ModelTest.objects.create(llm_model=registry_model(), state=ModelTest.State.RUNNING,
                                         started_at=timezone.now() - timedelta(hours=1))
    busy = ModelTest.objects.create(llm_model=registry_model("demo-backup"), state=ModelTest.State.RUNNING,
                                    started_at=timezone.now())

    model_test_run(abandoned.pk)
    model_test_run(busy.pk)

    assert ModelTest.objects.get(pk=abandoned.pk).state == "succeeded"
    assert ModelTest.objects.get(pk=busy.pk).state == "running"  # another worker holds it
    ModelTest.objects.filter(pk=busy.pk).update(state=ModelTest.State.FAILED)


def aged(test: ModelTest, seconds: float, **fields) -> ModelTest:
    ModelTest.objects.filter(pk=test.pk).update(created_at=timezone.now() - timedelta(seconds=seconds), **fields)
    return test


def test_it_schedules_tests_only_for_due_models_and_trims_history(registry, make_user, simulated_upstream, allow_local,
                                                                 settings):
    settings.LLMHUB = {**settings.LLMHUB, "MODEL_TEST_INTERVAL_SECONDS": 300, "MODEL_TEST_HISTORY": 3}
    LLMModel.objects.exclude(provider__slug="local").update(enabled=False)  # no internet here
    done = {"state": ModelTest.State.SUCCEEDED, "finished_at": timezone.now()}
    aged(ModelTest.objects.create(llm_model=registry_model("demo")), 60, **done)  # tested a minute ago
    for age in range(5):
        aged(ModelTest.objects.create(llm_model=registry_model("demo-backup")), 3600 + age, **done)
    owner = make_user()
    mine = user_model(owner, base_url=simulated_upstream.base_url)
    user_model(owner, base_url=simulated_upstream.base_url, slug="off", enabled=False)

    assert model_tests_schedule() == 5
    wait_for_tests()

    started = {test.user_model.slug if test.user_model else test.llm_model.public_id
               for test in ModelTest.objects.filter(created_at__gt=timezone.now() - timedelta(seconds=30))}
    assert started == {"demo-backup", "demo-pro", "demo-premium", "demo-embed", "mine"}
    embedding_test = ModelTest.objects.get(llm_model__public_id="demo-embed")  # tested with an embedding, not a chat
    assert (embedding_test.state, embedding_test.capabilities) == ("succeeded", {"embeddings": True})
    assert ModelTest.objects.filter(llm_model__public_id="demo-backup").count() == 3
    assert ModelTest.objects.filter(llm_model__public_id="demo").count() == 1
    assert ModelTest.objects.get(user_model=mine).state == "succeeded"
    assert model_tests_enqueue_due() == []  # nothing is due any more


def test_it_reaps_stuck_tests(registry):
    long_ago = timezone.now() - timedelta(hours=1)
    running = ModelTest.objects.create(llm_model=registry_model(), state=ModelTest.State.RUNNING, started_at=long_ago)
    queued = aged(ModelTest.objects.create(llm_model=registry_model("demo-backup")), 3600)
    fresh = ModelTest.objects.create(llm_model=registry_model("demo-pro"), state=ModelTest.State.RUNNING,
                                     started_at=timezone.now())

    assert reap_task() == 2
    for test in (running, queued):
        test.refresh_from_db()
        assert (test.state, test.error) == ("failed", "timed out") and test.finished_at is not None
    assert ModelTest.objects.get(pk=fresh.pk).state == "running"
    assert model_tests_reap() == 0
    ModelTest.objects.filter(pk=fresh.pk).update(state=ModelTest.State.FAILED)


@pytest.fixture
def broker_down(closed_port):
    """The app publishes to a Redis where nothing listens, as an API process would with Redis down."""

    def reconnect() -> None:
        app.close()
        app.amqp._producer_pool = None  # an eager run may have pooled producers for the old broker

    saved = app.conf.broker_url, app.conf.task_always_eager
    app.conf.broker_url, app.conf.task_always_eager = f"redis://127.0.0.1:{closed_port}/0", False
    reconnect()
    yield
    app.conf.broker_url, app.conf.task_always_eager = saved
    reconnect()


def test_it_answers_503_within_two_seconds_when_the_broker_is_down(registry, broker_down):
    with pytest.raises(QueueUnavailable):
        model_test_start(llm_model=registry_model())  # the first one also pays for importing the transport

    started = time.monotonic()
    with pytest.raises(QueueUnavailable) as refused:
        model_test_start(llm_model=registry_model())

    assert time.monotonic() - started < 2.0
    assert (refused.value.status, refused.value.code) == (503, "queue_unavailable")
    assert [(test.state, test.error) for test in ModelTest.objects.all()] == [("failed", "queue unavailable")] * 2


def test_it_tests_connectivity_from_the_admin(registry, admin_client, make_user, simulated_upstream, allow_local):
    demo = registry_model()
    response = admin_client.post("/admin/registry/llmmodel/", {"action": "test_connectivity",
                                                                "_selected_action": [demo.pk]})
    assert response.status_code == 302
    [message] = [str(m) for m in get_messages(response.wsgi_request)]
    assert message.startswith(("Demo (simulated): answered in", "Demo (simulated): test queued"))
    wait_for_tests()

    page = admin_client.get(f"/admin/registry/llmmodel/{demo.pk}/change/").content.decode()
    assert "recent connectivity tests" in page.lower() and "healthy" in page and "succeeded" in page.lower()

    key = "sk-admin-canary-91c2"
    mine = user_model(make_user(), base_url=simulated_upstream.base_url, key=key)
    response = admin_client.post("/admin/registry/userllmconfig/", {"action": "test_connectivity",
                                                                    "_selected_action": [mine.pk]})
    assert response.status_code == 302
    wait_for_tests()
    page = admin_client.get(f"/admin/registry/userllmconfig/{mine.pk}/change/").content.decode()
    assert "healthy" in page and key not in page
    assert key not in admin_client.get("/admin/registry/userllmconfig/").content.decode()


def chat(hub_url: str, key: str, model: str = "demo") -> tuple[int, str]:
    host, port = hub_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        connection.request("POST", "/v1/chat/completions", body=body,
                           headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.getheader("x-llmhub-model") or ""
    finally:
        connection.close()


def test_it_takes_live_failures_into_the_status_and_skips_a_down_primary(live_hub, simulated_upstream, make_user,
                                                                         api_key_for):
    key = api_key_for(make_user(tier="free"))
    demo = registry_get().models["demo"]
    simulated_upstream.set_fault("demo", "status=500")

    statuses = []
    for _ in range(3):
        assert chat(live_hub, key) == (200, "demo-backup")  # the fallback answers
        statuses.append(model_status(demo).status)
    assert statuses == ["degraded", "degraded", "down"]
    assert health_flush()
    assert ModelHealth.objects.get(llm_model_id=demo.pk).status == "down"

    simulated_upstream.reset()
    assert chat(live_hub, key) == (200, "demo-backup")
    assert simulated_upstream.stats()["demo"] == 0  # down, with a fallback available: not even tried

    simulated_upstream.set_fault("demo-backup", "status=500")  # now only demo can answer
    assert chat(live_hub, key) == (200, "demo")
    assert model_status(demo).status == "unknown"
    assert health_flush()
    row = ModelHealth.objects.get(llm_model_id=demo.pk)
    assert (row.status, row.live_failures) == ("unknown", 0)


@pytest.mark.services
def test_it_runs_tests_on_a_real_worker_through_redis(registry, celery_worker):
    assert celery_worker is not None and app.conf.broker_url.startswith("redis://")

    test = model_test_start(llm_model=registry_model())
    assert test.state in ("queued", "running", "succeeded")
    test = finished(test)

    assert test.state == "succeeded" and test.capabilities == ALL_CAPABILITIES


# --- Metering: a test's requests leave a usage row ---------------------------------------------------------

def test_it_meters_a_registry_models_test_as_the_systems_own_usage(registry):
    from conftest import usage_rows
    from usage.models import UsageLog, UsageRollup
    from usage.rollups import usage_rollups_update
    from usage.services import usage_cost

    model = registry_model()
    finished(model_test_start(llm_model=model))

    [row] = usage_rows(1)
    assert (row.endpoint, row.user_id, row.api_key_id, row.tier) == ("model_test", None, None, "")
    assert (row.requested_model, row.answered_model, row.status, row.http_status) == ("demo", "demo", "ok", 200)
    assert row.attempts == 5  # the model list, a plain chat, streaming, JSON mode, tools
    assert row.input_tokens > 0 and row.output_tokens > 0
    assert row.tokens_estimated  # the simulator reports no usage on a stream: counted locally
    assert row.cost == usage_cost(input_tokens=row.input_tokens, output_tokens=row.output_tokens,
                                  input_price_per_million=model.input_price_per_million,
                                  output_price_per_million=model.output_price_per_million) > 0

    usage_rollups_update(now=timezone.now() + timedelta(hours=1))
    bucket = UsageRollup.objects.get(period="hour", endpoint="model_test")
    assert (bucket.user_id, bucket.requests, bucket.input_tokens, bucket.cost) == (None, 1, row.input_tokens, row.cost)
    assert UsageLog.objects.exclude(endpoint="model_test").count() == 0


def test_it_counts_a_users_model_test_for_them_at_no_cost_and_outside_quotas(registry, make_user, simulated_upstream,
                                                                           allow_local):
    import asyncio
    from decimal import Decimal

    from conftest import usage_rows
    from registry.models import QuotaLimit, Tier
    from usage.quotas import quota_status

    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="requests", period="day", limit=Decimal(1))
    owner = make_user("tester", tier="free")
    model = user_model(owner, base_url=simulated_upstream.base_url, input_price_per_million=Decimal(3),
                       output_price_per_million=Decimal(9))

    tests = [finished(model_test_start(user_model=model, requested_by=owner)) for _ in range(2)]

    assert [test.state for test in tests] == ["succeeded", "succeeded"]  # a limit of 1 request refuses no test
    rows = usage_rows(2)
    assert [(r.endpoint, r.user_id, r.tier, r.requested_model, r.cost) for r in rows] == [
        ("model_test", owner.pk, "free", "mine", 0)] * 2
    assert all(r.input_tokens > 0 and r.output_tokens > 0 for r in rows)
    [limit] = asyncio.run(quota_status(user_id=owner.pk, api_key_id=None, tier_slug="free"))
    assert (limit["used"], limit["refused"]) == (0, 0)


def test_it_meters_a_test_that_timed_out(registry, settings):
    from conftest import usage_rows

    settings.LLMHUB = {**settings.LLMHUB, "MODEL_TEST_CHECK_TIMEOUT_SECONDS": 0.5, "MODEL_TEST_BUDGET_SECONDS": 2}
    model = registry_model()
    model.upstream_model = "demo@hang"
    model.save()

    finished(model_test_start(llm_model=model))

    [row] = usage_rows(1)
    assert (row.endpoint, row.status, row.error_type, row.attempts) == ("model_test", "error", "timeout", 2)
    assert (row.input_tokens, row.output_tokens, row.cost, row.answered_model) == (0, 0, 0, "")
