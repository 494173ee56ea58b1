"""Memory reports for `make soak`, off unless LLMHUB_MEMORY_REPORT is set (a diagnostic, never for production).

With LLMHUB_MEMORY_REPORT set, each SIGUSR2 appends a report to LLMHUB_MEMORY_REPORT_FILE (default
var/memory-<pid>.txt) that splits the process's memory: RSS (anonymous and file-backed), glibc malloc's heap
(mallinfo2: in use, free but kept, mmapped), CPython's own allocator (pymalloc arenas, in use and free), and the
other anonymous memory (thread stacks, libraries' data, tracemalloc itself).

LLMHUB_MEMORY_REPORT=N with N > 0 also traces Python allocations with tracemalloc (N frames each), from the
first SIGUSR2 on; later reports list the allocations made since then that are still alive, by source line, with
the change since the previous report. Tracing starts late on purpose: what the app holds after start-up is what
the report shows, at a bearable cost (still several times slower).
"""

import contextlib
import ctypes
import linecache
import os
import re
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

_state: dict = {}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def report_install() -> None:
    """Arms SIGUSR2 if LLMHUB_MEMORY_REPORT asks for it (the app calls this once loaded)."""
    setting = os.environ.get("LLMHUB_MEMORY_REPORT", "")
    if not setting:
        return
    default = Path(__file__).resolve().parent.parent / "var" / f"memory-{os.getpid()}.txt"
    _state.update(frames=int(setting), file=Path(os.environ.get("LLMHUB_MEMORY_REPORT_FILE") or default),
                  previous=None, started=time.monotonic())
    signal.signal(signal.SIGUSR2, _on_signal)


def _status_mb() -> dict[str, float]:
    figures = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            figures[name] = int(value.split()[0]) / 1024
    return figures


def _glibc_mb() -> dict[str, float]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()  # all arenas
    return {"in use": info.uordblks / 2**20, "free, kept": info.fordblks / 2**20, "mmapped": info.hblkhd / 2**20}


def _pymalloc_mb() -> dict[str, float]:
    """CPython's small-object allocator (its arenas are mmapped, outside glibc's figures)."""
    with tempfile.TemporaryFile() as output:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(output.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        output.seek(0)
        text = output.read().decode()

    def figure(label: str) -> float:
        match = re.search(rf"^# {label}\s*=\s*([\d,]+)", text, re.MULTILINE)
        return int(match.group(1).replace(",", "")) if match else 0

    arenas = re.search(r"^(\d+) arenas \* (\d+) bytes/arena", text, re.MULTILINE)
    total = int(arenas.group(1)) * int(arenas.group(2)) / 2**20 if arenas else 0.0
    in_use = figure("bytes in allocated blocks") / 2**20
    return {"arenas": total, "in use": in_use, "free in arenas": total - in_use}


def _line(values: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.1f} MB" for name, value in values.items())


def _on_signal(signum: int, frame: object) -> None:
    now = time.monotonic()
    status, glibc, pymalloc = _status_mb(), _glibc_mb(), _pymalloc_mb()
    other = status["RssAnon"] - glibc["in use"] - glibc["free, kept"] - glibc["mmapped"] - pymalloc["arenas"]
    lines = [f"== report {now - _state['started']:.0f} s after start-up", f"process: {_line(status)}",
             f"glibc malloc: {_line(glibc)}", f"pymalloc: {_line(pymalloc)}",
             f"other anonymous memory (thread stacks, libraries' data, untouched parts): {other:.1f} MB"]
    if _state["frames"] > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(_state["frames"])
        lines.append("tracemalloc starts")
    elif tracemalloc.is_tracing():
        lines += _tracemalloc_lines()
    with open(_state["file"], "a") as report:
        report.write("\n".join(lines) + "\n\n")


def _tracemalloc_lines() -> list[str]:
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__),
                                                          tracemalloc.Filter(False, linecache.__file__)])
    by_line = snapshot.statistics("lineno")
    changes = {}
    if _state["previous"] is not None:
        changes = {stat.traceback: stat for stat in snapshot.compare_to(_state["previous"], "lineno")}
    _state["previous"] = snapshot
    lines = [f"allocated since tracing started and still alive: {sum(s.size for s in by_line) / 2**20:.2f} MB in "
             f"{sum(s.count for s in by_line)} blocks; by line (size, blocks, change since the previous report):"]
    for stat in by_line[:30]:
        place, change = stat.traceback[0], changes.get(stat.traceback)
        with contextlib.suppress(Exception):
            source = linecache.getline(place.filename, place.lineno).strip()[:80]
        lines.append(f"  {stat.size / 1024:9.1f} KiB {stat.count:7d}  "
                     f"{'' if change is None else f'{change.size_diff / 1024:+8.1f} KiB'}  "
                     f"{place.filename}:{place.lineno}  {source}")
    lines.append("largest by call stack (innermost last):")
    for stat in snapshot.statistics("traceback")[:10]:
        lines.append(f"  {stat.size / 1024:9.1f} KiB {stat.count:7d}")
        lines += [f"      {place.filename}:{place.lineno}" for place in stat.traceback]
    return lines
