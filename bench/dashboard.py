"""`make bench-dashboard`: the usage pages on a PostgreSQL database holding 10 million usage rows.

1. Prepares BENCH_DASHBOARD_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/llmhub_bench_dashboard,
   created if missing; never `test`): migrate, load the registry fixture.
2. Unless it already holds exactly BENCH_DASHBOARD_ROWS (10,000,000) usage rows (or BENCH_DASHBOARD_REFILL=1), fills
   it: `manage.py usage_fill_bench` (COPY, ~30 days, 2,000 users, their keys, 8 models; roll-ups rebuilt in
   set-based SQL). The fill's own timings are printed.
3. Starts one uvicorn process as `make serve` does (production settings on that database; quotas on
   BENCH_DASHBOARD_REDIS_URL when set, else on the database), logs in as the heaviest user (`bench-user-1`, who has
   limits) and as `bench-staff`, and loads `/usage/` and `/usage/all/` (30 days) BENCH_DASHBOARD_LOADS (7) times
   each after one first load. A load's time is measured on loopback from the request to the last byte: the server's
   time plus well under a millisecond.
4. Fails (exit 1) when a page's median is above BENCH_DASHBOARD_LIMIT_MS (200); writes the figures into
   bench/RESULTS.md between the `<!-- dashboard -->` markers.
"""

import http.client
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

import psycopg

from bench.run import ROOT, VAR, VENV_BIN, _free_port, _machine
from llmhub.serving import UVICORN_LOOP

RESULTS = ROOT / "bench" / "RESULTS.md"
USER, STAFF, PASSWORD = "bench-user-1", "bench-staff", "bench-dashboard"
PAGES = (("/usage/", USER), ("/usage/all/?days=30", STAFF))


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _database_create(url: str) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if name == "test" or "bench" not in name:
        sys.exit(f"refusing database {name!r}: use a database whose name says 'bench' (never 'test')")
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            admin.execute(f'CREATE DATABASE "{name}"')


