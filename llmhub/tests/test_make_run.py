"""`make run` stops with a clear message when a port it needs is taken, before it changes or starts anything."""

import os
import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest
from django.conf import settings

from llmhub.tests.test_settings import clean_env

# Fresh processes with environments of their own: the same test in either suite.
pytestmark = pytest.mark.mode_independent


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on (node_exporter's 9100, say)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_run(tmp_path, **variables: int) -> subprocess.CompletedProcess:
    env = clean_env(LLMHUB_SQLITE_PATH=str(tmp_path / "db.sqlite3"))
    command = ["make", "--no-print-directory", "run", *(f"{name}={value}" for name, value in variables.items())]
    process = subprocess.Popen(command, cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"make run kept running:\n{output[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output, "")


@pytest.mark.parametrize(("which", "name"), [("SIM_PORT", "simulated upstream"), ("PORT", "app")])
def test_it_stops_with_a_clear_message_when_a_port_is_taken(tmp_path, taken_port, which, name):
    ports = {"PORT": free_port(), "SIM_PORT": free_port(), which: taken_port}

    result = make_run(tmp_path, **ports)

    assert result.returncode != 0
    assert f"port {taken_port} (the {name}, {which}) is already in use" in result.stdout
    assert not (tmp_path / "db.sqlite3").exists()  # stopped before setting anything up
