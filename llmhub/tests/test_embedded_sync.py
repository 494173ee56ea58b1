"""A change made in one process reaches every app process within the check interval (LLMHUB_REGISTRY_CACHE_CHECK_SECONDS,
1 s), in the embedded mode (SQLite, a per-process memory cache, no Redis) and with Redis.

Two app processes (uvicorn, on ports of their own) share one SQLite file. The changes come from separate `manage.py`
processes (load_models, revoke_api_key, a `save()` in a shell, admin's change form) and from admin in one of the two
app processes; each must be seen by both within 2 s of the change returning. Before llmhub/versions.py, the embedded
version tokens lived in each process's own memory cache and no app process ever saw another's change.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)
SEEN_WITHIN = 2.0
# Anything that could steer the settings is removed before a mode sets exactly what it means.
STEERING_PREFIXES = ("DJANGO_", "LLMHUB_", "CELERY_", "DATABASE_", "REDIS_")
ADMIN_PASSWORD = "sync-admin-password-0123"
SETUP = f"""
from django.contrib.auth import get_user_model
from django.core.management import call_command
from registry.models import LLMModel
from registry.services import api_key_create, user_tier_set

call_command("load_models")
User = get_user_model()
User.objects.create_superuser("root", "", {ADMIN_PASSWORD!r})
keys = {{}}
for name in ("watcher", "revoked-by-save", "revoked-by-command", "revoked-in-admin", "deactivated"):
    user = User.objects.create_user(name)
    user_tier_set(user=user, tier_slug="enterprise")
    api_key, raw_key = api_key_create(user=user, name=name)
    keys[name] = {{"raw": raw_key, "prefix": api_key.prefix, "pk": api_key.pk}}
answer = {{"keys": keys, "models": dict(LLMModel.objects.values_list("public_id", "pk"))}}
"""
# The other process: a Django shell that runs each piece of code it is sent (one JSON string a line) and answers
# with one JSON line, so the changes need not each pay for a process start.
OTHER_PROCESS = """
import contextlib, io, json, sys, traceback
for line in sys.stdin:
    scope = {"answer": None}
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # what the code prints is not an answer
            exec(json.loads(line), scope)
        print(json.dumps({"answer": scope["answer"]}), flush=True)
    except Exception:
        print(json.dumps({"error": traceback.format_exc()}), flush=True)