def _app_env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in ("REDIS_URL", "DATABASE_URL")}
    env |= {
        "DJANGO_SETTINGS_MODULE": "llmhub.settings",
        "DATABASE_URL": database_url,
        "DJANGO_SECRET_KEY": "bench-dashboard-secret-key-0123456789-0123456789-0123456789",
        "LLMHUB_ENCRYPTION_KEYS": "YmVuY2gtZGFzaGJvYXJkLWVuY3J5cHRpb24ta2V5LTA=",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "LLMHUB_LOG_LEVEL": "WARNING",
        "MALLOC_ARENA_MAX": "2",
        "PYTHONUNBUFFERED": "1",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(VENV_BIN / "python"), "manage.py", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, check=False)
    if done.returncode:
        sys.exit(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _rows(database_url: str) -> int:
    with psycopg.connect(database_url) as connection:
        return connection.execute("SELECT count(*) FROM usage_usagelog").fetchone()[0]


class Browser:
    """One logged-in visitor: a session cookie over a keep-alive connection. The app runs with production
    settings (secure cookies, CSRF's referer check), so requests say they came through an HTTPS proxy."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, bytes, float]:
        headers = {"Host": f"127.0.0.1:{self.port}", "X-Forwarded-Proto": "https",
                   "Referer": f"https://127.0.0.1:{self.port}/accounts/login/",
                   "Cookie": "; ".join(f"{name}={value}" for name, value in self.cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        started = time.perf_counter()
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        content = response.read()
        elapsed = time.perf_counter() - started
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return response.status, content, elapsed

    def log_in(self, username: str) -> None:
        status, page, _ = self.request("GET", "/accounts/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        if status != 200 or token is None:
            sys.exit(f"the login page answered {status}")
        status, _, _ = self.request("POST", "/accounts/login/", urlencode(
            {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token.group(1).decode()}))
        if status != 302:
            sys.exit(f"logging in as {username} answered {status}, not 302")


def _wait_ready(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit("the app exited while starting (see var/bench-dashboard-app.log)")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/accounts/login/", headers={"X-Forwarded-Proto": "https"})
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    sys.exit("the app did not answer within a minute")


def _measure(port: int, loads: int) -> list[dict]:
    results = []
    for path, username in PAGES:
        browser = Browser(port)
        browser.log_in(username)
        status, content, first = browser.request("GET", path)
        if status != 200:
            sys.exit(f"{path} as {username} answered {status}")
        times = []
        for _ in range(loads):
            status, content, elapsed = browser.request("GET", path)
            assert status == 200, (path, status)
            times.append(elapsed * 1000)
        totals = dict(re.findall(rb'data-total="(\w+)">([^<]+)<', content))
        results.append({"path": path, "user": username, "first_ms": first * 1000, "median_ms": statistics.median(times),
                        "max_ms": max(times), "times": times, "bytes": len(content),
                        "requests": totals.get(b"requests", b"?").decode()})
    return results


def _write_results(results: list[dict], *, rows: int, fill: str, limit: float, loads: int, redis: bool) -> None:
    load = os.getloadavg()
    lines = [
        "<!-- dashboard -->",
        f"**Run:** {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `make bench-dashboard`; {rows:,} usage rows over 30 days "
        f"(2,000 users, ~6,000 keys, 8 models); quotas on {'Redis' if redis else 'the database'}; "
        f"load average at the end {load[0]:.1f} on {_machine()}.",
        "",
        f"{fill}",
        "",
        f"| page | as | first load ms | median of {loads} ms | max ms | requests shown | HTML bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(f"| `{result['path']}` | {result['user']} | {result['first_ms']:.0f} | {result['median_ms']:.0f} "
                     f"| {result['max_ms']:.0f} | {result['requests']} | {result['bytes']:,} |")
    verdict = all(result["median_ms"] <= limit for result in results)
    lines += ["", f"Limit: median ≤ {limit:.0f} ms per page: **{'pass' if verdict else 'FAIL'}**.", "<!-- /dashboard -->"]
    block = "\n".join(lines)
    text = RESULTS.read_text()
    if "<!-- dashboard -->" in text:
        text = re.sub(r"<!-- dashboard -->.*?<!-- /dashboard -->", lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Dashboard (`make bench-dashboard`)\n\n" + block + "\n"
    RESULTS.write_text(text)


def main() -> None:
    database_url = os.environ.get("BENCH_DASHBOARD_DATABASE_URL",
                                  "postgres://postgres@127.0.0.1:5432/llmhub_bench_dashboard")
    redis_url = os.environ.get("BENCH_DASHBOARD_REDIS_URL", "")
    rows = _env_int("BENCH_DASHBOARD_ROWS", 10_000_000)
    loads = _env_int("BENCH_DASHBOARD_LOADS", 7)
    limit = float(os.environ.get("BENCH_DASHBOARD_LIMIT_MS", 200))
    _database_create(database_url)
    env = _app_env(database_url, redis_url)
    _manage(env, "migrate", "--noinput", "-v0")
    _manage(env, "load_models", "-v0")
    _manage(env, "collectstatic", "--noinput", "-v0")  # production serves the hashed names, as `make serve` does
    fill = "Fill: kept from an earlier run (same row count)."
    if os.environ.get("BENCH_DASHBOARD_REFILL") == "1" or _rows(database_url) != rows:
        print(f"filling {rows:,} usage rows (minutes)…", flush=True)
        output = _manage(env, "usage_fill_bench", "--rows", str(rows))
        fill = "Fill: " + output.strip().splitlines()[-1].removeprefix("filled: ") + "."
        print(fill, flush=True)
    VAR.mkdir(exist_ok=True)
    port = _free_port()
    with open(VAR / "bench-dashboard-app.log", "ab") as log:
        app = subprocess.Popen(
            [str(VENV_BIN / "uvicorn"), "llmhub.asgi:application", "--host", "127.0.0.1", "--port", str(port),
             "--loop", UVICORN_LOOP, "--http", "httptools", "--no-access-log", "--lifespan", "on"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(port, app)
        results = _measure(port, loads)
    finally:
        app.terminate()
        app.wait(timeout=30)
    for result in results:
        print(f"{result['path']:24} as {result['user']:13} first {result['first_ms']:6.0f} ms  median "
              f"{result['median_ms']:6.0f} ms  max {result['max_ms']:6.0f} ms  ({result['requests']} requests shown)")
    _write_results(results, rows=rows, fill=fill, limit=limit, loads=loads, redis=bool(redis_url))
    if any(result["median_ms"] > limit for result in results):
        sys.exit(f"FAIL: a page's median is above {limit:.0f} ms")
    print(f"pass: every page's median is at most {limit:.0f} ms (bench/RESULTS.md updated)")


if __name__ == "__main__":
    main()
