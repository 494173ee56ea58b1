"""Billing hooks: threshold and period-closed events in the outbox, delivered as signed webhooks over real HTTP to a
receiver in the test, retried until it answers, never twice at once, never to an internal address, and never
carrying the endpoint's secret."""

import asyncio
import http.server
import json
import logging
import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.db import connections
from django.db.models import Count, Sum

from llmhub.celery import app
from registry.models import QuotaLimit, Tier
from registry.services import secret_rotate_all
from registry.tests.admin_forms import admin_post, rendered_form_data
from registry.tests.test_secrets import db_cells_containing
from usage import tasks
from usage.billing import PERIOD_CLOSED, QUOTA_THRESHOLD, billing_periods_close
from usage.models import BillingEvent, BillingState, UsageLog, UsageRollup, WebhookDelivery, WebhookEndpoint
from usage.quota_backends import quota_backend
from usage.quotas import QuotaExceeded, quota_reserve, quota_settle
from usage.rollups import usage_rollups_update
from usage.services import usage_flush
from usage.signals import billing_event
from usage.webhooks import (
    WebhookConfigError,
    WebhookSignatureInvalid,
    webhook_delivery_attempt,
    webhook_endpoint_save,
    webhook_signature,
    webhook_signature_verify,
    webhooks_sweep,
)

pytestmark = pytest.mark.django_db
threads_see_rows = pytest.mark.django_db(transaction=True)  # other threads (workers, the quota thread) read the rows

SECRET = "whsec-canary-5e1f0a9c3b7d2e48"


# --- A receiver over real HTTP ------------------------------------------------------------------------------------

class Receiver:
    """A tiny HTTP server on 127.0.0.1: each event id fails `failures` times (a 500, then a hang past the client's
    timeout), then gets 200. Keeps every request it saw and the ids it accepted."""

    def __init__(self, *, failures: int = 0, hang_seconds: float = 1.0, delay_seconds: float = 0.0) -> None:
        self.failures, self.hang_seconds, self.delay_seconds = failures, hang_seconds, delay_seconds
        self.requests: list[dict] = []
        self.accepted: list[str] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                event_id = self.headers.get("llmhub-event-id", "")
                with receiver._lock:
                    receiver.requests.append({"headers": dict(self.headers), "body": body})
                    receiver._seen[event_id] += 1
                    attempt = receiver._seen[event_id]
                time.sleep(receiver.delay_seconds)
                if attempt <= receiver.failures:
                    if attempt % 2 == 0:
                        time.sleep(receiver.hang_seconds)  # past the client's timeout
                    self._answer(500, b'{"error": "try later"}')
                    return
                with receiver._lock:
                    receiver.accepted.append(event_id)
                self._answer(200, b"ok " + b"x" * 5000)

            def _answer(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeout)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/billing"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory(settings):
    """Receivers on 127.0.0.1 (the operator allowlist opens exactly their ports, as the own-models tests do for the
    simulator); retries come at once and timeouts are short."""
    receivers = []

    def make(**options) -> Receiver:
        receiver = Receiver(**options)
        receivers.append(receiver)
        settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": [f"127.0.0.1:{r.port}" for r in receivers],
                           "WEBHOOK_RETRY_BASE_SECONDS": 0.0, "WEBHOOK_TIMEOUT_SECONDS": 0.4,
                           "BILLING_PERIOD_CLOSE_DELAY_SECONDS": 600.0}
        return receiver

    yield make
    for receiver in receivers:
        receiver.stop()


def endpoint_for(receiver: Receiver, *, secret: str = SECRET, event_types=(QUOTA_THRESHOLD, PERIOD_CLOSED),
                 name: str = "billing") -> WebhookEndpoint:
    return webhook_endpoint_save(endpoint=WebhookEndpoint(name=name, url=receiver.url, event_types=list(event_types)),
                                 secret=secret)


def event(number: int, *, type_: str = QUOTA_THRESHOLD) -> BillingEvent:
    return BillingEvent.objects.create(type=type_, dedupe_key=f"test:{number}", payload={"user_id": number})


def sweep_until_done(*, rounds: int = 10) -> None:
    """Beat's sweep, run eagerly (deliveries inline) until nothing is pending."""
    for _ in range(rounds):
        tasks.webhooks_sweep.delay()
        if not WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING).exists():
            return


