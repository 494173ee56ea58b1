"""Run in a subprocess by the shutdown tests: every process that imports it queues PROBE_ROWS usage rows,
then (under uvicorn) serves Django, with the lifespan protocol routed as llmhub's ASGI app should route
it. The tests set a flush interval of an hour, so the rows reach the database only through an exit flush."""

import os

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()

from usage.services import UsageEntry, usage_record  # noqa: E402  (needs the app registry ready)
from usage.writer import asgi_lifespan  # noqa: E402


async def application(scope, receive, send) -> None:
    handler = asgi_lifespan if scope["type"] == "lifespan" else django_application
    await handler(scope, receive, send)


for number in range(int(os.environ["PROBE_ROWS"])):
    usage_record(UsageEntry(request_id=f"exit-{os.getpid()}-{number}", endpoint="api.generate", status="ok",
                            http_status=200, latency_ms=1.0))
print("queued", os.getpid(), flush=True)