"""


@dataclass
class Hub:
    env: dict[str, str]
    folder: Path
    other: subprocess.Popen | None = None  # a `manage.py shell` that runs code it is sent (OTHER_PROCESS)
    workers: tuple[str, ...] = ()  # root URLs of the two app processes
    keys: dict[str, dict] | None = None
    models: dict[str, int] | None = None

    def manage(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=self.env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def run_elsewhere(self, code: str):
        """Runs `code` in the other process; returns what it left in `answer`."""
        self.other.stdin.write(json.dumps(code) + "\n")
        self.other.stdin.flush()
        reply = json.loads(self.other.stdout.readline() or '{"error": "the other process ended"}')
        assert "error" not in reply, reply["error"]
        return reply["answer"]


def _environment(mode: str, folder: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(STEERING_PREFIXES)}
    env.pop("CI", None)
    env |= {"DJANGO_SETTINGS_MODULE": "llmhub.settings", "LLMHUB_USAGE_FLUSH_INTERVAL_SECONDS": "0.25"}
    database = folder / "hub.sqlite3"
    if mode == "embedded":
        return env | {"LLMHUB_SQLITE_PATH": str(database)}
    return env | {
        "DATABASE_URL": f"sqlite:///{database}",
        "REDIS_URL": os.environ.get("REDIS_URL", ""),
        "DJANGO_SECRET_KEY": "embedded-sync-test-secret-key-0123456789-0123456789-0123456789",
        "LLMHUB_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
    }


def _serve(env: dict[str, str], log: Path) -> subprocess.Popen:
    """One app process as `make serve` runs it."""
    command = [sys.executable, "-m", "uvicorn", "llmhub.asgi:application", "--host", "127.0.0.1", "--port", "0",
               "--lifespan", "on", "--no-access-log"]
    # Its output goes to a file: a pipe nobody reads would fill up and stall the server.
    with log.open("w") as output:
        return subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=output, stderr=subprocess.STDOUT)


def _root_url(server: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + 90
    while (started := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())) is None:
        if server.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the app did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return started.group(1)


# "embedded" uses nothing of the suite's (its processes get their own SQLite file and no Redis): the same test in either
# suite. "redis" uses the suite's Redis.
@pytest.fixture(scope="module", params=[pytest.param("embedded", marks=pytest.mark.mode_independent),
                                        pytest.param("redis", marks=pytest.mark.services)])
def hub(request, tmp_path_factory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp(f"sync-{request.param}")
    hub = Hub(env=_environment(request.param, folder), folder=folder)
    hub.manage("migrate", "--noinput", "-v0")
    if request.param == "redis":
        hub.manage("collectstatic", "--noinput", "-v0")  # production admin pages link the hashed names
    # The app processes and the other process start side by side; the apps read nothing before their first request.
    logs = [folder / f"worker-{number}.log" for number in (1, 2)]
    servers = [_serve(hub.env, log) for log in logs]
    hub.other = subprocess.Popen([sys.executable, "manage.py", "shell", "--no-imports", "-c", OTHER_PROCESS],
                                 cwd=BASE_DIR, env=hub.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        made = hub.run_elsewhere(SETUP)
        hub.keys, hub.models = made["keys"], made["models"]
        hub.workers = tuple(_root_url(server, log) for server, log in zip(servers, logs, strict=True))
        yield hub
    finally:
        hub.other.stdin.close()
        for process in (hub.other, *servers):
            process.terminate()
        for process in (hub.other, *servers):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _get(url: str, raw_key: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {raw_key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def model_ids(hub: Hub, worker: str) -> set[str]:
    status, body = _get(f"{worker}/v1/models", hub.keys["watcher"]["raw"])
    assert status == 200, body
    return {model["id"] for model in body["data"]}


def display_name(hub: Hub, worker: str, model_id: str) -> str:
    status, body = _get(f"{worker}/api/models/{model_id}/", hub.keys["watcher"]["raw"])
    assert status == 200, body
    return body["display_name"]


def key_status(hub: Hub, worker: str, name: str) -> int:
    return _get(f"{worker}/v1/models", hub.keys[name]["raw"])[0]


def seen_by_every_worker(hub: Hub, seen: Callable[[str], bool]) -> dict[str, float]:
    """Seconds until each worker showed the change, counted from now (the changing process has ended)."""
    start, times = time.monotonic(), {}
    while len(times) < len(hub.workers) and time.monotonic() - start < SEEN_WITHIN + 3:
        for worker in hub.workers:
            if worker not in times and seen(worker):
                times[worker] = time.monotonic() - start
        time.sleep(0.05)
    assert len(times) == len(hub.workers), f"never seen by {set(hub.workers) - set(times)}; seen: {times}"
    assert max(times.values()) <= SEEN_WITHIN, times
    return times


def warm(hub: Hub, check: Callable[[str], object]) -> None:
    """Each worker answers once first, so what follows tests a warm snapshot's invalidation, not a cold start."""
    for worker in hub.workers:
        check(worker)


def test_it_shows_a_model_load_models_disabled_in_another_process_on_every_worker(hub):
    warm(hub, lambda worker: model_ids(hub, worker))
    assert all("kimi-k2-0905" in model_ids(hub, worker) for worker in hub.workers)
    fixture = json.loads((BASE_DIR / "fixtures" / "llm_models.json").read_text())
    fixture["models"] = [model for model in fixture["models"] if model["id"] != "kimi-k2-0905"]
    edited = hub.folder / "llm_models.json"
    edited.write_text(json.dumps(fixture))

    assert "disabled 1" in hub.manage("load_models", str(edited))

    seen_by_every_worker(hub, lambda worker: "kimi-k2-0905" not in model_ids(hub, worker))


def test_it_shows_a_model_saved_in_another_process_on_every_worker(hub):
    warm(hub, lambda worker: display_name(hub, worker, "demo-backup"))

    hub.run_elsewhere("from registry.models import LLMModel\n"
              "model = LLMModel.objects.get(public_id='demo-backup')\n"
              "model.display_name = 'Backup, saved elsewhere'\n"
              "model.save()")

    seen_by_every_worker(hub, lambda worker: display_name(hub, worker, "demo-backup") == "Backup, saved elsewhere")


def test_it_shows_a_model_edited_in_admin_in_another_process_on_every_worker(hub):
    """Admin's change form, posted as a browser would, in a process of its own."""
    warm(hub, lambda worker: display_name(hub, worker, "demo"))

    hub.run_elsewhere("from django.contrib.auth import get_user_model\n"
              "from django.test import Client\n"
              "from django.test.utils import setup_test_environment\n"
              "from registry.tests.admin_forms import admin_post\n"
              "setup_test_environment()\n"
              "client = Client()\n"
              "client.force_login(get_user_model().objects.get(username='root'))\n"
              f"response = admin_post(client, '/admin/registry/llmmodel/{hub.models['demo']}/change/',"
              " display_name='Demo, edited in admin')\n"
              "assert response.status_code == 302, response.content")

    seen_by_every_worker(hub, lambda worker: display_name(hub, worker, "demo") == "Demo, edited in admin")


