"""Model status: derived from tests and live traffic, served query-free, saved on transitions only."""

import dataclasses
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from health.models import ModelHealth, ModelTest
from health.status import (
    health_flush,
    health_note,
    health_record_test,
    health_reset,
    live_status,
    model_status,
    status_combine,
    status_from_test,
    unhealthy_keys,
)
from registry.models import LLMModel
from registry.selectors import registry_get, registry_snapshot

ALL_WORK = {"chat": True, "streaming": True, "json_mode": True, "tools": True}


@pytest.fixture(autouse=True)
def _fresh_health():
    health_reset()
    yield
    health_flush()
    health_reset()


def finished_test(model_id: str, **fields) -> ModelTest:
    values = {"state": ModelTest.State.SUCCEEDED, "reachable": True, "key_accepted": True, "model_found": True,
              "latency_ms": 20.0, "capabilities": ALL_WORK, "finished_at": timezone.now(), **fields}
    return ModelTest.objects.create(llm_model=LLMModel.objects.get(public_id=model_id), **values)


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, "healthy"),
    ({"reachable": None, "key_accepted": None, "capabilities": {}}, None),
    ({"reachable": False, "key_accepted": None, "capabilities": {}}, "down"),
    ({"key_accepted": False, "capabilities": {}}, "down"),
    ({"model_found": False, "capabilities": {"chat": False}}, "down"),
    ({"capabilities": {"chat": None}}, "down"),
    ({"latency_ms": 60_000.0}, "degraded"),
    ({"capabilities": {**ALL_WORK, "streaming": None}}, "degraded"),
    ({"model_found": False}, "degraded"),
    ({"model_found": None}, "healthy"),
])
def test_it_derives_a_status_from_a_test(fields, expected):
    values = {"reachable": True, "key_accepted": True, "model_found": True, "latency_ms": 20.0,
              "capabilities": ALL_WORK, **fields}
    assert status_from_test(ModelTest(**values)) == expected


def test_it_degrades_a_model_missing_a_capability_it_claims():
    test = ModelTest(reachable=True, key_accepted=True, model_found=True, latency_ms=5.0,
                     capabilities={**ALL_WORK, "tools": False})
    assert status_from_test(test) == "healthy"
    assert status_from_test(test, claimed=frozenset({"tools"})) == "degraded"


def test_it_combines_tests_and_live_traffic():
    assert [live_status(n) for n in range(5)] == [None, "degraded", "degraded", "down", "down"]
    assert status_combine(None, None) == "unknown"
    assert status_combine("healthy", None) == "healthy"
    assert status_combine(None, "degraded") == "degraded"
    assert status_combine("healthy", "down") == "down"
    assert status_combine("down", "degraded") == "down"


def test_it_turns_down_after_three_live_failures_and_recovers_on_a_success(registry, django_assert_num_queries):
    demo = registry.models["demo"]
    model_status(demo)  # warm

    with django_assert_num_queries(0):
        statuses = []
        for _ in range(3):
            health_note(demo, ok=False)
            statuses.append(model_status(demo).status)
        keys_when_down = unhealthy_keys()
        health_note(demo, ok=True)
        recovered = model_status(demo).status

    assert statuses == ["degraded", "degraded", "down"]
    assert keys_when_down == {"demo"}
    assert recovered == "unknown" and unhealthy_keys() == frozenset()


def test_it_keeps_a_users_model_apart_from_a_registry_model_of_the_same_name(registry):
    demo = registry.models["demo"]
    own = dataclasses.replace(demo, owner_id=7, pk=10_000)  # its key is made from its owner
    for _ in range(3):
        health_note(own, ok=False)
    assert model_status(demo).status == "unknown"


def test_it_forgets_live_counters_when_the_registry_changes(registry):
    for _ in range(3):
        health_note(registry.models["demo"], ok=False)
    assert unhealthy_keys() == {"demo"}

    registry_snapshot.invalidate()  # e.g. an operator fixed the model's key
    assert unhealthy_keys() == frozenset()
    assert model_status(registry_get().models["demo"]).status == "unknown"


def test_it_serves_status_without_queries_once_warm(registry, django_assert_num_queries):
    record(finished_test("demo"))
    demo = registry_get().models["demo"]
    model_status(demo)
    unhealthy_keys()

    with django_assert_num_queries(0):
        assert model_status(demo).status == "healthy"
        assert unhealthy_keys() == frozenset()


def record(test: ModelTest) -> None:
    health_record_test(ModelTest.objects.select_related("llm_model", "user_model").get(pk=test.pk))


def test_it_records_a_test_on_the_models_health_row(registry):
    test = finished_test("demo", latency_ms=123.0)
    record(test)

    row = ModelHealth.objects.get(llm_model__public_id="demo")
    assert (row.status, row.last_latency_ms, row.last_checked_at) == ("healthy", 123.0, test.finished_at)
    health = model_status(registry_get().models["demo"])
    assert (health.status, health.last_latency_ms) == ("healthy", 123.0)


def test_it_ignores_a_test_that_reached_no_verdict(registry):
    record(finished_test("demo", state=ModelTest.State.FAILED, reachable=None, key_accepted=None, capabilities={},
                         error="test crashed"))
    assert not ModelHealth.objects.exists()
    assert model_status(registry_get().models["demo"]).status == "unknown"


def test_it_ends_live_failures_with_a_test_that_got_an_answer(registry):
    demo = registry.models["demo"]
    for _ in range(3):
        health_note(demo, ok=False)
    assert model_status(demo).status == "down"

    time.sleep(0.01)
    record(finished_test("demo"))
    assert model_status(registry_get().models["demo"]).status == "healthy"


def test_it_lifts_a_down_test_to_degraded_once_the_model_answers_live(registry):
    record(finished_test("demo", key_accepted=False, capabilities={}, error="key rejected",
                         finished_at=timezone.now() - timedelta(seconds=5)))
    demo = registry_get().models["demo"]
    assert model_status(demo).status == "down" and unhealthy_keys() == {"demo"}

    health_note(demo, ok=True)
    assert model_status(demo).status == "degraded" and unhealthy_keys() == frozenset()


@pytest.mark.django_db(transaction=True)
def test_it_saves_live_transitions_in_the_background(registry):
    demo = registry.models["demo"]
    health_note(demo, ok=False)
    assert health_flush()
    row = ModelHealth.objects.get(llm_model__public_id="demo")
    assert (row.status, row.live_failures) == ("degraded", 1)

    health_note(demo, ok=False)  # degraded → degraded: nothing to save
    health_note(demo, ok=False)
    assert health_flush()
    row.refresh_from_db()
    assert (row.status, row.live_failures) == ("down", 3) and row.last_live_failure_at is not None

    health_note(demo, ok=True)
    assert health_flush()
    row.refresh_from_db()
    assert (row.status, row.live_failures) == ("unknown", 0) and row.last_live_success_at is not None


@pytest.mark.django_db(transaction=True)
def test_it_sees_another_process_mark_a_model_down(registry):
    demo = registry.models["demo"]
    ModelHealth.objects.create(llm_model_id=demo.pk, status="down", live_failures=3,
                               last_live_failure_at=timezone.now())
    from health.status import health_snapshot

    health_snapshot.invalidate()  # what that process's save did
    assert model_status(demo).status == "down" and unhealthy_keys() == {"demo"}

    health_note(demo, ok=True)  # this process sees it answer: the row is brought back
    assert health_flush()
    row = ModelHealth.objects.get(llm_model_id=demo.pk)
    assert (row.status, row.live_failures) == ("unknown", 0)
