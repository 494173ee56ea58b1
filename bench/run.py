"""`make bench`: the hub against the simulated upstream on loopback, side by side, in one run.

Starts the simulated upstream and one uvicorn worker serving llmhub (and, with --peers, the LiteLLM proxy),
on a throwaway SQLite database under var/ (its usage rows written from the spool by `manage.py usage_consume` on the
load generators' CPU, as `make run` runs it; BENCH_EMBEDDED_CONSUMER=0: by the app's own writer thread), then drives
every target with the same load, interleaved so that the machine's drift hits them alike:

- non-streaming at concurrency 1, 16 and 128 with wrk (bench/post.lua), or bench/loadgen.py without wrk;
- streaming at the same concurrencies with bench/loadgen.py, which timestamps the first SSE event;
- a 1000 ms upstream at 256 in flight with bench/loadgen.py, which, unlike wrk, lets the requests in
  flight at the deadline finish, so req/s is not rounded down to whole waves of 256;
- quotas: non-streaming at concurrency 1 and 16 through the same process with a key whose tier has six limits
  (requests, tokens and cost per minute and per day), embedded (the database back end) and, in a second llmhub
  process in production mode (PostgreSQL at BENCH_DATABASE_URL, created if missing; Redis at BENCH_REDIS_URL, else
  a private redis-server on a spare port; usage rows through the Redis stream and `manage.py usage_consume`), on
  Redis, each beside the same process's figures without limits.
  BENCH_PRODUCTION=0 leaves the production process out.

Each figure is the median of BENCH_REPS runs (3) of BENCH_SECONDS (3) seconds (BENCH_SLOW_SECONDS (6)
for the 1000 ms upstream). With two or more CPUs the app under test gets the last one to itself and the
simulated upstream and the load generators share the others (BENCH_PIN=0 turns pinning off).
Prints one markdown table and writes it, with the machine and method, to bench/RESULTS.md.
"""

import argparse
import contextlib
import ctypes
import functools
import http.client
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from llmhub.serving import UVICORN_LOOP

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
BENCH = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent
LITELLM_VENV = VAR / "litellm-venv"
RESULTS = BENCH / "RESULTS.md"
NOTES_MARKER = "<!-- notes: kept across runs -->"

SIM_KEY = "sk-local-simulator"
PROMPT = "Say hello to the benchmark in a few words please"
CONCURRENCIES = (1, 16, 128)
SLOW_CONCURRENCY = 256
SLOW_MODEL = "bench-slow"  # bench/setup_db.py: upstream model `demo@latency=1000`
QUOTA_CONCURRENCIES = (1, 16)  # the configurations the quota and production targets run
HUB, HUB_QUOTAS, PROD, PROD_QUOTAS = "llmhub", "llmhub+quotas", "prod", "prod+quotas"


def _env_number(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


REPS = int(_env_number("BENCH_REPS", 3))
PRODUCTION = os.environ.get("BENCH_PRODUCTION", "1") != "0"
# As `make run` runs it: the embedded app's usage rows go through its spool to `manage.py usage_consume`
# (BENCH_EMBEDDED_CONSUMER=0: the app's own writer thread writes them).
EMBEDDED_CONSUMER = os.environ.get("BENCH_EMBEDDED_CONSUMER", "1") != "0"
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/llmhub_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "")
SECONDS = int(_env_number("BENCH_SECONDS", 3))
SLOW_SECONDS = _env_number("BENCH_SLOW_SECONDS", 6)


# ---------------------------------------------------------------- processes


_PR_SET_PDEATHSIG = 1
# Other work on a shared machine (a test suite) would otherwise take half of "the app's own core".
# Each child leads its own session, hence its own scheduler autogroup, whose weight is set here.
PRIORITY = int(_env_number("BENCH_PRIORITY", -15))


# The usage consumers are background work (in production, a service of their own): they run below the app, the
# simulated upstream and the load generators, as a deployment would run them, so that a batch they write does not
# take the CPU from the requests being measured (their rows wait in the spool or the stream meanwhile).
CONSUMER_PRIORITY = int(_env_number("BENCH_CONSUMER_PRIORITY", 19))


def _child_setup(priority: int = PRIORITY) -> None:
    """Runs in each child before exec, after setsid: die with this script, and run at `priority`."""
    with contextlib.suppress(Exception):  # a child outlives a parent killed with SIGKILL unless asked not to
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if priority:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, priority)
        with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(priority))


