"""A breaker opened by the upstream's 401/403 tells staff: one `model.breaker_opened` billing event per opening
(however many requests met the rejection, in however many processes), delivered to a webhook endpoint over real
HTTP, carrying the model, the reason and the time and never a key."""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx2
import pytest

from health.breakers import breaker_test_outcome, breakers_read_sync, breakers_reset
from health.tests.test_breakers import chat_on, two_apps  # noqa: F401  (a fixture)
from usage.billing import BREAKER_OPENED
from usage.models import BillingEvent, WebhookDelivery
from usage.services import usage_flush
from usage.tests.test_webhooks import SECRET, endpoint_for, receiver_factory  # noqa: F401  (a fixture)
from usage.webhooks import webhook_delivery_attempt, webhooks_sweep

MESSAGES = [{"role": "user", "content": "hello hub"}]
REJECTED = "latency=300,status=401"  # slow enough for several requests to meet the rejection at once


@pytest.fixture(autouse=True)
def _no_breakers() -> Iterator[None]:
    breakers_reset()
    yield
    breakers_reset()


def events_once_written(*, timeout: float = 5.0) -> list[BillingEvent]:
    """The breaker events after the writers (this process's, or the app processes') had time to write them."""
    deadline = time.monotonic() + timeout
    while True:
        usage_flush()
        events = list(BillingEvent.objects.filter(type=BREAKER_OPENED))
        if events or time.monotonic() > deadline:
            time.sleep(0.5)  # a second event, if one were written, would come with the first one's batch or next
            usage_flush()
            return list(BillingEvent.objects.filter(type=BREAKER_OPENED))
        time.sleep(0.05)


def test_a_401_opens_the_breaker_and_tells_staff_once_by_webhook_without_a_secret(live_hub, free_user, api_key_for,
                                                                                  registry, simulated_upstream,
                                                                                  receiver_factory):  # noqa: F811
    receiver = receiver_factory()
    endpoint_for(receiver, event_types=[BREAKER_OPENED])
    simulated_upstream.set_fault("demo", REJECTED)
    key = api_key_for(free_user)

    def chat(_: int) -> int:
        return httpx2.post(f"{live_hub}/v1/chat/completions", json={"model": "demo", "messages": MESSAGES},
                           headers={"Authorization": f"Bearer {key}"}, timeout=15).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(chat, range(4)))

    assert set(statuses) <= {502, 503} and 502 in statuses
    assert simulated_upstream.stats()["demo"] >= 2  # several requests met the 401: the event still comes once
    breaker = breakers_read_sync().get("demo")
    assert breaker.state == "open" and breaker.final
    [event] = events_once_written()
    assert event.payload == {"model": "demo", "reason": "the upstream rejected the model's credentials (HTTP 401)",
                             "status": 401, "source": "request", "opened_at": event.payload["opened_at"]}
    assert datetime.fromisoformat(event.payload["opened_at"]).timestamp() == pytest.approx(breaker.since, abs=1e-3)

    while webhooks_sweep():
        for delivery_id in WebhookDelivery.objects.values_list("pk", flat=True):
            webhook_delivery_attempt(delivery_id=delivery_id)
    assert receiver.accepted == [event.event_id]
    [request] = receiver.requests
    assert request["headers"]["llmhub-event-type"] == BREAKER_OPENED
    body = request["body"].decode()
    for secret in (registry.models["demo"].api_key, SECRET, key):
        assert secret and secret not in body
    assert "sk-" not in body and "Bearer" not in body


@pytest.mark.django_db(transaction=True)
def test_a_model_test_whose_key_is_rejected_tells_once_per_opening(registry):
    opened = breaker_test_outcome("demo", answered=False, key_rejected=True)
    assert opened is not None and (opened.model_key, opened.source, opened.status) == ("demo", "test", None)
    assert breaker_test_outcome("demo", answered=False, key_rejected=True) is None  # the same opening

    breaker_test_outcome("demo", answered=True, key_rejected=False)  # closed: the next rejection is a new opening
    assert breaker_test_outcome("demo", answered=False, key_rejected=True) is not None


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_401_met_in_two_processes_at_once_tells_staff_once(two_apps, simulated_upstream):  # noqa: F811
    (first, second), key = two_apps
    simulated_upstream.set_fault("demo", REJECTED)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda port: chat_on(port, key).status_code, [first, second] * 3))

    assert 502 in answers
    assert simulated_upstream.stats()["demo"] >= 2  # both processes met it
    [event] = events_once_written()
    assert (event.payload["model"], event.payload["status"]) == ("demo", 401)