def assert_each_accepted_once_and_signed(receiver: Receiver, event_ids: set[str], *, secret: str = SECRET) -> None:
    assert sorted(receiver.accepted) == sorted(event_ids)  # each event exactly once by id
    for request in receiver.requests:
        headers, body = request["headers"], request["body"]
        webhook_signature_verify(body=body, header=headers["llmhub-signature"], secret=secret)
        assert json.loads(body)["id"] == headers["llmhub-event-id"]


@pytest.fixture
def celery_worker(transactional_db):
    """A real Celery worker in a thread, on the configured broker: in memory when embedded, Redis in services mode."""
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = False
    task_postrun.connect(_connections_close, dispatch_uid="webhooks-test-worker")
    try:
        app.control.purge()
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=30) as worker:
            yield worker
    finally:
        task_postrun.disconnect(dispatch_uid="webhooks-test-worker")
        app.conf.task_always_eager = eager


def _connections_close(**kwargs) -> None:
    connections.close_all()


# --- Delivery -----------------------------------------------------------------------------------------------------

def test_it_delivers_each_event_exactly_once_to_a_receiver_that_fails_twice(receiver_factory):
    receiver = receiver_factory(failures=2)
    endpoint_for(receiver)
    events = [event(number) for number in range(3)]

    sweep_until_done()

    ids = {e.event_id for e in events}
    assert_each_accepted_once_and_signed(receiver, ids)
    assert Counter(r["headers"]["llmhub-event-id"] for r in receiver.requests) == {event_id: 3 for event_id in ids}
    deliveries = list(WebhookDelivery.objects.all())
    assert [(d.status, d.attempts, d.response_status) for d in deliveries] == [("delivered", 3, 200)] * 3
    assert all(d.response_excerpt.startswith("ok xxx") and len(d.response_excerpt) == 200 for d in deliveries)
    body = json.loads(receiver.requests[-1]["body"])
    assert set(body) == {"id", "type", "created", "data"}


@threads_see_rows
def test_it_delivers_through_a_real_celery_worker_with_countdown_retries(receiver_factory, celery_worker):
    deliver_through_the_worker(receiver_factory)


@pytest.mark.services
@threads_see_rows
def test_it_delivers_through_redis_and_postgresql_in_the_services_run(receiver_factory, celery_worker):
    from django.db import connection

    assert app.conf.broker_url.startswith("redis://") and connection.vendor == "postgresql"
    deliver_through_the_worker(receiver_factory)


def deliver_through_the_worker(receiver_factory) -> None:
    receiver = receiver_factory(failures=2)
    endpoint_for(receiver)
    events = [event(number) for number in range(3)]

    tasks.webhooks_sweep.delay()

    deadline = time.monotonic() + 30
    while WebhookDelivery.objects.filter(status="delivered").count() < len(events):
        assert time.monotonic() < deadline, list(WebhookDelivery.objects.values("status", "attempts", "last_error"))
        time.sleep(0.05)
    assert_each_accepted_once_and_signed(receiver, {e.event_id for e in events})
    assert set(WebhookDelivery.objects.values_list("attempts", flat=True)) == {3}


def test_it_marks_a_delivery_failed_after_its_attempts_and_staff_can_retry_it(receiver_factory, settings, admin_client):
    receiver = receiver_factory(failures=3)
    settings.LLMHUB = {**settings.LLMHUB, "WEBHOOK_MAX_ATTEMPTS": 2}
    endpoint_for(receiver)
    event(1)

    sweep_until_done()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("failed", 2, "timeout")
    page = admin_client.get("/admin/usage/webhookdelivery/?status=failed").content.decode()
    assert "timeout" in page and "Failed" in page

    response = admin_client.post("/admin/usage/webhookdelivery/",
                                 {"action": "retry_now", "_selected_action": [delivery.pk]})
    assert response.status_code == 302
    sweep_until_done()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 2)  # attempt 3 (500) then 4 (200) of the receiver
    assert receiver.accepted == [delivery.event.event_id]


@threads_see_rows
def test_it_never_sends_one_delivery_twice_at_once(receiver_factory):
    receiver = receiver_factory(delay_seconds=0.3)
    endpoint_for(receiver)
    event(1)
    tasks.webhooks_sweep.delay()  # dispatched and delivered once, eagerly
    WebhookDelivery.objects.update(status="pending", attempts=0)  # as if a second message came back for it
    receiver.accepted.clear()
    delivery_id = WebhookDelivery.objects.get().pk

    barrier = threading.Barrier(4)
    outcomes = []

    def attempt() -> None:
        barrier.wait()
        try:
            outcomes.append(webhook_delivery_attempt(delivery_id=delivery_id).status)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["delivered", "skipped", "skipped", "skipped"]
    assert len(receiver.accepted) == 1
    assert WebhookDelivery.objects.get().attempts == 1