class AdminSession:
    """A browser logged into admin on one app process, over real HTTP (cookies and CSRF token by hand: production
    cookies are Secure, and the request claims https through the proxy header production trusts)."""

    def __init__(self, root: str) -> None:
        self.root, self.cookies = root, {}
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.post("/admin/login/", {"username": "root", "password": ADMIN_PASSWORD, "next": "/admin/"})
        assert "sessionid" in self.cookies, "admin login failed"

    def _send(self, path: str, data: dict | None = None) -> int:
        headers = {"X-Forwarded-Proto": "https", "Referer": f"https://{self.root.removeprefix('http://')}{path}",
                   "Cookie": "; ".join(f"{name}={value}" for name, value in self.cookies.items())}
        body = None if data is None else urllib.parse.urlencode(data, doseq=True).encode()
        request = urllib.request.Request(self.root + path, data=body, headers=headers)
        try:
            response = self._opener.open(request, timeout=10)
        except urllib.error.HTTPError as error:
            response = error
        for header in response.headers.get_all("Set-Cookie") or ():
            name, _, rest = header.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        response.read()
        return response.status

    def post(self, path: str, data: dict) -> int:
        if "csrftoken" not in self.cookies:
            self._send(path)
        return self._send(path, {**data, "csrfmiddlewaretoken": self.cookies["csrftoken"]})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_it_shows_models_disabled_in_admin_on_one_worker_on_every_worker(hub):
    warm(hub, lambda worker: model_ids(hub, worker))
    assert all("qwen3-coder-plus" in model_ids(hub, worker) for worker in hub.workers)

    admin = AdminSession(hub.workers[0])
    assert admin.post("/admin/registry/llmmodel/", {
        "action": "disable_models", "index": 0, "_selected_action": [hub.models["qwen3-coder-plus"]]}) == 302

    seen_by_every_worker(hub, lambda worker: "qwen3-coder-plus" not in model_ids(hub, worker))


def test_it_refuses_a_key_revoked_by_a_save_in_another_process_on_every_worker(hub):
    warm(hub, lambda worker: key_status(hub, worker, "revoked-by-save"))
    assert all(key_status(hub, worker, "revoked-by-save") == 200 for worker in hub.workers)

    hub.run_elsewhere("from django.utils import timezone\n"
              "from registry.models import ApiKey\n"
              f"api_key = ApiKey.objects.get(pk={hub.keys['revoked-by-save']['pk']})\n"
              "api_key.revoked_at = timezone.now()\n"
              "api_key.save()")

    seen_by_every_worker(hub, lambda worker: key_status(hub, worker, "revoked-by-save") == 401)
    assert all(key_status(hub, worker, "watcher") == 200 for worker in hub.workers)


def test_it_refuses_a_key_revoked_by_the_command_on_every_worker(hub):
    warm(hub, lambda worker: key_status(hub, worker, "revoked-by-command"))
    assert all(key_status(hub, worker, "revoked-by-command") == 200 for worker in hub.workers)

    assert "Revoked" in hub.manage("revoke_api_key", hub.keys["revoked-by-command"]["prefix"])

    seen_by_every_worker(hub, lambda worker: key_status(hub, worker, "revoked-by-command") == 401)


def test_it_refuses_a_key_revoked_in_admin_on_one_worker_on_every_worker(hub):
    warm(hub, lambda worker: key_status(hub, worker, "revoked-in-admin"))
    assert all(key_status(hub, worker, "revoked-in-admin") == 200 for worker in hub.workers)

    admin = AdminSession(hub.workers[1])
    assert admin.post("/admin/registry/apikey/", {
        "action": "revoke_keys", "index": 0, "_selected_action": [hub.keys["revoked-in-admin"]["pk"]]}) == 302

    seen_by_every_worker(hub, lambda worker: key_status(hub, worker, "revoked-in-admin") == 401)


def test_it_refuses_the_keys_of_a_user_deactivated_in_another_process_on_every_worker(hub):
    warm(hub, lambda worker: key_status(hub, worker, "deactivated"))
    assert all(key_status(hub, worker, "deactivated") == 200 for worker in hub.workers)

    hub.run_elsewhere("from django.contrib.auth import get_user_model\n"
              "user = get_user_model().objects.get(username='deactivated')\n"
              "user.is_active = False\n"
              "user.save()")

    seen_by_every_worker(hub, lambda worker: key_status(hub, worker, "deactivated") == 401)
    assert all(key_status(hub, worker, "watcher") == 200 for worker in hub.workers)
