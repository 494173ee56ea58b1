"""ASGI entry point: /v1 goes to the lean OpenAI-compatible app, everything else to Django."""

import gc
import logging
import os

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.http.request import split_domain_port, validate_host

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmhub.settings")

django_application = get_asgi_application()

from generation import openai_compat  # noqa: E402  (needs the app registry ready)
from generation.client import clients_close  # noqa: E402
from llmhub import memory  # noqa: E402
from usage.quotas import quota_settles_drain  # noqa: E402
from usage.writer import asgi_lifespan  # noqa: E402

# Everything imported so far (Django, the SDK's models) lives as long as the process. Frozen, it leaves the
# collector's generations, so a full collection no longer walks it (about 65 ms each: the p99 spikes);
# `make bench` measured the p99 at concurrency 16 about halved.
gc.collect()
gc.freeze()
memory.report_install()  # only with LLMHUB_MEMORY_REPORT set (a `make soak` diagnostic)


async def _lifespan(scope, receive, send) -> None:
    """Shutdown comes after uvicorn drained every connection: the last settles reach the quota back end, the
    upstream pools close, then the usage writer writes what is queued."""

    async def receive_closing_clients() -> dict:
        message = await receive()
        if message["type"] == "lifespan.shutdown":
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


async def application(scope, receive, send) -> None:
    if scope["type"] == "http" and scope["path"].startswith("/v1/"):
        if (host := host_refused(scope)) is not None:
            await _refuse_host(host, send)
            return
        await openai_compat.application(scope, receive, send)
    elif scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
    else:
        await django_application(scope, receive, send)
