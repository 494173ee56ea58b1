"""`make soak`: a fixed-length load through the hub, watching the app's memory, connections and descriptors.

For each mode (embedded: SQLite and local memory; production: PostgreSQL and Redis at the URLs given), starts
the simulated upstream and one uvicorn process serving llmhub as `make serve` does (bench/run.py's set-up),
then drives `/v1/chat/completions` for SOAK_SECONDS (240) with bench/loadgen.py: SOAK_CONNECTIONS (24)
keep-alive connections non-streaming and SOAK_STREAM_CONNECTIONS (8) streaming, closed loop. Every
SOAK_SAMPLE_SECONDS (5) it samples the app process: RSS (anonymous and file-backed), its open file
descriptors, its database connections (PostgreSQL: its backends in pg_stat_activity; SQLite: descriptors
open on the database file), threads, and the requests the upstream answered meanwhile.

Prints a table per mode and the verdict: it fails (exit 1) on any non-2xx answer or connection error, an RSS
drift of 5% or more after warm-up (RSS at the end against RSS at SOAK_WARMUP_SECONDS (60)), or descriptors or
database connections still growing (the maximum over the last half of the run above the maximum until then,
plus 10% and 2). The tables are written into bench/RESULTS.md between `<!-- soak:MODE -->` markers.

SOAK_MEMORY_REPORT=N runs the app with LLMHUB_MEMORY_REPORT=N (llmhub/memory.py) and asks it for a report
(SIGUSR2) after the first answer, at the end of warm-up and at the end: var/soak-memory-MODE.txt. N = 0: how the
memory splits (glibc, CPython's allocator, the rest), at no cost; N > 0: also tracemalloc from the first report on,
whose own overhead the RSS figures then include.
"""

import argparse
import contextlib
import http.client
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import run
from bench.run import (
    ROOT,
    VAR,
    VENV_BIN,
    CpuAccount,
    Load,
    Processes,
    _app_env,
    _database_setup,
    _fmt,
    _hub_start,
    _machine,
    _pinning,
    _simulator_start,
    _versions,
)

RESULTS = ROOT / "bench" / "RESULTS.md"
DRIFT_LIMIT = 0.05
# A soak is about memory, not speed: unlike `make bench`, its processes keep the default priority (the
# machine may be shared), unless SOAK_PRIORITY says otherwise.
run.PRIORITY = int(os.environ.get("SOAK_PRIORITY", 0))


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass
class Sample:
    at: float  # seconds since the load started
    rss_mb: float
    anon_mb: float
    file_mb: float
    fds: int
    db_connections: int
    threads: int
    upstream_rps: float


def _status(pid: int) -> dict[str, int]:
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            figures[name] = int(value.split()[0])
    return figures


def _descriptors(pid: int) -> list[str]:
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            targets.append(os.readlink(fd))
    return targets


def _upstream_total(sim_url: str) -> int:
    host, _, port = sim_url.removeprefix("http://").partition("/")[0].partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/_sim/stats")
        return json.loads(connection.getresponse().read())["total"]
    finally:
        connection.close()


class DatabaseConnections:
    """Counts the app's open database connections."""

    def __init__(self, database_url: str, sqlite_path: str) -> None:
        self.sqlite_path = sqlite_path
        self.postgres = None
        if database_url:
            import psycopg

            self.postgres = psycopg.connect(database_url, autocommit=True)

    def count(self, descriptors: list[str]) -> int:
        if self.postgres is None:
            return sum(1 for target in descriptors if target == self.sqlite_path)
        # The app's backends only (another client of the same database is not the app's): matched by the
        # client port of each of its TCP sockets.
        return self.postgres.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND client_port = ANY(%s)", (_local_ports(descriptors),)).fetchone()[0]

    def close(self) -> None:
        if self.postgres is not None:
            self.postgres.close()


def _local_ports(descriptors: list[str]) -> list[int]:
    inodes = {target[8:-1] for target in descriptors if target.startswith("socket:[")}
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _postgres_database_ensure(database_url: str) -> None:
    """Creates the soak's database when missing (connecting to the server's `postgres` database)."""
    import psycopg
    from psycopg import sql

    name = re.sub(r"\?.*$", "", database_url).rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as server:
        if server.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@dataclass