def test_it_sends_only_the_event_types_an_endpoint_takes_and_nothing_to_a_disabled_one(receiver_factory):
    thresholds, closed, disabled = receiver_factory(), receiver_factory(), receiver_factory()
    endpoint_for(thresholds, event_types=[QUOTA_THRESHOLD], name="thresholds")
    endpoint_for(closed, event_types=[PERIOD_CLOSED], name="closed")
    off = endpoint_for(disabled, name="off")
    off.enabled = False
    webhook_endpoint_save(endpoint=off)
    first, second = event(1), event(2, type_=PERIOD_CLOSED)

    sweep_until_done()

    assert thresholds.accepted == [first.event_id]
    assert closed.accepted == [second.event_id]
    assert disabled.requests == []


@threads_see_rows
def test_it_sends_the_signal_once_per_event(receiver_factory):
    received = []

    def receiver(sender, event, **kwargs):
        received.append(event)

    def broken(sender, event, **kwargs):
        raise RuntimeError("an integration's bug")

    billing_event.connect(receiver, dispatch_uid="test-receiver")
    billing_event.connect(broken, dispatch_uid="test-broken")
    try:
        events = [event(1), event(2, type_=PERIOD_CLOSED)]
        webhooks_sweep()
        webhooks_sweep()
    finally:
        billing_event.disconnect(dispatch_uid="test-receiver")
        billing_event.disconnect(dispatch_uid="test-broken")
    assert [body["id"] for body in received] == [e.event_id for e in events]
    assert received[1] == {"id": events[1].event_id, "type": PERIOD_CLOSED,
                           "created": int(events[1].created_at.timestamp()), "data": {"user_id": 2}}


# --- Signatures ---------------------------------------------------------------------------------------------------

def test_it_verifies_a_signature_and_refuses_a_tampered_old_or_foreign_one():
    body = b'{"id":"evt_1","type":"quota.threshold"}'
    now = 1_764_600_000
    header = webhook_signature(secret=SECRET, timestamp=now, body=body)
    assert header.startswith(f"t={now},v1=") and len(header.split("v1=")[1]) == 64

    webhook_signature_verify(body=body, header=header, secret=SECRET, now=now + 10)
    webhook_signature_verify(body=body, header=f"{header},v1={'0' * 64}", secret=SECRET, now=now)  # one of several
    for bad in (dict(body=body + b" "), dict(secret="another-secret-0123456789"), dict(now=now + 301),
                dict(header="t=abc,v1=00"), dict(header=""), dict(header=f"t={now}")):
        arguments = {"body": body, "header": header, "secret": SECRET, "now": now, **bad}
        with pytest.raises(WebhookSignatureInvalid):
            webhook_signature_verify(**arguments)


# --- SSRF -----------------------------------------------------------------------------------------------------------

INTERNAL_URLS = ["https://127.0.0.1/hook", "https://169.254.169.254/latest/meta-data/", "https://10.1.2.3/hook",
                 "https://localhost/hook", "https://billing.internal/hook", "https://[::ffff:127.0.0.1]/hook",
                 "https://2130706433/hook", "http://example.com/hook", "file:///etc/passwd"]


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_it_refuses_an_internal_webhook_url_in_the_service(url, settings):
    settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": []}
    with pytest.raises(WebhookConfigError) as refused:
        webhook_endpoint_save(endpoint=WebhookEndpoint(name="x", url=url, event_types=[QUOTA_THRESHOLD]), secret=SECRET)
    assert refused.value.code == "unsafe_webhook_url"
    assert refused.value.message.startswith("This webhook URL is refused: ")
    assert not WebhookEndpoint.objects.exists()


def test_it_keeps_a_webhook_urls_path_as_typed(receiver_factory):
    receiver = receiver_factory()
    url = f"{receiver.url}/?account=7"
    assert endpoint_for(receiver).url == receiver.url
    endpoint = webhook_endpoint_save(endpoint=WebhookEndpoint(name="slash", url=url, event_types=[PERIOD_CLOSED]),
                                     secret=SECRET)
    assert endpoint.url == url


