"""Circuit breakers and cool-downs, over real HTTP against the simulated upstream: in this process's app (in memory
when embedded, in Redis with REDIS_URL), and across two uvicorn processes on one Redis."""

import time
from collections.abc import Iterator

import httpx2
import openai
import pytest
from django.conf import settings as django_settings

from health.breakers import breakers_read_sync, breakers_reset
from llmhub.testing import ServerProcess, database_url, free_port, production_env, uvicorn_command

MESSAGES = [{"role": "user", "content": "hello hub"}]


@pytest.fixture(autouse=True)
def _no_breakers() -> Iterator[None]:
    breakers_reset()
    yield
    breakers_reset()


@pytest.fixture
def sdk(live_hub, free_user, api_key_for) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(free_user), max_retries=0, timeout=10)


@pytest.fixture
def fast_breakers(settings):
    settings.LLMHUB = {**settings.LLMHUB, "BREAKER_FAILURES": 3, "BREAKER_OPEN_SECONDS": 0.5,
                       "BREAKER_OPEN_MAX_SECONDS": 2.0}


def answered_by(sdk: openai.OpenAI) -> tuple[str, str]:
    """(the model that answered, how many attempts it took)."""
    raw = sdk.chat.completions.with_raw_response.create(model="demo", messages=MESSAGES)
    return raw.headers["x-llmhub-model"], raw.headers["x-llmhub-attempts"]


