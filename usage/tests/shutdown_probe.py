"""Run in a subprocess by the shutdown tests: every process that imports it queues PROBE_ROWS usage rows,
then (under uvicorn) serves Django. The tests set a flush interval of an hour, so the rows reach the
database only through the writer's exit flush."""

import os

from django.core.asgi import get_asgi_application

application = get_asgi_application()

from usage.services import UsageEntry, usage_record  # noqa: E402  (needs the app registry ready)

for number in range(int(os.environ["PROBE_ROWS"])):
    usage_record(UsageEntry(request_id=f"exit-{os.getpid()}-{number}", endpoint="api.generate", status="ok",
                            http_status=200, latency_ms=1.0))
print("queued", os.getpid(), flush=True)