def test_it_refuses_an_internal_webhook_url_in_admin_and_never_echoes_the_secret(admin_client, settings):
    settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": []}
    response = admin_client.post("/admin/usage/webhookendpoint/add/", {
        "name": "metadata", "url": "http://169.254.169.254/latest/", "secret": SECRET,
        "event_types": [QUOTA_THRESHOLD], "enabled": "on"})
    page = response.content.decode()
    assert response.status_code == 200
    assert "This webhook URL is refused" in page and "cloud metadata address" in page
    assert SECRET not in page
    assert not WebhookEndpoint.objects.exists()


def test_it_refuses_at_connect_time_an_address_no_longer_allowed(receiver_factory, settings):
    receiver = receiver_factory()
    endpoint_for(receiver)
    event(1)
    settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": []}  # e.g. its name now resolves to 127.0.0.1

    tasks.webhooks_sweep.delay()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    assert delivery.last_error == "refused: the URL leads to an internal address"
    assert receiver.requests == []


# --- Secrets ----------------------------------------------------------------------------------------------------------

def test_it_keeps_the_secret_write_only_out_of_payloads_logs_admin_and_other_columns(receiver_factory, admin_client,
                                                                                     caplog):
    caplog.set_level(logging.DEBUG)
    receiver = receiver_factory(failures=1)
    response = admin_client.post("/admin/usage/webhookendpoint/add/", {
        "name": "billing", "url": receiver.url, "secret": SECRET, "event_types": [QUOTA_THRESHOLD, PERIOD_CLOSED],
        "enabled": "on"})
    assert response.status_code == 302, response.content.decode()
    endpoint = WebhookEndpoint.objects.get()
    event(1)
    sweep_until_done()

    assert_each_accepted_once_and_signed(receiver, {BillingEvent.objects.get().event_id})
    change_page = admin_client.get(f"/admin/usage/webhookendpoint/{endpoint.pk}/change/").content.decode()
    assert "A secret is stored" in change_page
    pages = [change_page, admin_client.get("/admin/usage/webhookendpoint/").content.decode(),
             admin_client.get("/admin/usage/webhookdelivery/").content.decode(),
             admin_client.get(f"/admin/usage/billingevent/{BillingEvent.objects.get().pk}/change/").content.decode()]
    for text in [*pages, caplog.text, *(json.dumps(r["headers"]) + r["body"].decode() for r in receiver.requests)]:
        assert SECRET not in text
    assert db_cells_containing(SECRET) == []  # encrypted only
    assert "webhook delivery" in caplog.text  # the attempts were logged, without it


def test_it_keeps_the_secret_when_left_blank_and_wants_it_again_with_a_new_url(receiver_factory, admin_client):
    first, second = receiver_factory(), receiver_factory()
    endpoint = endpoint_for(first)
    stored = endpoint.secret_encrypted
    url = f"/admin/usage/webhookendpoint/{endpoint.pk}/change/"

    assert admin_post(admin_client, url, name="renamed").status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.name, endpoint.secret_encrypted) == ("renamed", stored)

    form = rendered_form_data(admin_client.get(url))
    response = admin_client.post(url, {**form, "url": second.url})
    assert response.status_code == 200 and "Changing the URL requires entering the secret again" in response.content.decode()
    assert admin_client.post(url, {**form, "url": second.url, "secret": "a-new-secret-for-the-new-url"}).status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.url == second.url and endpoint.secret_encrypted != stored

    with pytest.raises(WebhookConfigError, match="at least 16"):
        webhook_endpoint_save(endpoint=endpoint, secret="short")


def test_it_rotates_webhook_secrets_with_the_encryption_key(receiver_factory, settings):
    from cryptography.fernet import Fernet

    from llmhub import crypto

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [old]
    crypto.reset_cache()
    try:
        endpoint = endpoint_for(receiver_factory())
        settings.ENCRYPTION_KEYS = [new, old]
        crypto.reset_cache()
        assert secret_rotate_all() == 1
        settings.ENCRYPTION_KEYS = [new]
        crypto.reset_cache()
        endpoint.refresh_from_db()
        assert crypto.secret_decrypt(endpoint.secret_encrypted) == SECRET
    finally:
        crypto.reset_cache()


# --- quota.threshold --------------------------------------------------------------------------------------------------