class Outcome:
    mode: str
    samples: list[Sample]
    loads: dict[str, dict]
    startup_s: float
    peak_rss_mb: float
    warmup_s: float
    log_errors: int
    others_cpu: float  # share of the machine's CPU that other processes used meanwhile
    failures: list[str]

    def sample_at(self, seconds: float) -> Sample:
        return next((sample for sample in self.samples if sample.at >= seconds), self.samples[-1])

    @property
    def drift(self) -> float:
        warm = self.sample_at(self.warmup_s).rss_mb
        return (self.samples[-1].rss_mb - warm) / warm


def _growing(values: list[tuple[float, int]], warmup_s: float) -> bool:
    """Still growing: the maximum over the last half of the run exceeds the maximum until then by 10% + 2."""
    after = [(at, value) for at, value in values if at >= warmup_s]
    if len(after) < 4:
        return False
    middle = after[0][0] + (after[-1][0] - after[0][0]) / 2
    before_middle = max(value for at, value in values if at < middle)
    last_half = max(value for at, value in after if at >= middle)
    return last_half > before_middle * 1.1 + 2


def soak(mode: str, *, database_url: str, redis_url: str, seconds: int, warmup_s: int, every_s: int,
         connections: int, stream_connections: int, memory_report: int | None) -> Outcome:
    pinning = _pinning()
    processes = Processes()
    sqlite_path = str(VAR / "soak.sqlite3")
    report_file = VAR / f"soak-memory-{mode}.txt"
    try:
        sim_url = _simulator_start(processes, pinning, _app_env(""), VAR / f"soak-sim-{mode}.log")
        env = _app_env(sim_url) | {"LLMHUB_SQLITE_PATH": sqlite_path}
        if mode == "production":
            _postgres_database_ensure(database_url)
            env |= {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                    # Fixed, soak-only secrets: the database is kept between runs and its keys stay readable.
                    "DJANGO_SECRET_KEY": "soak-only-secret-key-0123456789-0123456789-0123456789-abcdef",
                    "LLMHUB_ENCRYPTION_KEYS": "c29hay1vbmx5LWVuY3J5cHRpb24ta2V5LTAxMjM0NTY=",
                    "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost", "DJANGO_SECURE_SSL_REDIRECT": "false"}
        if memory_report is not None:
            report_file.unlink(missing_ok=True)
            env |= {"LLMHUB_MEMORY_REPORT": str(memory_report), "LLMHUB_MEMORY_REPORT_FILE": str(report_file)}
        api_key = _database_setup(env)
        # As `make run` and the production docs run it: usage rows through the spool (embedded) or the Redis stream,
        # and a consumer, as background work (make bench's priority for it).
        processes.start([*pinning.rest, str(VENV_BIN / "python"), "manage.py", "usage_consume"], env=env,
                        log=VAR / f"soak-consumer-{mode}.log", priority=run.CONSUMER_PRIORITY)
        hub = _hub_start(processes, pinning, env, api_key, VAR / f"soak-app-{mode}.log", timeout=120)
        pid = hub.process.pid
        print(f"{mode}: llmhub pid {pid} answered {hub.startup_s:.2f} s after spawn; load for {seconds} s "
              f"({connections} plain + {stream_connections} streaming connections), warm-up {warmup_s} s",
              file=sys.stderr)

        def report(label: str) -> None:
            if memory_report is not None:
                print(f"{mode}: memory report ({label})", file=sys.stderr)
                os.kill(pid, signal.SIGUSR2)

        report("first answer")
        load = Load(pinning)
        loads = {}
        for name, stream, count in (("non-streaming", False, connections), ("streaming", True, stream_connections)):
            if count:
                log = VAR / f"soak-load-{mode}-{name}.log"
                loads[name] = (processes.start(load.loadgen_command(hub, stream=stream, connections=count,
                                                                    seconds=seconds), env=dict(os.environ), log=log), log)
        account = CpuAccount(processes)
        database = DatabaseConnections(env.get("DATABASE_URL", ""), sqlite_path)
        samples = _sample(pid, database, sim_url, seconds=seconds, every_s=every_s,
                          on_warm=lambda: report("end of warm-up"), warmup_s=warmup_s)
        others = account.others_share()
        database.close()
        results = {}
        for name, (process, log) in loads.items():
            process.wait(timeout=120)
            results[name] = next(json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
        report("end of the load")
        if memory_report is not None:  # the app writes its reports itself, with tracemalloc each taking seconds
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and (not report_file.exists()
                                                   or report_file.read_text().count("== report") < 3):
                time.sleep(1)
        # VmHWM is updated lazily: a sample may have seen a little more.
        peak = max(_status(pid)["VmHWM"] / 1024, *(sample.rss_mb for sample in samples))
        log_errors = sum(1 for line in (VAR / f"soak-app-{mode}.log").read_text().splitlines()
                         if "Traceback" in line or " ERROR " in line)
        outcome = Outcome(mode, samples, results, hub.startup_s, peak, warmup_s, log_errors, others, [])
        _judge(outcome)
        return outcome
    finally:
        processes.stop_all()


def _sample(pid: int, database: DatabaseConnections, sim_url: str, *, seconds: int, every_s: int, on_warm,
            warmup_s: int) -> list[Sample]:
    samples: list[Sample] = []
    started = time.monotonic()
    upstream_before, at_before = _upstream_total(sim_url), 0.0
    warm_reported = False
    print(f"{'t (s)':>6} {'RSS MB':>7} {'anon':>6} {'file':>6} {'fds':>4} {'db':>3} {'thr':>4} {'upstream req/s':>14}",
          file=sys.stderr)
    while True:
        at = time.monotonic() - started
        status = _status(pid)
        descriptors = _descriptors(pid)
        upstream = _upstream_total(sim_url)
        rps = (upstream - upstream_before) / (at - at_before) if at > at_before else 0.0
        upstream_before, at_before = upstream, at
        sample = Sample(at, status["VmRSS"] / 1024, status["RssAnon"] / 1024, status["RssFile"] / 1024,
                        len(descriptors), database.count(descriptors), status["Threads"], rps)
        samples.append(sample)
        print(f"{at:6.0f} {sample.rss_mb:7.1f} {sample.anon_mb:6.1f} {sample.file_mb:6.1f} {sample.fds:4d} "
              f"{sample.db_connections:3d} {sample.threads:4d} {rps:14.0f}", file=sys.stderr)
        if not warm_reported and at >= warmup_s:
            warm_reported = True
            on_warm()
        if at >= seconds:
            return samples
        time.sleep(max(0.0, min(every_s * len(samples) - (time.monotonic() - started), seconds - at + 0.2)))


def _judge(outcome: Outcome) -> None:
    failures = outcome.failures
    errors = sum(result["errors"] for result in outcome.loads.values())
    if errors:
        kinds = {name: result["error_kinds"] for name, result in outcome.loads.items() if result["errors"]}
        failures.append(f"{errors} errors (non-2xx or connection errors): {kinds}")
    if outcome.drift >= DRIFT_LIMIT:
        failures.append(f"RSS drift after warm-up {outcome.drift:+.1%} (limit {DRIFT_LIMIT:.0%})")
    for label, key in (("open file descriptors", "fds"), ("database connections", "db_connections")):
        if _growing([(sample.at, getattr(sample, key)) for sample in outcome.samples], outcome.warmup_s):
            failures.append(f"{label} still growing after warm-up")


def markdown(outcome: Outcome, *, every_s: int, settings: str) -> str:
    samples = outcome.samples
    shown = [sample for index, sample in enumerate(samples)
             if index == 0 or index == len(samples) - 1 or sample.at // every_s != samples[index - 1].at // every_s]
    lines = ["| t (s) | RSS MB | anon MB | file MB | open fds | DB connections | threads | upstream req/s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {sample.at:.0f} | {sample.rss_mb:.1f} | {sample.anon_mb:.1f} | {sample.file_mb:.1f} | {sample.fds} "
              f"| {sample.db_connections} | {sample.threads} | {sample.upstream_rps:.0f} |" for sample in shown]
    warm = outcome.sample_at(outcome.warmup_s)
    after = [sample for sample in samples if sample.at >= outcome.warmup_s]
    load_lines = []
    for name, result in outcome.loads.items():
        load_lines.append(
            f"- {name}: {result['requests']} answers, {result['errors']} errors, {result['rps']:.0f} req/s; latency "
            f"p50 {_fmt(result['p50_ms'])} / p95 {_fmt(result.get('p95_ms'))} / p99 {_fmt(result['p99_ms'])} / "
            f"max {_fmt(result.get('max_ms'))} ms"
            + (f"; first event p50 {_fmt(result['ttft_p50_ms'])} ms" if result.get("ttft_p50_ms") else ""))
    verdict = "**pass**" if not outcome.failures else "**FAIL**: " + "; ".join(outcome.failures)
    return "\n".join([
        f"#### {outcome.mode} ({settings})", "",
        f"- RSS after warm-up ({warm.at:.0f} s) {warm.rss_mb:.1f} MB → end {samples[-1].rss_mb:.1f} MB: drift "
        f"**{outcome.drift:+.1%}**; highest after warm-up {max(s.rss_mb for s in after):.1f} MB; peak RSS "
        f"(VmHWM) {outcome.peak_rss_mb:.1f} MB; at the first answer {samples[0].rss_mb:.1f} MB",
        f"- open fds {min(s.fds for s in after)}–{max(s.fds for s in after)}, database connections "
        f"{min(s.db_connections for s in after)}–{max(s.db_connections for s in after)}, threads "
        f"{min(s.threads for s in after)}–{max(s.threads for s in after)} after warm-up",
        *load_lines,
        f"- start-up (spawn to first answer) {outcome.startup_s:.2f} s; tracebacks/ERROR lines in the app's log: "
        f"{outcome.log_errors}; other processes used {outcome.others_cpu:.0%} of the machine's CPU meanwhile",
        f"- verdict: {verdict}", "", *lines, ""])


def results_write(mode: str, text: str) -> None:
    """Replaces this mode's section of bench/RESULTS.md (between its markers), or appends one."""
    start, end = f"<!-- soak:{mode} -->", f"<!-- /soak:{mode} -->"
    block = f"{start}\n{text}\n{end}"
    current = RESULTS.read_text() if RESULTS.exists() else ""
    if start in current and end in current:
        current = current[:current.index(start)] + block + current[current.index(end) + len(end):]
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(current)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--mode", choices=("embedded", "production", "both"), default=os.environ.get("SOAK_MODE", "both"))
    cli.add_argument("--database-url", default=os.environ.get("SOAK_DATABASE_URL", ""))
    cli.add_argument("--redis-url", default=os.environ.get("SOAK_REDIS_URL", ""))
    cli.add_argument("--seconds", type=int, default=_env_int("SOAK_SECONDS", 240))
    cli.add_argument("--warmup", type=int, default=_env_int("SOAK_WARMUP_SECONDS", 60))
    cli.add_argument("--every", type=int, default=_env_int("SOAK_SAMPLE_SECONDS", 5))
    cli.add_argument("--connections", type=int, default=_env_int("SOAK_CONNECTIONS", 24))
    cli.add_argument("--stream-connections", type=int, default=_env_int("SOAK_STREAM_CONNECTIONS", 8))
    cli.add_argument("--memory-report", type=int, default=None if os.environ.get("SOAK_MEMORY_REPORT", "") == ""
                     else int(os.environ["SOAK_MEMORY_REPORT"]), metavar="FRAMES",
                     help="reports from the app (0: without tracemalloc)")
    cli.add_argument("--no-write", action="store_true", help="leave bench/RESULTS.md alone")
    arguments = cli.parse_args()
    modes = ["embedded", "production"] if arguments.mode == "both" else [arguments.mode]
    if arguments.seconds <= arguments.warmup:
        cli.error(f"the run ({arguments.seconds} s) must be longer than the warm-up ({arguments.warmup} s, "
                  "SOAK_WARMUP_SECONDS): the drift is measured after it")
    if "production" in modes and not (arguments.database_url and arguments.redis_url):
        cli.error("production mode needs --database-url and --redis-url (SOAK_DATABASE_URL, SOAK_REDIS_URL)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    failed = False
    for mode in modes:
        started = datetime.now(UTC)
        outcome = soak(mode, database_url=arguments.database_url, redis_url=arguments.redis_url,
                       seconds=arguments.seconds, warmup_s=arguments.warmup, every_s=arguments.every,
                       connections=arguments.connections, stream_connections=arguments.stream_connections,
                       memory_report=arguments.memory_report)
        settings = ("SQLite, local-memory cache" if mode == "embedded" else
                    f"PostgreSQL {_redacted(arguments.database_url)}, Redis {_redacted(arguments.redis_url)}")
        text = markdown(outcome, every_s=max(arguments.every, 30), settings=settings)
        header = (f"`make soak` {started.strftime('%Y-%m-%d %H:%M')} UTC, {arguments.seconds} s, warm-up "
                  f"{arguments.warmup} s, sampled every {arguments.every} s"
                  + (f", **tracemalloc on ({arguments.memory_report} frames): RSS includes its overhead**"
                     if arguments.memory_report else "")
                  + f"; {_machine()}; {', '.join(f'{k} {v}' for k, v in _versions().items() if k != 'wrk')}")
        print("\n" + header + "\n\n" + text)
        if not arguments.no_write:
            results_write(mode, header + "\n\n" + text)
        failed = failed or bool(outcome.failures)
    sys.exit(1 if failed else 0)


def _redacted(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//", url)


if __name__ == "__main__":
    main()
