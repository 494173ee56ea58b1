"""Where the Prometheus metrics of this server's processes live, so that several uvicorn workers report one view.

prometheus_client's multi-process mode keeps each process's values in small memory-mapped files in one folder
(`PROMETHEUS_MULTIPROC_DIR`, read when prometheus_client is first imported) and sums them when scraped. The app
sets it up itself, before anything imports prometheus_client (`metrics_folder_prepare`, first thing in
llmhub/asgi.py), so `make serve` needs no wrapper script:

- Each server gets a folder of its own under `LLMHUB["METRICS_DIR"]` (`var/prometheus`), named after the server's
  process: the uvicorn master that spawned this worker (`--workers N`), else this process itself, with that
  process's start time (PIDs are reused). All workers of one master find the same folder.
- A server starting cleans up: the folders of servers no longer running are deleted, so a restart starts from
  zero and the folder does not grow across restarts.
- A worker that died (and that uvicorn replaced) is marked dead (`mark_process_dead`) at start-up and at each
  scrape: its in-flight gauge leaves the sum, its counters and histograms stay in the totals.

An operator who sets `PROMETHEUS_MULTIPROC_DIR` (gunicorn's recipe) keeps it as it is, and cleans it themselves.
"""

import contextlib
import logging
import multiprocessing
import os
import re
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_SERVER_FOLDER = re.compile(r"^(\d+)(?:-(\d+))?$")
_VALUES_FILE = re.compile(r"^[a-z]+(?:_[a-z]+)?_(\d+)\.db$")


def _process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, Linux), or None when it is not running (or unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count fields after its closing one.
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has died (its parent has not reaped it yet)


def _running(pid: int, start: str | None) -> bool:
    """Whether `pid` runs (and, given its start time, is still that process rather than a reuse of its PID)."""
    current = _process_start(pid)
    if current is not None:
        return start is None or current == start
    if Path("/proc").is_dir():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _server_pid() -> int:
    """The uvicorn master of a spawned worker (`--workers N`), else this process (one process serves)."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getpid()


def _folder_remove(folder: Path) -> None:
    # Only the value files prometheus_client writes: a folder holding anything else is left alone.
    for values in folder.glob("*.db"):
        with contextlib.suppress(FileNotFoundError):
            values.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _stale_servers_remove(base: Path, own: Path) -> None:
    for folder in base.iterdir():
        match = _SERVER_FOLDER.match(folder.name)
        if folder == own or match is None or not folder.is_dir():
            continue
        if not _running(int(match.group(1)), match.group(2)):
            _folder_remove(folder)


def dead_workers_mark(folder: str | Path) -> None:
    """Marks every process whose values are in `folder` and that is no longer running as dead (its live gauges
    leave the sums). Cheap: a directory listing and one /proc lookup per process."""
    from prometheus_client.multiprocess import mark_process_dead

    pids = {int(match.group(1)) for name in os.listdir(folder) if (match := _VALUES_FILE.match(name))}
    for pid in pids:
        if pid != os.getpid() and not _running(pid, None):
            mark_process_dead(pid, str(folder))


def metrics_folder_prepare(base: str | Path) -> Path | None:
    """Sets `PROMETHEUS_MULTIPROC_DIR` for this process (see the module's doc) and returns it; None when
    prometheus_client was already imported without it (a test process): metrics then stay in this process."""
    if os.environ.get(ENVIRONMENT_VARIABLE):
        folder = Path(os.environ[ENVIRONMENT_VARIABLE])
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    if "prometheus_client" in sys.modules:
        return None
    pid = _server_pid()
    start = _process_start(pid)
    base = Path(base)
    folder = base / (f"{pid}-{start}" if start else str(pid))
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[ENVIRONMENT_VARIABLE] = str(folder)  # before prometheus_client is imported (dead_workers_mark)
    try:
        _stale_servers_remove(base, folder)
        dead_workers_mark(folder)
    except OSError as error:  # another worker cleaning at the same moment: what is left is the next one's
        logger.warning("metrics folder %s: clean-up incomplete (%s)", base, error)
    return folder