@pytest.fixture(params=["database", "redis"])
def quota_backend_name(request, settings, private_redis) -> str:
    url = (os.environ.get("REDIS_URL") or private_redis.url) if request.param == "redis" else ""
    settings.LLMHUB = {**settings.LLMHUB, "QUOTA_REDIS_URL": url}
    if url:
        import redis

        redis.Redis.from_url(url).flushdb()
    return request.param


def run_requests(user, registry, *, count: int, concurrency: bool = False) -> int:
    """`count` requests reserved and settled (10 + 5 tokens each); returns how many were admitted."""
    model = registry.models["demo"]

    async def one(number: int) -> bool:
        try:
            reservation = await quota_reserve(request_id=f"req-{time.monotonic_ns()}-{number}", user_id=user.pk,
                                              api_key_id=None, tier_slug="free", model=model, candidates=[model],
                                              prompt_tokens=10, max_tokens=5)
        except QuotaExceeded:
            return False
        await quota_settle(reservation=reservation, model=model, input_tokens=10, output_tokens=5)
        return True

    async def run() -> list[bool]:
        if concurrency:
            return await asyncio.gather(*(one(number) for number in range(count)))
        return [await one(number) for number in range(count)]

    admitted = sum(asyncio.run(run()))
    asyncio.run(quota_backend().counters([]))  # the database back end's settles, queued before it, are done
    usage_flush()  # the Redis back end's events are in the writer's queue
    return admitted


@threads_see_rows
def test_it_writes_each_threshold_once_at_80_and_100_percent(quota_backend_name, registry, make_user):
    user = make_user("metered", tier="free")
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="requests", period="day", limit=Decimal(10))
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="tokens", period="month", limit=Decimal(1000))

    assert run_requests(user, registry, count=7) == 7
    assert not BillingEvent.objects.exists()
    assert run_requests(user, registry, count=5) == 3  # the 8th crosses 80%, the 10th 100%, two refused

    events = list(BillingEvent.objects.order_by("pk"))
    assert [(e.type, e.payload["percent"], e.payload["used"]) for e in events] == [
        (QUOTA_THRESHOLD, 80, 8), (QUOTA_THRESHOLD, 100, 10)]
    data = events[0].payload
    assert data["user_id"] == user.pk and data["api_key_id"] is None and data["scope"] == "user"
    assert data["limit"] == {"metric": "requests", "period": "day", "model": None, "limit": 10}
    assert data["threshold"] == 8
    assert data["period_start"] < data["period_end"]
    assert len({e.dedupe_key for e in events}) == 2


@threads_see_rows
def test_it_writes_a_threshold_once_under_concurrency(quota_backend_name, registry, make_user):
    user = make_user("busy", tier="free")
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="requests", period="day", limit=Decimal(50))

    assert run_requests(user, registry, count=80, concurrency=True) == 50

    assert sorted(e.payload["percent"] for e in BillingEvent.objects.all()) == [80, 100]


# --- usage.period_closed ----------------------------------------------------------------------------------------------

def usage_rows(user_ids, *, day: datetime) -> None:
    rows = []
    for number in range(40):
        rows.append(UsageLog(request_id=f"closed-{number}", user_id=user_ids[number % len(user_ids)],
                             endpoint="v1.chat_completions", tier="free", requested_model="demo",
                             answered_model=["demo", "demo-backup"][number % 3 == 0], status=["ok", "error"][number % 5 == 0],
                             http_status=200, input_tokens=10 + number, output_tokens=number, cost=Decimal(number) / 1000,
                             latency_ms=100.0, created_at=day + timedelta(hours=number % 24, minutes=number)))
    UsageLog.objects.bulk_create(rows)


def rolled_up(now: datetime) -> None:
    usage_rollups_update(now=now)
    usage_rollups_update(now=now + timedelta(minutes=5))  # past the settle time: rolled up for good


