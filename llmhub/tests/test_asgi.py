"""llmhub/asgi.py: /v1 goes to the lean OpenAI-compatible app, which enforces ALLOWED_HOSTS as Django does."""

import http.client
import json
from urllib.parse import urlsplit

import pytest

from conftest import usage_rows

pytestmark = pytest.mark.django_db(transaction=True)


def request(root_url: str, method: str, path: str, *, host: str, key: str = "", body: dict | None = None):
    url = urlsplit(root_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    headers = {"Host": host, "Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("content-type"), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/demo", None),
    ("POST", "/v1/chat/completions", {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}),
])
def test_it_answers_400_in_openais_shape_to_a_host_not_allowed(live_hub, free_user, api_key_for, simulated_upstream,
                                                               method, path, body):
    key = api_key_for(free_user)

    status, content_type, raw = request(live_hub, method, path, host="evil.example", key=key, body=body)

    assert status == 400
    assert content_type == "application/json"
    error = json.loads(raw)["error"]
    assert error["code"] == "disallowed_host" and error["type"] == "invalid_request_error"
    assert "evil.example" in error["message"]
    assert simulated_upstream.stats() == {}
    assert usage_rows(0, timeout=0.3) == []
    # as Django does for the rest of the app
    assert request(live_hub, "GET", "/api/models/", host="evil.example", key=key)[0] == 400


def test_it_serves_an_allowed_host_with_or_without_a_port(live_hub, free_user, api_key_for):
    key = api_key_for(free_user)
    port = urlsplit(live_hub).port

    for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}"):
        status, _, raw = request(live_hub, "GET", "/v1/models", host=host, key=key)
        assert status == 200, (host, raw)


@pytest.mark.django_db(transaction=False)
@pytest.mark.mode_independent  # a fresh process on its own SQLite file
def test_a_web_process_starts_without_celery_drf_serializers_or_the_schema_generator(tmp_path):
    """Start-up (issue 14): importing the ASGI app leaves out what no /v1 request needs: Celery (and kombu, yaml),
    DRF's serializers and drf-spectacular's schema machinery (with llmhub.api, which imports them)."""
    import os
    import subprocess
    import sys

    from django.conf import settings

    probe = ("import sys, llmhub.asgi; print(' '.join(m for m in ('celery.app', 'celery.exceptions', 'kombu', 'yaml',"
             " 'rest_framework.serializers', 'drf_spectacular.openapi', 'llmhub.api') if m in sys.modules))")
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL")}
    env |= {"DJANGO_SETTINGS_MODULE": "llmhub.settings", "LLMHUB_SQLITE_PATH": str(tmp_path / "db.sqlite3")}
    output = subprocess.run([sys.executable, "-c", probe], env=env, cwd=settings.BASE_DIR, capture_output=True,
                            text=True, timeout=60)
    assert output.returncode == 0, output.stderr[-2000:]
    assert output.stdout.strip() == ""
