"""Test helpers: ASGI apps (the hub itself, the simulated upstream of generation/simulator.py) served on
real ports from a background thread, and the app in production mode in child processes (`ServerProcess`,
`production_env`).

Tests talk to them over real HTTP, exactly as clients and the gateway do, and steer the simulator through
its control endpoints rather than by reaching into its state.
"""

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
import uvicorn
from cryptography.fernet import Fernet
from django.conf import settings

from generation.simulator import UVICORN_OPTIONS, Simulator
from llmhub.serving import UVICORN_LOOP


class AsgiServer:
    """`with AsgiServer(app) as server:` serves an ASGI app (object or "module:attribute") on a free
    127.0.0.1 port, from a thread with its own event loop, with the uvicorn options the simulator uses."""

    def __init__(self, app: Any, *, startup_timeout: float = 10.0, lifespan: str = "off") -> None:
        self._app = app
        self._lifespan = lifespan
        self._startup_timeout = startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: Any = None  # the server's event loop, once it serves
        self.port = 0
        self.root_url = ""

    def start(self) -> Self:
        # Binding here, rather than letting uvicorn pick port 0, tells us the port before the thread starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.root_url = f"http://127.0.0.1:{self.port}"
        # log_config=None leaves the test process's logging alone; hung requests must not stall shutdown.
        options = {**UVICORN_OPTIONS, "lifespan": self._lifespan}
        config = uvicorn.Config(self._app, log_config=None, timeout_graceful_shutdown=1, **options)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="asgi-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self._app!r} did not start serving on {self.root_url}.")
            time.sleep(0.01)
        self._loop = self._server.servers[0].get_loop()
        _serving.add(self)
        return self

    def wait_turn(self, timeout: float = 5.0) -> bool:
        """Waits until the server's event loop has run what was queued on it before now: /v1 settles and logs an
        answered request on the turn after its response is written (generation/services.py `chat`)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return True
        done = threading.Event()
        try:
            loop.call_soon_threadsafe(done.set)
        except RuntimeError:  # closed meanwhile
            return True
        return done.wait(timeout)

    def wait_idle(self, timeout: float = 15.0) -> bool:
        """Waits until no request is in flight (a test's last one may still be running when it ends)."""
        deadline = time.monotonic() + timeout
        while self._server is not None and self._server.server_state.tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        _serving.discard(self)
        self._server = self._thread = self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None) -> None:
        self.stop()


_serving: "weakref.WeakSet[AsgiServer]" = weakref.WeakSet()


def servers_turn() -> None:
    """`AsgiServer.wait_turn` of every server this process runs (before reading what their requests wrote)."""
    for server in list(_serving):
        server.wait_turn()


class SimulatedUpstream(AsgiServer):
    """The simulator on a free port; point OpenAI clients at `.base_url`, steer it with the methods below."""

    def __init__(self, models: Sequence[str] | None = None, *, startup_timeout: float = 10.0) -> None:
        super().__init__(Simulator(models), startup_timeout=startup_timeout)

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def set_fault(self, model: str, spec: str) -> None:
        """Make every call to `model` fail as `spec` says (fault grammar in generation/simulator.py)."""
        self._control("POST", "/_sim/faults", {"model": model, "fault": spec})

    def clear_faults(self) -> None:
        self._control("DELETE", "/_sim/faults")

    def add_models(self, *names: str) -> None:
        self._control("POST", "/_sim/models", {"models": list(names)})

    def stats(self) -> Counter[str]:
        """Chat-completion requests received per base model, counted before any fault applies."""
        return Counter(self._control("GET", "/_sim/stats")["requests"])

    def last_request(self, model: str) -> dict[str, Any] | None:
        """The body of the last request the simulator received for base model `model` (what the hub sent)."""
        return self._control("GET", "/_sim/last").get(model)

    def reset(self) -> None:
        """Clear faults, counters and the last requests (models added at run time stay)."""
        self._control("POST", "/_sim/reset")

    def _control(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            body = None if payload is None else json.dumps(payload)
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
        finally:
            connection.close()
        if response.status != 200:
            raise ValueError(f"{method} {path} returned {response.status}: {answer['error']['message']}")
        return answer


@pytest.fixture(scope="session")
def simulated_upstream() -> Iterator[SimulatedUpstream]:
    """One simulator for the whole session; tests that fault it or count on it call `.reset()` first."""
    with SimulatedUpstream() as upstream:
        yield upstream


# --- The app in production mode, in child processes ----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def database_url() -> str:
    """A URL of the database this process uses now (a test database, once pytest-django made it)."""
    from django.db import connection

    database = connection.settings_dict
    if database["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{database['NAME']}"
    password = f":{database['PASSWORD']}" if database.get("PASSWORD") else ""
    port = f":{database['PORT']}" if database.get("PORT") else ""
    return f"postgres://{database['USER']}{password}@{database['HOST'] or '127.0.0.1'}{port}/{database['NAME']}"


def production_env(*, database_url: str, redis_url: str | None = None, **variables: str) -> dict[str, str]:
    """The environment of a child process running llmhub in production mode on the given database and Redis
    (none: local-memory cache, eager tasks). It shares this process's encryption keys, so it can read the
    keys of a registry this process loaded."""
    keys = ",".join(settings.ENCRYPTION_KEYS) or Fernet.generate_key().decode()
    env = {name: value for name, value in os.environ.items()
           if name not in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DJANGO_SETTINGS_MODULE",
                           "PROMETHEUS_MULTIPROC_DIR")}
    env |= {
        "DJANGO_SETTINGS_MODULE": "llmhub.settings",
        "DATABASE_URL": database_url,
        "DJANGO_SECRET_KEY": "child-process-test-secret-key-0123456789-0123456789-0123456789",
        "LLMHUB_ENCRYPTION_KEYS": keys,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env | variables


def uvicorn_command(app: str, *, port: int = 0, workers: int = 1, lifespan: str = "on") -> list[str]:
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--lifespan", lifespan, "--no-access-log", "--loop", UVICORN_LOOP]


class ServerProcess:
    """A child process (uvicorn, redis-server) whose output goes to a file, so a chatty child never blocks
    on a full pipe; `wait_output` reads it back. Stopped, whole process group, on `stop()` or on exit."""

    def __init__(self, command: list[str], *, log: Path, env: dict[str, str] | None = None) -> None:
        self.command, self.log, self.env = command, log, env
        self.process: subprocess.Popen | None = None

    def start(self) -> Self:
        with open(self.log, "ab") as output:
            # The commands are the tests' own (uvicorn, redis-server), never input.
            self.process = subprocess.Popen(self.command, cwd=settings.BASE_DIR, env=self.env, stdout=output,  # noqa: S603
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_output(self, done: Callable[[str], bool], *, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while not done(output := self.output()):
            if self.process is None or self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.command[:4]} did not get ready:\n{output[-5000:]}")
            time.sleep(0.05)
        return output

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, *, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL past `timeout`; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None) -> None:
        self.stop()


class PrivateRedis:
    """A redis-server of the test's own on a free port (never the shared one), which a test may stop and start
    again on the same port (empty) to play an outage."""

    def __init__(self, folder: str | Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process = ServerProcess([shutil.which("redis-server") or "redis-server", "--port", str(self.port),
                                       "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
                                      log=Path(folder) / f"redis-{self.port}.log")
        self._starts = 0

    def start(self) -> Self:
        self._starts += 1
        self._process.start()
        self._process.wait_output(lambda text: text.count("Ready to accept connections") == self._starts, timeout=20)
        return self

    def stop(self) -> None:
        self._process.stop(timeout=10)


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(str(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()