def test_it_closes_a_day_and_its_month_with_the_roll_ups_totals_once(make_user, receiver_factory, settings):
    receiver_factory()
    alice, bob = make_user("alice", tier=None), make_user("bob", tier=None)
    last_day = datetime(2026, 11, 30, tzinfo=UTC)
    usage_rows([alice.pk, bob.pk, None], day=last_day)
    now = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    BillingState.objects.create(pk=1, closed_through=last_day.date() - timedelta(days=1))

    assert billing_periods_close(now=now) == 0  # not rolled up yet
    rolled_up(now)
    assert billing_periods_close(now=now - timedelta(minutes=25)) == 0  # not 10 minutes past midnight yet
    assert billing_periods_close(now=now) == 4  # a day and a month for each user; none for system usage
    assert billing_periods_close(now=now) == 0  # once
    assert BillingState.objects.get().closed_through == last_day.date()

    for user in (alice, bob):
        day_rollups = UsageRollup.objects.filter(period="day", bucket_start=last_day, user=user)
        expected = day_rollups.aggregate(requests=Sum("requests"), errors=Sum("errors"), input_tokens=Sum("input_tokens"),
                                         output_tokens=Sum("output_tokens"), cost=Sum("cost"))
        raw = UsageLog.objects.filter(user=user).aggregate(requests=Count("pk"), cost=Sum("cost"))
        for period in ("day", "month"):
            data = BillingEvent.objects.get(dedupe_key=f"{PERIOD_CLOSED}:{user.pk}:{period}:"
                                                       f"{'2026-11-30' if period == 'day' else '2026-11'}").payload
            totals = data["totals"]
            assert {**totals, "cost": Decimal(totals["cost"])} == expected
            assert (totals["requests"], Decimal(totals["cost"])) == (raw["requests"], raw["cost"])
            assert sum(model["requests"] for model in data["by_model"]) == totals["requests"]
            assert data["period_end"] == "2026-12-01T00:00:00+00:00"


def test_it_starts_with_yesterday_and_closes_days_in_order(make_user, settings):
    settings.LLMHUB = {**settings.LLMHUB, "BILLING_PERIOD_CLOSE_DELAY_SECONDS": 0}
    alice = make_user("alice", tier=None)
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    usage_rows([alice.pk], day=datetime(2026, 11, 19, tzinfo=UTC))
    rolled_up(now)

    assert billing_periods_close(now=now) == 1
    assert BillingState.objects.get().closed_through.isoformat() == "2026-11-19"
    assert billing_periods_close(now=now + timedelta(days=2)) == 0  # two more days, nobody used them
    assert BillingState.objects.get().closed_through.isoformat() == "2026-11-21"


# --- End to end -------------------------------------------------------------------------------------------------------

@threads_see_rows
def test_it_signs_and_delivers_the_thresholds_of_requests_through_the_hub(live_hub, free_user, api_key_for,
                                                                          receiver_factory):
    """The quota back end of the mode under test (the database embedded, Redis in the services run) settles real
    /v1 requests; their thresholds reach a receiver that fails twice, each once."""
    import openai

    receiver = receiver_factory(failures=2)
    endpoint_for(receiver, event_types=[QUOTA_THRESHOLD])
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="requests", period="day", limit=Decimal(5))
    sdk = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(free_user), max_retries=0, timeout=10)
    for _ in range(5):
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=8)

    deadline = time.monotonic() + 10
    while BillingEvent.objects.count() < 2:
        assert time.monotonic() < deadline
        usage_flush()
        time.sleep(0.02)
    sweep_until_done()

    events = list(BillingEvent.objects.order_by("pk"))
    assert [(e.payload["percent"], e.payload["used"], e.payload["user_id"]) for e in events] == [
        (80, 4, free_user.pk), (100, 5, free_user.pk)]
    assert_each_accepted_once_and_signed(receiver, {e.event_id for e in events})


def test_it_prunes_old_events_once_no_delivery_is_pending(receiver_factory):
    from usage.billing import billing_events_prune

    endpoint = endpoint_for(receiver_factory())
    old, pending, recent = event(1), event(2), event(3)
    webhooks_sweep()  # dispatched: a delivery each, pending
    WebhookDelivery.objects.filter(event__in=[old, recent]).update(status="delivered")
    BillingEvent.objects.filter(pk__in=[old.pk, pending.pk]).update(created_at=old.created_at - timedelta(days=91))

    assert billing_events_prune() == 1
    assert set(BillingEvent.objects.values_list("pk", flat=True)) == {pending.pk, recent.pk}
    assert WebhookDelivery.objects.filter(endpoint=endpoint).count() == 2


def test_it_counts_an_undecryptable_secret_as_a_failed_attempt(receiver_factory):
    receiver = receiver_factory()
    WebhookEndpoint.objects.filter(pk=endpoint_for(receiver).pk).update(secret_encrypted="gAAAAA-not-a-token")
    event(1)

    tasks.webhooks_sweep.delay()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.claimed_until) == ("pending", 1, None)
    assert delivery.last_error == "the secret cannot be decrypted: enter it again"
    assert receiver.requests == []