def models_api(live_hub: str, key: str, model_id: str) -> dict:
    response = httpx2.get(f"{live_hub}/api/models/{model_id}/", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["status"]["breaker"]


def test_it_opens_the_breaker_at_once_on_a_401_and_skips_the_model(sdk, live_hub, free_user, api_key_for,
                                                                    simulated_upstream, caplog):
    simulated_upstream.set_fault("demo", "status=401")

    with pytest.raises(openai.InternalServerError) as error:
        sdk.chat.completions.create(model="demo", messages=MESSAGES)

    assert error.value.status_code == 502  # the request itself does not fall back (a 401 is final)
    assert answered_by(sdk) == ("demo-backup", "1")  # the next one skips demo at once
    assert simulated_upstream.stats() == {"demo": 1, "demo-backup": 1}
    breaker = models_api(live_hub, api_key_for(free_user), "demo")
    assert breaker["state"] == "open"
    assert breaker["reason"] == "the upstream rejected the model's credentials (HTTP 401)"
    assert breaker["since"] is not None and breaker["retry_at"] is not None
    logged = [record for record in caplog.records if "circuit breaker of model demo opened" in record.getMessage()]
    assert [record.levelname for record in logged] == ["ERROR"]
    assert "sk-" not in caplog.text and "Bearer" not in caplog.text


def test_it_opens_after_consecutive_failures_then_half_opens_for_one_trial(sdk, fast_breakers, simulated_upstream):
    simulated_upstream.set_fault("demo", "status=500")
    for _ in range(3):
        assert answered_by(sdk) == ("demo-backup", "2")
    assert breakers_read_sync().get("demo").state == "open"

    assert answered_by(sdk) == ("demo-backup", "1")  # open: skipped
    simulated_upstream.set_fault("demo", "")
    time.sleep(0.6)  # half-open: the next request is the trial

    assert answered_by(sdk) == ("demo", "1")
    assert breakers_read_sync().get("demo").state == "closed"
    assert simulated_upstream.stats() == {"demo": 4, "demo-backup": 4}


def test_it_opens_again_for_longer_when_the_trial_fails(sdk, fast_breakers, simulated_upstream):
    simulated_upstream.set_fault("demo", "status=500")
    for _ in range(3):
        answered_by(sdk)
    first = breakers_read_sync().get("demo")
    time.sleep(0.6)

    assert answered_by(sdk) == ("demo-backup", "2")  # the trial failed

    again = breakers_read_sync().get("demo")
    assert again.state == "open" and again.since == first.since
    assert again.until - time.time() > 0.6  # twice as long: 1 s


def test_it_answers_503_with_retry_after_when_the_only_model_is_open(live_hub, api_key_for, free_user,
                                                                      simulated_upstream):
    simulated_upstream.set_fault("demo-backup", "status=401")
    key = api_key_for(free_user)
    body = {"model": "demo-backup", "messages": MESSAGES}
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx2.post(f"{live_hub}/v1/chat/completions", json=body, headers=headers, timeout=10).status_code == 502

    refused = httpx2.post(f"{live_hub}/v1/chat/completions", json=body, headers=headers, timeout=10)

    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "model_unavailable"
    assert "credentials" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert simulated_upstream.stats() == {"demo-backup": 1}


def test_a_429_cools_the_model_for_exactly_its_retry_after(sdk, simulated_upstream):
    simulated_upstream.set_fault("demo", "429=2")
    before = time.time()
    assert answered_by(sdk) == ("demo-backup", "2")

    breaker = breakers_read_sync().get("demo")
    assert breaker.state == "closed"  # a 429 says nothing about the model's health
    assert before + 2 <= breaker.cooled_until <= time.time() + 2
    assert answered_by(sdk) == ("demo-backup", "1")


def test_a_model_test_that_answers_closes_the_breaker_and_a_rejected_key_opens_it(registry, transactional_db):
    from health.breakers import breaker_test_outcome

    breaker_test_outcome("demo", answered=False, key_rejected=True)
    assert breakers_read_sync().get("demo").state == "open"

    breaker_test_outcome("demo", answered=True, key_rejected=False)
    assert breakers_read_sync().get("demo").state == "closed"


def test_changing_a_model_resets_its_breaker(registry, transactional_db):
    from health.breakers import breaker_test_outcome
    from registry.models import LLMModel

    breaker_test_outcome("demo", answered=False, key_rejected=True)
    model = LLMModel.objects.get(public_id="demo")
    model.display_name = "Demo, key fixed"
    model.save()

    assert breakers_read_sync().get("demo").state == "closed"


# --- Two app processes on one Redis -----------------------------------------------------------------------------

@pytest.fixture
def two_apps(registry, make_user, api_key_for, tmp_path, simulated_upstream) -> Iterator[tuple[list[int], str]]:
    redis_url = django_settings.REDIS_URL
    if not redis_url:
        pytest.fail("needs REDIS_URL")
    key = api_key_for(make_user("breakers", tier="free"))
    # Slow snapshot checks: the database-backed status (health.status) cannot carry a failure to the other process
    # within the test; only the breakers can.
    env = production_env(database_url=database_url(), redis_url=redis_url,
                         LLMHUB_SIMULATOR_URL=simulated_upstream.base_url, LLMHUB_REGISTRY_CACHE_CHECK_SECONDS="60")
    ports = [free_port(), free_port()]
    apps = [ServerProcess(uvicorn_command("llmhub.asgi:application", port=port), env=env,
                          log=tmp_path / f"app-{port}.log").start() for port in ports]
    try:
        for app in apps:
            app.wait_output(lambda text: "Application startup complete" in text)
        for port in ports:  # warm: each process holds its snapshots (the database's view of health) from now on
            assert chat_on(port, key).status_code == 200
        simulated_upstream.reset()
        yield ports, key
    finally:
        for app in apps:
            app.stop(timeout=30)


def chat_on(port: int, key: str, model: str = "demo") -> httpx2.Response:
    return httpx2.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": model, "messages": MESSAGES},
                       headers={"Authorization": f"Bearer {key}"}, timeout=15)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_model_failing_in_one_process_is_avoided_by_the_other_at_its_next_request(two_apps, simulated_upstream):
    (first, second), key = two_apps
    simulated_upstream.set_fault("demo", "status=500")
    for _ in range(3):
        assert chat_on(first, key).headers["x-llmhub-model"] == "demo-backup"

    answer = chat_on(second, key)

    assert answer.headers["x-llmhub-model"] == "demo-backup"
    assert answer.headers["x-llmhub-attempts"] == "1"  # demo skipped: its breaker is open in every process
    assert simulated_upstream.stats()["demo"] == 3


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_401_in_one_process_opens_the_breaker_in_the_other(two_apps, simulated_upstream):
    (first, second), key = two_apps
    simulated_upstream.set_fault("demo", "status=401")
    assert chat_on(first, key).status_code == 502

    answer = chat_on(second, key)

    assert (answer.status_code, answer.headers["x-llmhub-model"], answer.headers["x-llmhub-attempts"]) == (
        200, "demo-backup", "1")
    assert simulated_upstream.stats()["demo"] == 1


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_retry_after_cools_the_model_in_every_process_for_that_long(two_apps, simulated_upstream):
    (first, second), key = two_apps
    simulated_upstream.set_fault("demo", "429=2")
    assert chat_on(first, key).headers["x-llmhub-model"] == "demo-backup"
    simulated_upstream.set_fault("demo", "")

    assert chat_on(second, key).headers["x-llmhub-attempts"] == "1"  # demo skipped while it cools
    time.sleep(2.1)
    assert chat_on(second, key).headers["x-llmhub-model"] == "demo"
    assert simulated_upstream.stats()["demo"] == 2
