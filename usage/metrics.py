"""Prometheus metrics (`GET /metrics`, served by llmhub/asgi.py), cheap on the request path.

What a request leaves behind is counted from its usage row, by the usage writer's thread
(`usage_metrics_observe`, called once per batch of fresh rows): requests, tokens, cost, latency and TTFT
cost the request path nothing. Only what leaves no usage row is counted where it happens: requests in flight
(plain integers, published to the gauge by a sampler thread: `InFlight`), quota refusals (a refusal leaves no
row) and upstream errors (per failed attempt: a request answered by a fallback has one row for several
attempts), the last two on failure paths only.

With several processes (`uvicorn --workers N`) every process writes its values to the folder that
usage/metrics_process.py prepares and a scrape sums them (prometheus_client's multi-process mode).
"""

import hmac
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING

from django.conf import settings
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from usage.metrics_process import ENVIRONMENT_VARIABLE, dead_workers_mark

if TYPE_CHECKING:
    from usage.entries import UsageEntry

logger = logging.getLogger(__name__)

# Whether values go to the shared folder: decided by prometheus_client when first imported (see metrics_process).
MULTIPROCESS: bool = getattr(values.ValueClass, "_multiprocess", False)

# Seconds. A gateway's requests run from milliseconds (a refusal, a cached model) to minutes (a long generation).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60)

# Labels: `endpoint` as the usage log names it (v1.chat_completions, api.generate, api.translate, model_test, …),
# `model` the model asked for (a model's public id; users' own models by their id too).
REQUESTS = Counter("llmhub_requests", "Requests answered or attempted (one per usage row), by outcome.",
                   ["endpoint", "model", "status", "code"])
TOKENS = Counter("llmhub_tokens", "Tokens used, input (prompt) and output (completion).",
                 ["endpoint", "model", "direction"])
COST = Counter("llmhub_cost", "Cost billed, in the models' price currency.", ["endpoint", "model"])
LATENCY = Histogram("llmhub_request_duration_seconds", "Time from a request's start to its last byte.",
                    ["endpoint", "model"], buckets=LATENCY_BUCKETS)
TTFT = Histogram("llmhub_time_to_first_token_seconds", "Streams: time from the request's start to its first token.",
                 ["endpoint", "model"], buckets=TTFT_BUCKETS)
QUOTA_REFUSALS = Counter("llmhub_quota_refusals", "Requests refused by a quota (429), by the limit that refused.",
                         ["metric", "period", "scope"])
QUOTA_UNAVAILABLE = Counter("llmhub_quota_unavailable", "Requests refused because the quota back end could not "
                            "decide (503).")
UPSTREAM_ERRORS = Counter("llmhub_upstream_errors", "Failed upstream attempts (a fallback may have answered), by kind.",
                          ["model", "kind"])
IN_FLIGHT = Gauge("llmhub_requests_in_flight", "Generation requests being served now (sampled every 0.25 s).",
                  ["endpoint"], multiprocess_mode="livesum")

IN_FLIGHT_SAMPLE_SECONDS = 0.25


class InFlight:
    """Requests this process is serving, per endpoint. The request path only adds and subtracts plain integers
    (llmhub/asgi.py, on the event loop's thread: about 0.1 µs a request, where the gauge's memory-mapped
    increment and decrement measured 2 to 5 µs); a daemon thread publishes the counts to the gauge every
    IN_FLIGHT_SAMPLE_SECONDS when they changed."""

    PATHS = {"/v1/chat/completions": "v1.chat_completions", "/v1/chat/completions/": "v1.chat_completions",
             "/api/generate/": "api.generate", "/api/translate/": "api.translate"}

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.PATHS.values(), 0)
        self._published = dict.fromkeys(self.counts, None)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def sampler_start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="metrics-in-flight", daemon=True)
                self._thread.start()

    def publish(self) -> None:
        for endpoint, count in list(self.counts.items()):
            if count != self._published[endpoint]:
                IN_FLIGHT.labels(endpoint).set(count)
                self._published[endpoint] = count

    def _run(self) -> None:
        while True:
            try:
                self.publish()
            except Exception:
                logger.exception("in-flight gauge not published")
            time.sleep(IN_FLIGHT_SAMPLE_SECONDS)


