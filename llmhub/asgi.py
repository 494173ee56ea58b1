"""ASGI entry point: /v1 goes to the lean OpenAI-compatible app, everything else to Django."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmhub.settings")

django_application = get_asgi_application()

from generation import openai_compat  # noqa: E402  (needs the app registry ready)
from usage.writer import asgi_lifespan  # noqa: E402


async def application(scope, receive, send) -> None:
    if scope["type"] == "http" and scope["path"].startswith("/v1/"):
        await openai_compat.application(scope, receive, send)
    elif scope["type"] == "lifespan":
        # Shutdown comes after uvicorn drained every connection: the usage writer writes what is queued.
        await asgi_lifespan(scope, receive, send)
    else:
        await django_application(scope, receive, send)
