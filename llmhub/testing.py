"""Test helpers: ASGI apps (the hub itself, the simulated upstream of generation/simulator.py) served on
real ports from a background thread.

Tests talk to them over real HTTP, exactly as clients and the gateway do, and steer the simulator through
its control endpoints rather than by reaching into its state.
"""

import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Self

import pytest
import uvicorn

from generation.simulator import UVICORN_OPTIONS, Simulator


class AsgiServer:
    """`with AsgiServer(app) as server:` serves an ASGI app (object or "module:attribute") on a free
    127.0.0.1 port, from a thread with its own event loop, with the uvicorn options the simulator uses."""

    def __init__(self, app: Any, *, startup_timeout: float = 10.0, lifespan: str = "off") -> None:
        self._app = app
        self._lifespan = lifespan
        self._startup_timeout = startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
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
        return self

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
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None) -> None:
        self.stop()


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

    def reset(self) -> None:
        """Clear faults and counters (models added at run time stay)."""
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


class PrivateRedis:
    """A redis-server of the test's own on a free port (never the shared one), which a test may stop and start
    again on the same port to play an outage."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen | None = None

    def start(self) -> Self:
        self._process = subprocess.Popen(  # noqa: S603  (our own arguments)
            [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(str(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()
