"""ASGI entry point: /v1 goes to the lean OpenAI-compatible app, /metrics to Prometheus's exposition, everything else
to Django."""

import gc

# No collection while the app is imported: the openai SDK alone defines thousands of classes, and the collector
# walked them again and again (about a tenth of the import's CPU time); the freeze follows.
gc.disable()

import asyncio  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http.request import split_domain_port, validate_host  # noqa: E402

from usage.metrics_process import metrics_folder_prepare  # noqa: E402  (imports nothing of prometheus_client)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmhub.settings")

# Before anything imports prometheus_client: its multi-process folder is read once, at that import.
metrics_folder_prepare(settings.LLMHUB["METRICS_DIR"])

django_application = get_asgi_application()

from generation import openai_app, openai_compat  # noqa: E402  (needs the app registry ready)
from generation.client import clients_close  # noqa: E402
from generation.openai_edge import is_mistaken_path, mistaken_path_message  # noqa: E402
from llmhub import memory  # noqa: E402
from usage.metrics import in_flight, metrics_access, metrics_exposition  # noqa: E402
from usage.quotas import quota_settles_drain  # noqa: E402
from usage.writer import asgi_lifespan  # noqa: E402

# Everything imported so far (Django, the SDK's models) lives as long as the process. Frozen, it leaves the
# collector's generations, so a full collection no longer walks it (about 65 ms each: the p99 spikes);
# `make bench` measured the p99 at concurrency 16 about halved. No collection before the freeze: the import leaves
# about 3,000 garbage objects, and collecting them walked every object (0.1-0.3 s of the start-up).
gc.freeze()
gc.enable()
memory.report_install()  # only with LLMHUB_MEMORY_REPORT set (a `make soak` diagnostic)
in_flight.sampler_start()


# What the first requests import and build (the SDK's resources, the snapshots, the routes) lives as long as the
# process too, but came after the freeze above: a full collection walked it every time (about 40,000 objects, a
# full collection every few seconds at concurrency 16: the p99). Frozen as well once it is there, twice, then never
# again (a freeze also keeps whatever requests have in flight at that moment, and their cycles are never collected).
WARM_FREEZE_SECONDS = (10.0, 60.0)


def _warm_freeze_schedule() -> None:
    loop = asyncio.get_running_loop()
    for delay in WARM_FREEZE_SECONDS:
        loop.call_later(delay, gc.freeze)


async def _lifespan(scope, receive, send) -> None:
    """Shutdown comes after uvicorn drained every connection: the last settles reach the quota back end, the
    upstream pools close, then the usage writer writes what is queued."""

    async def receive_closing_clients() -> dict:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _warm_freeze_schedule()
        elif message["type"] == "lifespan.shutdown":
            await quota_settles_drain()
            await clients_close()
        return message

    await asgi_lifespan(scope, receive_closing_clients, send)


security_logger = logging.getLogger("django.security.DisallowedHost")


def _raw_host(scope) -> str:
    """The host the request names, read as Django's HttpRequest.get_host() reads it."""
    headers = dict(scope["headers"])
    if settings.USE_X_FORWARDED_HOST and b"x-forwarded-host" in headers:
        return headers[b"x-forwarded-host"].decode("latin-1")
    if b"host" in headers:
        return headers[b"host"].decode("latin-1")
    server_name, port = scope.get("server") or ("", None)
    return f"{server_name}:{port}" if port not in (None, 80, 443) else server_name


def host_refused(scope) -> str | None:
    """The request's host when ALLOWED_HOSTS refuses it (Django's own rule, DEBUG's localhost default included),
    else None: /v1 bypasses Django's request machinery, so it checks what Django would."""
    host = _raw_host(scope)
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    domain, _ = split_domain_port(host)
    return None if domain and validate_host(domain, allowed_hosts) else host


async def _refuse_host(host: str, send) -> None:
    security_logger.warning("Invalid HTTP_HOST header on /v1: %r.", host)
    body = openai_compat.error_payload(status=400, message=f"Invalid Host header: {host!r}.", code="disallowed_host")
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _authorization(scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value
    return b""


_METRICS_REFUSALS = {401: "Send 'Authorization: Bearer <LLMHUB_METRICS_TOKEN>'.",
                     403: "Set LLMHUB_METRICS_TOKEN to open /metrics to scrapers that send it."}


async def _metrics(scope, receive, send) -> None:
    """GET /metrics: Prometheus's text format, for a scrape the token (or the embedded default) lets in."""
    headers = []
    refusal = metrics_access(authorization=_authorization(scope), client_host=(scope.get("client") or ("",))[0])
    if scope["method"] not in ("GET", "HEAD"):
        status, code = 405, "method_not_allowed"
        headers.append((b"allow", b"GET, HEAD"))
    elif refusal is not None:
        status, code = refusal
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="metrics"'))
    else:
        status, code = 200, ""
    if status == 200:
        body, content_type = await asyncio.to_thread(metrics_exposition)
    else:
        body = openai_compat.error_payload(status=status, message=_METRICS_REFUSALS.get(status, "Use GET."), code=code)
        content_type = "application/json"
    headers += [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


async def application(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
        return
    if scope["type"] != "http":
        await django_application(scope, receive, send)
        return
    path = scope["path"]
    is_v1 = path.startswith("/v1/")
    if is_v1 or path == "/metrics" or is_mistaken_path(scope):
        if (host := host_refused(scope)) is not None:
            await _refuse_host(host, send)
            return
        if path == "/metrics":
            await _metrics(scope, receive, send)
            return
        if not is_v1:
            await openai_app.application(scope, receive, send, mistaken=mistaken_path_message(scope))
            return
    app = openai_app.application if is_v1 else django_application
    endpoint = in_flight.PATHS.get(path)
    if endpoint is None:
        await app(scope, receive, send)
        return
    in_flight.counts[endpoint] += 1  # on the event loop's thread only: no lock needed
    try:
        await app(scope, receive, send)
    finally:
        in_flight.counts[endpoint] -= 1