class Processes:
    """Every process the benchmark starts, stopped (whole process group) however the run ends."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str], *, env: dict[str, str], log: Path, priority: int = PRIORITY) -> subprocess.Popen:
        log.parent.mkdir(exist_ok=True)
        with open(log, "wb") as output:
            process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True, preexec_fn=functools.partial(_child_setup, priority))
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Pinning:
    app: list[str] = field(default_factory=list)  # taskset prefix for the app under test
    rest: list[str] = field(default_factory=list)  # for the simulated upstream and the load generators
    load_cpus: int = 1
    description: str = "not pinned"


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _pinning() -> Pinning:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or os.environ.get("BENCH_PIN", "1") == "0" or not shutil.which("taskset"):
        return Pinning(load_cpus=len(cpus))
    app, rest = str(cpus[-1]), ",".join(str(cpu) for cpu in cpus[:-1])
    return Pinning(app=["taskset", "-c", app], rest=["taskset", "-c", rest], load_cpus=len(cpus) - 1,
                   description=f"app under test on CPU {app} alone (taskset -c {app}); simulated upstream, wrk and "
                               f"bench/loadgen.py on CPU {rest} (taskset -c {rest})")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return [pid] + [grandchild for child in children for grandchild in _descendants(child)]


def _status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def _tree_peak_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of a process and its descendants (the LiteLLM CLI may fork its server)."""
    return sum(_status_kb(each, "VmHWM") for each in _descendants(pid)) / 1024


def _tree_cpu_seconds(pid: int) -> float:
    return sum(_cpu_seconds(each) for each in _descendants(pid))


