"""Signed webhooks: billing events (usage/billing.py) POSTed to the endpoints staff configure in admin.

- **Endpoints**: a URL checked by the SSRF guard of users' own models (registry/ssrf.py) when saved and again at
  connect time (DNS rebinding, no redirects followed), a secret that is write-only (encrypted at rest like API
  keys, never shown, logged or sent), the event types it takes, enabled or not.
- **Signature**, like Stripe's: `llmhub-signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, with
  the event's id in `llmhub-event-id`. `webhook_signature_verify` is what a receiver runs (README shows it).
- **Delivery**, at least once: one `WebhookDelivery` per event and endpoint. An attempt first claims the row with
  a conditional UPDATE (pending, due, and not claimed by a live attempt), so two workers never send it at the
  same time; the claim is a lease, so a worker killed mid-attempt leaves a row the next sweep retries. No
  transaction is held during the POST. A 2xx is delivered; anything else (a timeout, a refused address, 3xx,
  4xx, 5xx) is retried after base x 2^(attempt-1) seconds (capped, ±10% jitter), up to WEBHOOK_MAX_ATTEMPTS, then
  marked failed (admin lists it and can retry it). Only the first 200 characters of a response are kept.
  Receivers de-duplicate by event id: a retry after a lost answer sends the same event again.
"""

import functools
import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx2
from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from llmhub.crypto import secret_decrypt, secret_encrypt
from llmhub.errors import ApplicationError, ConfigurationError
from registry.ssrf import UnsafeURL, safe_sync_http_client, ssrf_refusal, validate_user_base_url
from usage.billing import EVENT_TYPES, billing_event_body, billing_events_dispatch
from usage.models import WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "llmhub-signature"
EVENT_ID_HEADER = "llmhub-event-id"
SIGNATURE_TOLERANCE_SECONDS = 300
MIN_SECRET_LENGTH = 16
EXCERPT_CHARS = 200
QUEUED_GRACE_SECONDS = 60  # a queued task not started by then is queued again by the sweep


class WebhookConfigError(ApplicationError):
    status = 400
    code = "invalid_webhook"

    def __init__(self, message: str, *, code: str, field: str) -> None:
        super().__init__(message, code=code, extra={"field": field})


class WebhookSignatureInvalid(ValueError):
    """The signature header is missing, malformed, too old, or matches no signature of the body."""


def _config(name: str):
    return settings.LLMHUB[name]


# --- Endpoints ------------------------------------------------------------------------------------------------

def webhook_url_validate(url: str) -> str:
    """`url` as typed (its path too: a receiver may need its trailing slash), or WebhookConfigError (400, code
    `unsafe_webhook_url`) saying why llmhub may not POST to it: internal addresses (loopback, private, link-local,
    metadata, local names) are refused unless the operator allowlist (LLMHUB_SSRF_ALLOWLIST) names the host.
    Resolves the host name (call it off the event loop)."""
    try:
        validate_user_base_url(url)
        return url
    except UnsafeURL as error:
        message = error.message.replace("a base URL", "a webhook URL")
        raise WebhookConfigError(f"This webhook URL is refused: {message}.", code="unsafe_webhook_url",
                                 field="url") from None


def _secret_checked(secret: str) -> str:
    secret = secret.strip()
    if len(secret) < MIN_SECRET_LENGTH or not secret.isascii() or not secret.isprintable():
        raise WebhookConfigError(f"A webhook secret needs at least {MIN_SECRET_LENGTH} printable ASCII characters.",
                                 code="invalid_webhook_secret", field="secret")
    return secret