in_flight = InFlight()


def usage_metrics_observe(entries: Iterable["UsageEntry"]) -> None:
    """Counts a batch of usage rows (on the usage writer's thread). Summed per label set first: a batch of 500
    rows of one model costs one counter update per label set, plus one histogram observation per row. Never
    raises: metrics must not hold up the usage log."""
    try:
        _observe(entries)
    except Exception:
        logger.exception("usage metrics: a batch of usage rows could not be counted")


def _observe(entries: Iterable["UsageEntry"]) -> None:
    requests: dict[tuple, int] = defaultdict(int)
    spent: dict[tuple, list] = defaultdict(lambda: [0, 0, Decimal(0)])
    latencies: dict[tuple, Histogram] = {}
    ttfts: dict[tuple, Histogram] = {}
    for entry in entries:
        if not hasattr(entry, "endpoint"):  # a billing event queued among the rows (usage/billing.py)
            continue
        labels = (entry.endpoint, entry.requested_model)
        requests[(*labels, entry.status, str(entry.http_status))] += 1
        totals = spent[labels]
        totals[0] += entry.input_tokens
        totals[1] += entry.output_tokens
        totals[2] += entry.cost
        if (latency := latencies.get(labels)) is None:
            latency = latencies[labels] = LATENCY.labels(*labels)
        latency.observe(entry.latency_ms / 1000)
        if entry.ttft_ms is not None:
            if (ttft := ttfts.get(labels)) is None:
                ttft = ttfts[labels] = TTFT.labels(*labels)
            ttft.observe(entry.ttft_ms / 1000)
    for labels, count in requests.items():
        REQUESTS.labels(*labels).inc(count)
    for labels, (input_tokens, output_tokens, cost) in spent.items():
        if input_tokens:
            TOKENS.labels(*labels, "input").inc(input_tokens)
        if output_tokens:
            TOKENS.labels(*labels, "output").inc(output_tokens)
        if cost:
            COST.labels(*labels).inc(float(cost))


def quota_refusal_count(*, metric: str, period: str, scope: str) -> None:
    QUOTA_REFUSALS.labels(metric, period, scope).inc()


def quota_unavailable_count() -> None:
    QUOTA_UNAVAILABLE.inc()


def upstream_error_count(*, model: str, kind: str) -> None:
    UPSTREAM_ERRORS.labels(model, kind).inc()


# --- Scrapes ------------------------------------------------------------------------------------------------

def metrics_access(*, authorization: bytes, client_host: str | None) -> tuple[int, str] | None:
    """None when a scrape may read the metrics, else its refusal (HTTP status, error code).

    With `LLMHUB_METRICS_TOKEN` set, a scrape must send `Authorization: Bearer <token>` (compared in constant time).
    Without it, /metrics is open only in the embedded mode and only to loopback clients (a developer's machine);
    in production it stays closed until a token is set: metrics name models and volumes."""
    token = settings.LLMHUB["METRICS_TOKEN"]
    if token:
        scheme, _, given = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token.encode()):
            return None
        return 401, "invalid_metrics_token"
    if settings.EMBEDDED and client_host in ("127.0.0.1", "::1"):
        return None
    return 403, "metrics_token_unset"


def metrics_exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, summed over every process of this server; and its content type.
    Reads a few small files: call it off the event loop."""
    if not MULTIPROCESS:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    folder = os.environ[ENVIRONMENT_VARIABLE]
    dead_workers_mark(folder)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    return generate_latest(registry), CONTENT_TYPE_LATEST
