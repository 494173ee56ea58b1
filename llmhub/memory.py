"""Memory diagnostics for `make soak`, off unless LLMHUB_TRACEMALLOC is set (never in production).

LLMHUB_TRACEMALLOC=N starts tracemalloc (N frames kept per allocation) when llmhub/asgi.py is imported and
takes a first snapshot once the app is loaded. Each SIGUSR2 then appends a report to
LLMHUB_TRACEMALLOC_FILE (default var/tracemalloc-<pid>.txt): the process's RSS (anonymous and file-backed),
glibc malloc's own figures (mallinfo2: bytes in use, bytes free but kept), the traced Python total, and the
allocation sites that grew most since the previous snapshot. Last, it calls `malloc_trim(0)` and reports the
RSS again: what that gives back is memory glibc kept after Python freed it (fragmentation), not live data.
tracemalloc itself roughly doubles the app's memory and slows it down: read the RSS drift from a run
without it.
"""

import contextlib
import ctypes
import linecache
import os
import signal
import time
import tracemalloc
from pathlib import Path

_state: dict = {}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def tracing_start() -> None:
    """Starts tracemalloc if LLMHUB_TRACEMALLOC asks for it; call before the heavy imports."""
    frames = int(os.environ.get("LLMHUB_TRACEMALLOC") or 0)
    if frames > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(frames)


def tracing_mark() -> None:
    """The app is loaded: the first snapshot, and SIGUSR2 reports the growth since the previous one."""
    if not tracemalloc.is_tracing():
        return
    default = Path(__file__).resolve().parent.parent / "var" / f"tracemalloc-{os.getpid()}.txt"
    _state.update(file=Path(os.environ.get("LLMHUB_TRACEMALLOC_FILE") or default), label="app loaded",
                  snapshot=_snapshot(), at=time.monotonic(), started=time.monotonic())
    signal.signal(signal.SIGUSR2, _report)


def _snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])


def _status_mb() -> dict[str, float]:
    figures = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            figures[name] = int(value.split()[0]) / 1024
    return figures


def _malloc() -> tuple[ctypes.CDLL, dict[str, float]]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return libc, {"in use": info.uordblks / 2**20, "free, kept": info.fordblks / 2**20,
                  "mmapped": info.hblkhd / 2**20, "arena": info.arena / 2**20}


def _line(values: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.1f} MB" for name, value in values.items())


def _report(signum: int, frame: object) -> None:
    snapshot = _snapshot()
    previous, label = _state["snapshot"], _state["label"]
    now = time.monotonic()
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"== report at {now - _state['started']:.0f} s, growth since '{label}' ({now - _state['at']:.0f} s ago)",
             f"process: {_line(_status_mb())}", f"glibc malloc: {_line(_malloc()[1])}",
             f"traced by tracemalloc: {current / 2**20:.1f} MB (peak {peak / 2**20:.1f} MB)"]
    by_line = snapshot.compare_to(previous, "lineno")
    grown = sum(stat.size_diff for stat in by_line)
    lines.append(f"traced change: {grown / 2**20:+.2f} MB; top sites by growth (file:line, size change, count change):")
    for stat in by_line[:25]:
        place = stat.traceback[0]
        lines.append(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d}  {place.filename}:{place.lineno}  "
                     f"{linecache.getline(place.filename, place.lineno).strip()[:90]}")
    lines.append("top 8 by growth with their call stacks (innermost last):")
    for stat in snapshot.compare_to(previous, "traceback")[:8]:
        lines.append(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d}")
        lines += [f"      {place.filename}:{place.lineno}" for place in stat.traceback]
    libc, _ = _malloc()
    before = _status_mb()["VmRSS"]
    with contextlib.suppress(AttributeError, OSError):
        libc.malloc_trim(0)
    lines.append(f"malloc_trim(0): RSS {before:.1f} → {_status_mb()['VmRSS']:.1f} MB\n")
    with open(_state["file"], "a") as report:
        report.write("\n".join(lines) + "\n")
    _state.update(snapshot=snapshot, at=now, label=f"report at {now - _state['started']:.0f} s")