def _event_types_checked(event_types: list[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown or not event_types:
        raise WebhookConfigError(f"Choose event types among {', '.join(EVENT_TYPES)}.", code="invalid_event_types",
                                 field="event_types")
    return [event_type for event_type in EVENT_TYPES if event_type in event_types]


def webhook_endpoint_check(*, endpoint: WebhookEndpoint, url: str, secret: str | None,
                           event_types: list[str]) -> tuple[str, list[str]]:
    """The normalised URL and event types of `endpoint` edited to these values, or WebhookConfigError. A new
    endpoint needs a secret; one whose URL changes needs it entered again (signed events never go to a new host
    under the old secret)."""
    url = webhook_url_validate(url)
    event_types = _event_types_checked(list(event_types or []))
    if secret:
        _secret_checked(secret)
    elif endpoint.pk is None or not endpoint.secret_encrypted:
        raise WebhookConfigError("A webhook endpoint needs a secret.", code="webhook_secret_required", field="secret")
    elif WebhookEndpoint.objects.filter(pk=endpoint.pk).exclude(url=url).exists():
        raise WebhookConfigError("Changing the URL requires entering the secret again.",
                                 code="webhook_secret_required", field="secret")
    return url, event_types


def webhook_endpoint_save(*, endpoint: WebhookEndpoint, secret: str | None = None) -> WebhookEndpoint:
    """Checks (webhook_endpoint_check) and saves `endpoint`, new or edited, storing `secret` encrypted when given."""
    endpoint.url, endpoint.event_types = webhook_endpoint_check(endpoint=endpoint, url=endpoint.url, secret=secret,
                                                                event_types=endpoint.event_types)
    if secret:
        endpoint.secret_encrypted = secret_encrypt(secret.strip())
    endpoint.save()
    return endpoint


# --- Signatures -----------------------------------------------------------------------------------------------

def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """The `llmhub-signature` header of `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def webhook_signature_verify(*, body: bytes, header: str, secret: str,
                             tolerance_seconds: int = SIGNATURE_TOLERANCE_SECONDS, now: float | None = None) -> None:
    """For receivers: raises WebhookSignatureInvalid unless `header` (the `llmhub-signature` value) signs the raw
    `body` with `secret` and its timestamp is within `tolerance_seconds` of `now` (a replayed old request fails).
    Compare against the body exactly as received, before any JSON parsing."""
    try:
        parts = [item.split("=", 1) for item in header.split(",")]
        timestamp = int(next(value for name, value in parts if name.strip() == "t"))
        signatures = [value.strip() for name, value in parts if name.strip() == "v1"]
    except (ValueError, StopIteration, AttributeError):
        raise WebhookSignatureInvalid("malformed signature header") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        raise WebhookSignatureInvalid("timestamp outside the tolerance")
    expected = webhook_signature(secret=secret, timestamp=timestamp, body=body).rsplit("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, signature) for signature in signatures):
        raise WebhookSignatureInvalid("no signature matches")


def webhook_body(event) -> bytes:
    """The exact bytes POSTed (and signed) for `event`: the same for every attempt."""
    return json.dumps(billing_event_body(event), separators=(",", ":"), sort_keys=True).encode()


# --- Delivery -------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    status: str  # "delivered", "retry", "failed", or "skipped" (not claimable: delivered, not due, taken)
    retry_in: float | None = None


def webhooks_sweep(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Dispatches new events, then returns the ids of deliveries due now with no task queued for them, marking
    them queued (for QUEUED_GRACE_SECONDS): the caller enqueues one `webhook_deliver` per id."""
    while billing_events_dispatch():
        pass
    now = now or timezone.now()
    due = list(WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now,
                                              endpoint__enabled=True)
               .filter(Q(queued_until__isnull=True) | Q(queued_until__lt=now))
               .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
               .order_by("next_attempt_at").values_list("pk", flat=True)[:limit])
    if due:
        WebhookDelivery.objects.filter(pk__in=due).update(queued_until=now + timedelta(seconds=QUEUED_GRACE_SECONDS))
    return due


def _lease_seconds() -> float:
    # Longer than any attempt can take (its timeouts, the task's time limit), so a live attempt keeps its claim.
    return max(60.0, 6 * _config("WEBHOOK_TIMEOUT_SECONDS"))


def webhook_delivery_attempt(*, delivery_id: int, queued_retry: bool = False) -> AttemptOutcome:
    """One attempt of a delivery, if it is pending, due and not claimed by another attempt (else "skipped").
    `queued_retry`: the caller will queue a task for the retry (Celery's countdown), so the sweep leaves it alone."""
    delivery = WebhookDelivery.objects.select_related("event", "endpoint").filter(pk=delivery_id).first()
    if delivery is None or not delivery.endpoint.enabled:
        return AttemptOutcome("skipped")
    now = timezone.now()
    lease = now + timedelta(seconds=_lease_seconds())
    claimed = (WebhookDelivery.objects
               .filter(pk=delivery_id, status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now + timedelta(seconds=1))
               .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
               .update(claimed_until=lease, attempts=F("attempts") + 1, last_attempt_at=now))
    if not claimed:
        return AttemptOutcome("skipped")
    attempt = WebhookDelivery.objects.values_list("attempts", flat=True).get(pk=delivery_id)
    status, excerpt, error = _post(delivery, attempt=attempt)
    done = timezone.now()
    fields = {"claimed_until": None, "queued_until": None, "response_status": status, "response_excerpt": excerpt,
              "last_error": error}
    if not error:
        outcome = AttemptOutcome("delivered")
        fields |= {"status": WebhookDelivery.Status.DELIVERED, "delivered_at": done}
    elif attempt >= _config("WEBHOOK_MAX_ATTEMPTS"):
        outcome = AttemptOutcome("failed")
        fields |= {"status": WebhookDelivery.Status.FAILED}
    else:
        delay = _backoff(attempt)
        outcome = AttemptOutcome("retry", retry_in=delay)
        fields |= {"next_attempt_at": done + timedelta(seconds=delay)}
        if queued_retry:
            fields["queued_until"] = done + timedelta(seconds=delay + QUEUED_GRACE_SECONDS)
    # Only while the claim is still ours: an attempt that outlived its lease leaves the row to the one after it.
    WebhookDelivery.objects.filter(pk=delivery_id, claimed_until=lease).update(**fields)
    log = logger.info if outcome.status == "delivered" else logger.warning
    log("webhook delivery %s (event %s, endpoint %s) attempt %d: %s", delivery_id, delivery.event.event_id,
        delivery.endpoint_id, attempt, error or "delivered")
    return outcome


def _backoff(attempt: int) -> float:
    delay = min(_config("WEBHOOK_RETRY_BASE_SECONDS") * 2 ** (attempt - 1), _config("WEBHOOK_RETRY_MAX_SECONDS"))
    return delay * random.uniform(0.9, 1.1)  # noqa: S311 (jitter, not security)


def _post(delivery: WebhookDelivery, *, attempt: int) -> tuple[int | None, str, str]:
    """POSTs the event; returns (HTTP status or None, response excerpt, error or "" when delivered)."""
    body = webhook_body(delivery.event)
    try:
        secret = secret_decrypt(delivery.endpoint.secret_encrypted)
    except ConfigurationError:  # encrypted under a key no longer configured: staff enter the secret again
        return None, "", "the secret cannot be decrypted: enter it again"
    headers = {"content-type": "application/json", "user-agent": "llmhub-webhooks/1",
               EVENT_ID_HEADER: delivery.event.event_id, "llmhub-event-type": delivery.event.type,
               "llmhub-delivery-attempt": str(attempt),
               SIGNATURE_HEADER: webhook_signature(secret=secret, timestamp=int(time.time()), body=body)}
    client = _client(tuple(_config("SSRF_ALLOWLIST")), _config("WEBHOOK_TIMEOUT_SECONDS"))
    try:
        with client.stream("POST", delivery.endpoint.url, content=body, headers=headers) as response:
            excerpt = _excerpt(response)
            error = "" if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
            return response.status_code, excerpt, error
    except httpx2.TimeoutException:
        return None, "", "timeout"
    except httpx2.HTTPError as error:
        if ssrf_refusal(error) is not None:
            return None, "", "refused: the URL leads to an internal address"
        return None, "", "connection failed"


@functools.lru_cache(maxsize=4)
def _client(allowlist: tuple[str, ...], timeout: float) -> httpx2.Client:
    """One client per process (and configuration): building one loads the CA certificates, about 0.3 s. It checks
    every address it connects to (registry/ssrf.py) and follows no redirect."""
    return safe_sync_http_client(timeout=httpx2.Timeout(timeout, connect=min(timeout, 3.0)), allowlist=allowlist)


def _excerpt(response: httpx2.Response) -> str:
    """The start of the response body, as printable text; the rest is never read."""
    for chunk in response.iter_raw(1024):
        text = chunk.decode("utf-8", errors="replace")
        return "".join(char if char.isprintable() else " " for char in text)[:EXCERPT_CHARS]
    return ""


def webhook_deliveries_retry(*, delivery_ids: list[int]) -> int:
    """Staff's "retry now": failed or pending deliveries get a fresh round of attempts, due at once."""
    return (WebhookDelivery.objects.filter(pk__in=delivery_ids)
            .exclude(status=WebhookDelivery.Status.DELIVERED)
            .update(status=WebhookDelivery.Status.PENDING, attempts=0, next_attempt_at=timezone.now(),
                    queued_until=None))
