"""Test helpers: the simulated upstream (generation/simulator.py) served from a background thread.

Tests talk to it over real HTTP, exactly as the gateway talks to a provider, and steer it through its
control endpoints rather than by reaching into its state.
"""

import json
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Self

import pytest
import uvicorn

from generation.simulator import UVICORN_OPTIONS, Simulator


class SimulatedUpstream:
    """`with SimulatedUpstream() as upstream:` serves the simulator on a free 127.0.0.1 port."""

    def __init__(self, models: Sequence[str] | None = None, *, startup_timeout: float = 10.0) -> None:
        self._models = models
        self._startup_timeout = startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.root_url = ""
        self.base_url = ""

    def start(self) -> Self:
        # Binding here, rather than letting uvicorn pick port 0, tells us the port before the thread starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self.root_url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root_url}/v1"
        # log_config=None leaves the test process's logging alone; hung requests must not stall shutdown.
        config = uvicorn.Config(Simulator(self._models), log_config=None, timeout_graceful_shutdown=1, **UVICORN_OPTIONS)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="simulated-upstream", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"The simulated upstream did not start on {self.root_url}.")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

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
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.root_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())


@pytest.fixture(scope="session")
def simulated_upstream() -> Iterator[SimulatedUpstream]:
    """One simulator for the whole session; tests that fault it or count on it call `.reset()` first."""
    with SimulatedUpstream() as upstream:
        yield upstream