class CpuAccount:
    """How much of the machine's CPU went to processes other than the benchmark's (a noise gauge)."""

    def __init__(self, processes: "Processes") -> None:
        self.processes = processes
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        user, nice, system, idle, iowait, irq, softirq = (int(value) for value in
                                                         Path("/proc/stat").read_text().split()[1:8])
        ticks = os.sysconf("SC_CLK_TCK")
        ours = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                   for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        for process in self.processes.started:
            with contextlib.suppress(OSError):
                ours += _tree_cpu_seconds(process.pid)
        busy = user + nice + system + irq + softirq
        return busy / ticks, (busy + idle + iowait) / ticks, ours

    def others_share(self) -> float:
        """Share of the machine's CPU time used by other processes since this account was opened."""
        busy, total, ours = (end - start for end, start in zip(self._sample(), self.start, strict=True))
        return max(0.0, busy - ours) / total if total else 0.0


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    url: str  # base, ending in /v1
    api_key: str
    model: str
    slow_model: str
    process: subprocess.Popen | None = None
    startup_s: float | None = None
    peak_rss_mb: float | None = None
    configs: tuple[str, ...] | None = None  # the configurations it runs (None: all)

    def sibling(self, name: str, api_key: str) -> "Target":
        """The same process, with another key (and only the configurations that compare quotas)."""
        return Target(name, self.url, api_key, self.model, self.slow_model, self.process,
                      configs=tuple(f"plain-c{c}" for c in QUOTA_CONCURRENCIES))

    def runs(self, config: str) -> bool:
        return self.configs is None or config in self.configs

    def body(self, *, stream: bool, slow: bool = False) -> bytes:
        payload = {"model": self.slow_model if slow else self.model,
                   "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64}
        if stream:
            payload |= {"stream": True, "stream_options": {"include_usage": True}}
        return json.dumps(payload).encode()


def _post(url: str, body: bytes, api_key: str, timeout: float = 10.0) -> int:
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("POST", "/" + path, body, {"Content-Type": "application/json",
                                                       "Authorization": f"Bearer {api_key}"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _wait_first_answer(target: Target, started: float, timeout: float) -> float:
    """Seconds from `started` (the spawn) until a chat completion succeeds."""
    body, url = target.body(stream=False), target.url + "/chat/completions"
    while time.perf_counter() - started < timeout:
        if target.process is not None and target.process.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {target.process.returncode} before answering")
        try:
            if _post(url, body, target.api_key) == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{target.name} did not answer within {timeout:.0f} s")


# ---------------------------------------------------------------- load


def _run_json(command: list[str], *, env: dict[str, str] | None = None, prefix: str = "") -> dict:
    output = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            start_new_session=True, preexec_fn=_child_setup)
    for line in output.stdout.splitlines():
        if line.startswith(prefix) and line[len(prefix):].lstrip().startswith("{"):
            return json.loads(line[len(prefix):])
    raise RuntimeError(f"{command[0]} gave no result (exit {output.returncode}): {output.stderr[-2000:]}")


class Load:
    def __init__(self, pinning: Pinning) -> None:
        self.pinning = pinning
        self.wrk = shutil.which("wrk")
        VAR.mkdir(exist_ok=True)

    def _body_file(self, body: bytes) -> Path:
        path = VAR / f"bench-body-{abs(hash(body))}.json"
        if not path.exists():
            path.write_bytes(body)
        return path

    def run(self, target: Target, *, stream: bool, connections: int, seconds: float, slow: bool = False) -> dict:
        body_file = self._body_file(target.body(stream=stream, slow=slow))
        url = target.url + "/chat/completions"
        cpu_before = _tree_cpu_seconds(target.process.pid) if target.process else None
        result = None
        if self.wrk and not stream and not slow:
            result = self._wrk(url, body_file, target.api_key, connections, seconds)
            if result["requests"] < connections:
                # wrk drops the requests in flight at its deadline: a target slower than the run would show
                # nothing at all. bench/loadgen.py lets them finish.
                result = None
        if result is None:
            result = _run_json(self.loadgen_command(target, stream=stream, connections=connections, seconds=seconds,
                                                    slow=slow))
            result["tool"] = "loadgen"
        if cpu_before is not None and result["requests"]:
            cpu = _tree_cpu_seconds(target.process.pid) - cpu_before
            result["app_cpu_ms_per_request"] = cpu * 1000 / result["requests"]
        return result

    def loadgen_command(self, target: Target, *, stream: bool, connections: int, seconds: float,
                        slow: bool = False) -> list[str]:
        """bench/loadgen.py driving `target` (it prints one JSON line when done)."""
        return [*self.pinning.rest, str(VENV_BIN / "python"), "-m", "bench.loadgen", target.url + "/chat/completions",
                "--body-file", str(self._body_file(target.body(stream=stream, slow=slow))),
                "--header", f"Authorization: Bearer {target.api_key}",
                "--connections", str(connections), "--duration", str(seconds)]

    def _wrk(self, url: str, body_file: Path, api_key: str, connections: int, seconds: float) -> dict:
        threads = max(1, min(connections, self.pinning.load_cpus))
        command = [*self.pinning.rest, self.wrk, "-t", str(threads), "-c", str(connections), "-d", f"{round(seconds)}s",
                   "--timeout", "10s", "-s", str(BENCH / "post.lua"), url]
        env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_AUTHORIZATION": f"Bearer {api_key}"}
        result = _run_json(command, env=env, prefix="BENCH_JSON ")
        result["tool"] = "wrk"
        return result


# ---------------------------------------------------------------- set-up


def _app_env(sim_url: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL")}
    return env | {
        "DJANGO_SETTINGS_MODULE": "llmhub.settings",
        "LLMHUB_SQLITE_PATH": str(VAR / "bench.sqlite3"),
        "LLMHUB_SIMULATOR_URL": sim_url,
        "LLMHUB_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        "MALLOC_ARENA_MAX": "2",  # as `make serve` runs the app
    }


def _database_setup(env: dict[str, str]) -> str:
    """Prepares the database `env` names (a SQLite file is started afresh); returns a top-tier API key."""
    return _database_keys(env)["api_key"]


def _database_keys(env: dict[str, str]) -> dict[str, str]:
    """As _database_setup; returns bench/setup_db.py's keys: `api_key` (top tier), `limited_api_key` (six limits)."""
    if not env.get("DATABASE_URL"):
        for suffix in ("", "-wal", "-shm", "-quotas.sqlite3", "-quotas.sqlite3-wal", "-quotas.sqlite3-shm"):
            Path(env["LLMHUB_SQLITE_PATH"] + suffix).unlink(missing_ok=True)
        shutil.rmtree(env["LLMHUB_SQLITE_PATH"] + "-usage", ignore_errors=True)  # a previous run's usage spool
    return _run_json([str(VENV_BIN / "python"), "-m", "bench.setup_db"], env=env)


def _production_env(processes: Processes, pinning: Pinning, env: dict[str, str]) -> dict[str, str] | None:
    """`env` in production mode: PostgreSQL at DATABASE_URL (created when missing), Redis at REDIS_URL or a private
    redis-server; None (with a message) when PostgreSQL cannot be reached."""
    from bench.soak import _postgres_database_ensure

    try:
        _postgres_database_ensure(DATABASE_URL)
    except Exception as error:  # any failure: the production rows are left out, saying why
        print(f"production rows left out: PostgreSQL at BENCH_DATABASE_URL unreachable ({type(error).__name__})",
              file=sys.stderr)
        return None
    redis_url = REDIS_URL
    if not redis_url:
        port = _free_port()
        processes.start([*pinning.rest, shutil.which("redis-server") or "redis-server", "--port", str(port),
                         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], env=env,
                        log=VAR / "bench-redis.log")
        redis_url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while not _port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
    return env | {"DATABASE_URL": DATABASE_URL, "REDIS_URL": redis_url, "LLMHUB_USAGE_STREAM_URL": redis_url,
                  "DJANGO_SECRET_KEY": "bench-only-secret-key-0123456789-0123456789-0123456789-abcdef",
                  "LLMHUB_ENCRYPTION_KEYS": "YmVuY2gtb25seS1lbmNyeXB0aW9uLWtleS0wMTIzNDU=",
                  "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost", "DJANGO_SECURE_SSL_REDIRECT": "false"}


def _simulator_start(processes: Processes, pinning: Pinning, env: dict[str, str], log: Path) -> str:
    """Starts the simulated upstream on a free port; returns its base URL (ending in /v1)."""
    port = _free_port()
    processes.start([*pinning.rest, str(VENV_BIN / "python"), "-m", "generation.simulator", "--port", str(port)],
                    env=env, log=log)
    _wait_http(f"http://127.0.0.1:{port}")
    return f"http://127.0.0.1:{port}/v1"


def _hub_start(processes: Processes, pinning: Pinning, env: dict[str, str], api_key: str, log: Path,
               timeout: float = 60, name: str = HUB) -> Target:
    """One uvicorn process serving llmhub as `make serve` does; returns once it has answered a request."""
    port = _free_port()
    hub = Target(name, f"http://127.0.0.1:{port}/v1", api_key, "demo", SLOW_MODEL)
    spawned = time.perf_counter()
    hub.process = processes.start(
        [*pinning.app, str(VENV_BIN / "uvicorn"), "llmhub.asgi:application", "--host", "127.0.0.1", "--port",
         str(port), "--loop", UVICORN_LOOP, "--http", "httptools", "--no-access-log", "--lifespan", "on"],
        env=env, log=log)
    hub.startup_s = _wait_first_answer(hub, spawned, timeout=timeout)
    return hub


def _wait_http(url: str, timeout: float = 20.0) -> None:
    host_port = url.removeprefix("http://").partition("/")[0]
    host, _, port = host_port.partition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection(host, int(port), timeout=2)
            connection.request("GET", "/_sim/stats")
            if connection.getresponse().status == 200:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing answered at {url} within {timeout:.0f} s")


def _litellm_config(sim_url: str, master_key: str) -> Path:
    path = VAR / "bench-litellm.yaml"
    models = (("demo", "demo"), (SLOW_MODEL, "demo@latency=1000"))
    lines = ["model_list:"]
    for name, upstream in models:
        lines += [f"  - model_name: {name}", "    litellm_params:", f"      model: openai/{upstream}",
                  f"      api_base: {sim_url}", f"      api_key: {SIM_KEY}"]
    # A master key, as the proxy requires; it is checked per request, as llmhub checks its keys.
    lines += ["litellm_settings:", "  telemetry: false", "  drop_params: true",
              "general_settings:", f"  master_key: {master_key}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _litellm_start(processes: Processes, pinning: Pinning, sim_url: str) -> Target | None:
    executable = LITELLM_VENV / "bin" / "litellm"
    if not executable.exists():
        print(f"LiteLLM is not installed in {LITELLM_VENV.relative_to(ROOT)} (`make bench-peers` installs it): "
              "no LiteLLM column", file=sys.stderr)
        return None
    port = _free_port()
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL")}
    env |= {"LITELLM_TELEMETRY": "False", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
            "PYTHONUNBUFFERED": "1"}
    master_key = "sk-bench-" + secrets.token_hex(16)
    target = Target("LiteLLM", f"http://127.0.0.1:{port}/v1", master_key, "demo", SLOW_MODEL)
    config = _litellm_config(sim_url, master_key)
    started = time.perf_counter()
    target.process = processes.start(
        [*pinning.app, str(executable), "--config", str(config), "--host", "127.0.0.1",
         "--port", str(port), "--num_workers", "1"], env=env, log=VAR / "bench-litellm.log")
    try:
        target.startup_s = _wait_first_answer(target, started, timeout=120)
    except RuntimeError as error:
        print(f"LiteLLM left out: {error} (see var/bench-litellm.log)", file=sys.stderr)
        processes.stop(target.process)
        return None
    return target


# ---------------------------------------------------------------- figures and table


def _median(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


@dataclass
class Verdict:
    must: str
    goal: str
    check: Callable[[dict], tuple[bool, bool]]  # figures → (must met, goal met)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _verdict(must: bool, goal: bool) -> str:
    return "**pass (goal)**" if goal and must else "pass (must)" if must else "**MISS**"


class Table:
    def __init__(self, targets: list[str]) -> None:
        self.targets = targets
        self.rows: list[list[str]] = []

    def add(self, figure: str, cells: dict[str, str], versus: str = "", target: str = "", verdict: str = "") -> None:
        self.rows.append([figure, *(cells.get(name, "–") for name in self.targets), versus, target, verdict])

    def markdown(self) -> str:
        head = ["figure", *self.targets, "llmhub vs direct", "target: must / goal", "llmhub"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def build_table(results: dict, targets: list[Target]) -> tuple[Table, dict]:
    names = [target.name for target in targets]
    table = Table(names)
    headline: dict = {}

    def med(name: str, config: str, key: str) -> float | None:
        return _median(results[config].get(name, []), key)

    for stream in (False, True):
        mode = "streaming" if stream else "non-streaming"
        for connections in CONCURRENCIES:
            config = f"{'stream' if stream else 'plain'}-c{connections}"
            label = f"{mode}, c={connections}"
            direct_p50 = med("direct", config, "p50_ms")
            cells = {}
            for name in names:
                p50 = med(name, config, "p50_ms")
                added = "" if name == "direct" or not p50 or direct_p50 is None else f" (+{p50 - direct_p50:.2f})"
                cells[name] = "–" if p50 is None else \
                    f"{_fmt(p50)} / {_fmt(med(name, config, 'p95_ms'))} / {_fmt(med(name, config, 'p99_ms'))}{added}"
            hub_p50, hub_p95, hub_p99 = (med(HUB, config, key) for key in ("p50_ms", "p95_ms", "p99_ms"))
            added_p50 = None if hub_p50 is None or direct_p50 is None else hub_p50 - direct_p50
            headline |= {f"{config}.added_p50_ms": added_p50, f"{config}.hub_p95_ms": hub_p95,
                         f"{config}.hub_p99_ms": hub_p99}
            target = verdict = ""
            if config == "plain-c1":
                target = "added p50 ≤ 3 ms, p95 ≤ 1.5 ms, p99 ≤ 2.5 ms / added p50 ≤ 1.5 ms, p99 ≤ 1.5 ms"
                verdict = _verdict(added_p50 <= 3 and (hub_p95 or 0) <= 1.5 and (hub_p99 or 0) <= 2.5,
                                   added_p50 <= 1.5 and (hub_p99 or 0) <= 1.5)
            elif config == "plain-c16":
                target, verdict = "p99 ≤ 20 ms", _verdict((hub_p99 or 0) <= 20, (hub_p99 or 0) <= 20)
            table.add(f"{label}: latency p50 / p95 / p99 (ms)", cells, f"+{_fmt(added_p50)} ms p50", target, verdict)

            direct_rps, hub_rps = med("direct", config, "rps"), med(HUB, config, "rps")
            headline[f"{config}.hub_rps"] = hub_rps
            target = verdict = ""
            if config == "plain-c16":
                target = "≥ 300 req/s, p99 ≤ 100 ms / ≥ 500 req/s"
                verdict = _verdict(hub_rps >= 300 and hub_p99 <= 100, hub_rps >= 500 and hub_p99 <= 100)
            table.add(f"{label}: req/s", {name: _fmt(med(name, config, "rps"), 0) for name in names},
                      f"×{_fmt(hub_rps / direct_rps)}" if direct_rps and hub_rps else "", target, verdict)

            if stream:
                direct_ttft = med("direct", config, "ttft_p50_ms")
                cells = {}
                for name in names:
                    ttft = med(name, config, "ttft_p50_ms")
                    added = "" if name in ("direct", HUB) or None in (ttft, direct_ttft) else f" (+{ttft - direct_ttft:.2f})"
                    cells[name] = _fmt(ttft) + added
                hub_ttft = med(HUB, config, "ttft_p50_ms")
                added_ttft = None if None in (hub_ttft, direct_ttft) else hub_ttft - direct_ttft
                headline[f"{config}.added_ttft_ms"] = added_ttft
                target = verdict = ""
                if connections == 1:
                    target, verdict = "added ≤ 3 ms / ≤ 1.5 ms", _verdict(added_ttft <= 3, added_ttft <= 1.5)
                table.add(f"{label}: time to first token p50 (ms)", cells, f"+{_fmt(added_ttft)} ms", target, verdict)

    for limited, unlimited, where in ((HUB_QUOTAS, HUB, "embedded (database)"), (PROD_QUOTAS, PROD, "Redis")):
        if limited not in names:
            continue
        cells = {name: _fmt(med(name, "plain-c1", "p50_ms"), 3) for name in (limited, unlimited)}
        quota_p50, base_p50 = med(limited, "plain-c1", "p50_ms"), med(unlimited, "plain-c1", "p50_ms")
        added = None if None in (quota_p50, base_p50) else quota_p50 - base_p50
        headline[f"quotas.{unlimited}.added_p50_ms"] = added
        table.add(f"quotas on, {where}, c=1: p50 (ms) with six limits vs the same process without", cells,
                  f"+{_fmt(added, 3)} ms p50", "added ≤ 0.3 ms",
                  _verdict(added is not None and added <= 0.3, added is not None and added <= 0.3))
        quota_rps, base_rps = med(limited, "plain-c16", "rps"), med(unlimited, "plain-c16", "rps")
        share = quota_rps / base_rps if quota_rps and base_rps else None
        headline[f"quotas.{unlimited}.c16_share"] = share
        table.add(f"quotas on, {where}, c=16: req/s with six limits vs the same process without",
                  {name: _fmt(med(name, "plain-c16", "rps"), 0) for name in (limited, unlimited)},
                  f"{_fmt(share and share * 100, 1)}%", "≥ 90%",
                  _verdict(share is not None and share >= 0.9, share is not None and share >= 0.9))

    config = "slow-c256"
    direct_rps, hub_rps = med("direct", config, "rps"), med("llmhub", config, "rps")
    share = hub_rps / direct_rps if direct_rps and hub_rps else 0.0
    hub_errors = sum(run["errors"] for run in results[config].get("llmhub", []))
    hub_p99 = med("llmhub", config, "p99_ms") or float("inf")
    headline |= {"slow.share": share, "slow.hub_errors": hub_errors, "slow.hub_p99_ms": hub_p99}
    cells = {}
    for name in names:
        rps = med(name, config, "rps")
        cells[name] = _fmt(rps, 1) + ("" if name in ("direct", "llmhub") or not (rps and direct_rps)
                                      else f" ({rps / direct_rps:.0%})")
    table.add(f"1000 ms upstream, {SLOW_CONCURRENCY} in flight: req/s", cells, f"{share:.1%} of direct",
              "≥ 90%, 0 errors / ≥ 97%, p99 ≤ 1.1 s",
              _verdict(share >= 0.90 and hub_errors == 0, share >= 0.97 and hub_errors == 0 and hub_p99 <= 1100))
    table.add(f"1000 ms upstream, {SLOW_CONCURRENCY} in flight: latency p50 / p95 / p99 (ms)",
              {name: " / ".join(_fmt(med(name, config, f"{key}_ms"), 0) for key in ("p50", "p95", "p99"))
               for name in results[config]})
    table.add(f"1000 ms upstream, {SLOW_CONCURRENCY} in flight: errors (all runs)",
              {name: str(sum(run["errors"] for run in runs)) for name, runs in results[config].items()})

    by_name = {target.name: target for target in targets}
    hub = by_name[HUB]
    table.add("peak RSS (MB, VmHWM at the end)", {t.name: _fmt(t.peak_rss_mb, 0) for t in targets if t.peak_rss_mb},
              "", "≤ 160 MB / ≤ 130 MB", _verdict(hub.peak_rss_mb <= 160, hub.peak_rss_mb <= 130))
    table.add("start-up: spawn to first answer (s)", {t.name: _fmt(t.startup_s) for t in targets if t.startup_s},
              "", "≤ 3 s / ≤ 2 s", _verdict(hub.startup_s <= 3, hub.startup_s <= 2))
    headline |= {"peak_rss_mb": hub.peak_rss_mb, "startup_s": hub.startup_s}
    return table, headline


def _prompt_template_row(table: Table) -> float:
    """A prompt template's cost on the hot path (bench/prompts.py, in its own process: it fakes the snapshot)."""
    from bench.prompts import TARGET_US

    output = subprocess.run([str(VENV_BIN / "python"), "-m", "bench.prompts", "--json"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    figures = json.loads(output)
    total = figures["parse"] + figures["apply"]
    table.add("prompt template: parse + resolve + render + assemble (µs of CPU a request, bench/prompts.py)",
              {HUB: _fmt(total, 1)}, "", f"≤ {TARGET_US:.0f} µs", _verdict(total <= TARGET_US, total <= TARGET_US / 2))
    return total


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("django", "openai", "aiohttp", "uvicorn", "uvloop", "httptools", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    if shutil.which("wrk"):
        versions["wrk"] = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()[1]
    litellm_python = LITELLM_VENV / "bin" / "python"
    if litellm_python.exists():
        versions["litellm"] = subprocess.run(
            [str(litellm_python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True, text=True).stdout.strip()
    return versions


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal"))
    return f"{os.cpu_count()} CPUs ({cpu}), {memory_kb / 1024 / 1024:.1f} GiB memory, Linux {platform.release()}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def _raw_table(results: dict, names: list[str]) -> str:
    lines = ["| run | target | tool | rep | p50 ms | p95 ms | p99 ms | req/s | TTFT p50 ms | errors | app CPU ms/req "
             "| client CPU |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for config, by_target in results.items():
        for name in names:
            for rep, run in enumerate(by_target.get(name, []), 1):
                lines.append(
                    f"| {config} | {name} | {run.get('tool', '')} | {rep} | {_fmt(run['p50_ms'])} | {_fmt(run.get('p95_ms'))} "
                    f"| {_fmt(run['p99_ms'])} "
                    f"| {_fmt(run['rps'], 0)} | {_fmt(run.get('ttft_p50_ms'))} | {run['errors']} "
                    f"| {_fmt(run.get('app_cpu_ms_per_request'))} | {_percent(run.get('client_cpu'))} |")
    return "\n".join(lines)


def write_results(table: Table, results: dict, targets: list[Target], pinning: Pinning, started: datetime,
                  others: float) -> None:
    notes = ""
    if RESULTS.exists():
        previous = RESULTS.read_text()
        if NOTES_MARKER in previous:
            notes = previous[previous.index(NOTES_MARKER):]
    versions = ", ".join(f"{name} {version}" for name, version in _versions().items())
    peers = any(target.name == "LiteLLM" for target in targets)
    usage_writer = ("`manage.py usage_consume` on the load generators' CPU" if EMBEDDED_CONSUMER
                    else "the app's own writer thread (BENCH_EMBEDDED_CONSUMER=0)")
    text = f"""# llmhub benchmark

Generated by `make bench{'-peers' if peers else ''}` (bench/run.py); everything above the notes is
rewritten by each run.

- date: {started.strftime('%a %b %d %H:%M:%S UTC %Y')} (`date -u`)
- machine: {_machine()}
- versions: {versions}
- targets: **direct** = the simulated upstream (`python -m generation.simulator`, one uvicorn process, uvloop +
  httptools); **llmhub** = one uvicorn worker (`llmhub.asgi:application --loop {UVICORN_LOOP} --http httptools
  --no-access-log --lifespan on`) on a throwaway SQLite database, `/v1/chat/completions` with a top-tier key,
  model `demo` → the same simulator, usage rows through its spool, written by
  {usage_writer}{'; **LiteLLM** = `litellm --num_workers 1` proxy from var/litellm-venv, '
  'telemetry off, `openai/demo` at the same simulator' if peers else ''}; **{HUB_QUOTAS}** = the llmhub process
  with a key of the tier `bench-limited` (six limits: requests, tokens and cost per minute and per day, never
  reached), quotas on the database back end (SQLite); **{PROD}** / **{PROD_QUOTAS}** = a second llmhub process in
  production mode (PostgreSQL, Redis; quotas on Redis; usage rows through the Redis stream, written by
  `manage.py usage_consume` on the load generators' CPU), without and with those limits. The quota and production
  targets run non-streaming at c=1 and c=16 only.
- pinning: {pinning.description}; every process the benchmark starts runs at nice {PRIORITY} in its own
  scheduler autogroup (BENCH_PRIORITY), so that other work on a shared machine does not take the app's core,
  except the usage consumers: background work, at nice {CONSUMER_PRIORITY} (BENCH_CONSUMER_PRIORITY), as a
  deployment runs them beside the requests.
- other processes used {others:.0%} of the machine's CPU during the measurements (0% = a quiet machine).
- load: non-streaming with wrk (keep-alive, `--timeout 10s`, bench/post.lua) when installed, else
  bench/loadgen.py, which also replaces wrk for a target that answers fewer requests than it has
  connections within a run (wrk drops the requests in flight at its deadline). Streaming and the 1000 ms
  upstream: bench/loadgen.py (asyncio + uvloop + httptools, closed loop; TTFT = request written → first
  body bytes holding an SSE `data:` event). Body: one user message, `max_tokens` 64 (streaming adds
  `stream_options.include_usage`). Each target gets a short warm-up; then every configuration runs {REPS}
  times for {SECONDS} s ({SLOW_SECONDS:g} s with the 1000 ms upstream, model `bench-slow` = upstream
  `demo@latency=1000`), targets interleaved within each repetition. Figures are medians of the {REPS}
  runs; "added" = llmhub's median minus direct's. Start-up: process spawn until the first
  `POST /v1/chat/completions` answers 200. Peak RSS: VmHWM of the app's process (tree) at the end.

{table.markdown()}

<details><summary>Every run</summary>

{_raw_table(results, [target.name for target in targets])}

</details>

"""
    RESULTS.write_text(text + (notes or NOTES_MARKER + "\n"))


# ---------------------------------------------------------------- main


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--peers", action="store_true", help="add the LiteLLM proxy (var/litellm-venv) as a third column")
    arguments = cli.parse_args()
    started_at = datetime.now(UTC)
    clock = time.monotonic()
    pinning = _pinning()
    processes = Processes()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    try:
        sim_url = _simulator_start(processes, pinning, _app_env(""), VAR / "bench-sim.log")
        env = _app_env(sim_url)
        print(f"set-up: database var/bench.sqlite3, simulator {sim_url}; {pinning.description}", file=sys.stderr)
        keys = _database_keys(env)
        direct = Target("direct", sim_url, SIM_KEY, "demo", "demo@latency=1000")
        if EMBEDDED_CONSUMER:
            processes.start([*pinning.rest, str(VENV_BIN / "python"), "manage.py", "usage_consume"], env=env,
                            log=VAR / "bench-consumer-embedded.log", priority=CONSUMER_PRIORITY)
        hub = _hub_start(processes, pinning, env, keys["api_key"], VAR / "bench-app.log")
        targets = [direct, hub, hub.sibling(HUB_QUOTAS, keys["limited_api_key"])]
        production = _production_env(processes, pinning, env) if PRODUCTION else None
        if production is not None:
            keys = _database_keys(production)
            # As the production docs run it: usage rows through the Redis stream, written by a consumer.
            processes.start([*pinning.rest, str(VENV_BIN / "python"), "manage.py", "usage_consume"], env=production,
                            log=VAR / "bench-consumer.log", priority=CONSUMER_PRIORITY)
            prod = _hub_start(processes, pinning, production, keys["api_key"], VAR / "bench-app-prod.log", name=PROD)
            prod.configs = tuple(f"plain-c{c}" for c in QUOTA_CONCURRENCIES)
            targets += [prod, prod.sibling(PROD_QUOTAS, keys["limited_api_key"])]
        if arguments.peers:
            peer = _litellm_start(processes, pinning, sim_url)
            if peer is not None:
                targets.append(peer)
        print(f"start-up: {', '.join(f'{t.name} {t.startup_s:.2f} s' for t in targets if t.startup_s)}", file=sys.stderr)

        load = Load(pinning)
        for target in targets:  # warm-up: connection pools, lazy imports, the first garbage collections
            load.run(target, stream=False, connections=16, seconds=1)
            if target.configs is None:
                load.run(target, stream=True, connections=16, seconds=1)
                load.run(target, stream=False, connections=SLOW_CONCURRENCY, seconds=1.5, slow=True)

        account = CpuAccount(processes)
        plan = [(f"{'stream' if stream else 'plain'}-c{c}", stream, c, SECONDS, False)
                for stream in (False, True) for c in CONCURRENCIES]
        plan.append((f"slow-c{SLOW_CONCURRENCY}", False, SLOW_CONCURRENCY, SLOW_SECONDS, True))
        results: dict[str, dict[str, list[dict]]] = {}
        for config, stream, connections, seconds, slow in plan:
            results[config] = {target.name: [] for target in targets if target.runs(config)}
            for _ in range(REPS):
                for target in (target for target in targets if target.runs(config)):
                    run = load.run(target, stream=stream, connections=connections, seconds=seconds, slow=slow)
                    results[config][target.name].append(run)
            summary = ", ".join(f"{name} p50 {_fmt(_median(runs, 'p50_ms'))} ms {_fmt(_median(runs, 'rps'), 0)} req/s"
                                for name, runs in results[config].items())
            print(f"{config}: {summary}", file=sys.stderr)

        others = account.others_share()
        print(f"other processes used {others:.0%} of the machine's CPU during the measurements", file=sys.stderr)
        for target in targets:
            if target.process is not None and target.startup_s is not None:
                target.peak_rss_mb = _tree_peak_mb(target.process.pid)
        table, headline = build_table(results, targets)
        headline["prompt_template_us"] = _prompt_template_row(table)
        raw = {"headline": headline, "others_cpu_share": others, "runs": results}
        (VAR / "bench-results.json").write_text(json.dumps(raw, indent=1))
        write_results(table, results, targets, pinning, started_at, others)
        print(table.markdown())
        print(f"\n(bench/RESULTS.md written; {time.monotonic() - clock:.0f} s)", file=sys.stderr)
    finally:
        processes.stop_all()


if __name__ == "__main__":
    main()
