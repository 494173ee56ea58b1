"""Prometheus /metrics over real HTTP: what requests, refusals and upstream failures add up to, the token, the
exposition's format (parsed by prometheus_client's own parser), and one view summed over two uvicorn workers."""

import http.client
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import openai
import orjson
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from conftest import usage_rows
from llmhub.testing import ServerProcess, database_url, free_port, production_env, uvicorn_command
from registry.models import QuotaLimit, Tier

TOKEN = "scrape-token-0123456789"
CHAT = "v1.chat_completions"

Samples = dict[tuple[str, frozenset], float]


def parsed(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(port: int, *, token: str | None = TOKEN, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def metrics(port: int) -> Samples:
    status, headers, body = scrape(port)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=")
    return parsed(body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def eventually(condition, *, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# --- One process (the test's own server): what is counted --------------------------------------------------

@pytest.fixture
def scraping(settings):
    settings.LLMHUB = {**settings.LLMHUB, "METRICS_TOKEN": TOKEN}


@pytest.fixture
def sdk(live_hub, free_user, api_key_for) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(free_user), max_retries=0, timeout=10)


def test_it_refuses_scrapes_without_the_token(live_hub, settings):
    port = port_of(live_hub)
    settings.LLMHUB = {**settings.LLMHUB, "METRICS_TOKEN": TOKEN}
    for token in (None, "wrong-token", TOKEN + "x"):
        status, headers, body = scrape(port, token=token)
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        assert orjson.loads(body)["error"]["code"] == "invalid_metrics_token"
        assert TOKEN.encode() not in body
    assert scrape(port, method="POST")[0] == 405
    assert scrape(port)[0] == 200

    # No token: closed in production, open to loopback clients in the embedded mode only.
    settings.LLMHUB = {**settings.LLMHUB, "METRICS_TOKEN": ""}
    settings.EMBEDDED = False
    status, _, body = scrape(port, token=None)
    assert status == 403 and orjson.loads(body)["error"]["code"] == "metrics_token_unset"
    settings.EMBEDDED = True
    assert scrape(port, token=None)[0] == 200


def test_it_counts_requests_tokens_cost_and_latency_from_the_usage_rows(live_hub, sdk, scraping):
    port = port_of(live_hub)
    before = metrics(port)
    for text in ("one", "two", "three"):
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": text}], max_tokens=8)
    for _ in sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "a stream"}], stream=True):
        pass
    rows = usage_rows(4)  # a flush: the writer counts what it flushes
    after = metrics(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert len(rows) == 4
    assert delta("llmhub_requests_total", endpoint=CHAT, model="demo", status="ok", code="200") == 4
    assert delta("llmhub_tokens_total", endpoint=CHAT, model="demo", direction="input") == sum(r.input_tokens for r in rows)
    assert delta("llmhub_tokens_total", endpoint=CHAT, model="demo", direction="output") == sum(r.output_tokens for r in rows)
    assert sum(r.cost for r in rows) > 0
    assert delta("llmhub_cost_total", endpoint=CHAT, model="demo") == pytest.approx(float(sum(r.cost for r in rows)))
    assert delta("llmhub_request_duration_seconds_count", endpoint=CHAT, model="demo") == 4
    assert delta("llmhub_request_duration_seconds_sum", endpoint=CHAT, model="demo") == pytest.approx(
        sum(r.latency_ms for r in rows) / 1000)
    assert delta("llmhub_time_to_first_token_seconds_count", endpoint=CHAT, model="demo") == 1


def test_it_counts_upstream_errors_by_kind_and_quota_refusals(live_hub, sdk, simulated_upstream, scraping):
    port = port_of(live_hub)
    before = metrics(port)
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="requests", period="day", limit=Decimal(1))
    simulated_upstream.set_fault("demo", "status=503")
    answer = sdk.chat.completions.with_raw_response.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    assert answer.headers["x-llmhub-model"] == "demo-backup"  # the fallback answered
    simulated_upstream.clear_faults()
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "over"}])
    usage_rows(1)
    after = metrics(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    upstream_errors = {labels: count - before.get((name, labels), 0) for (name, labels), count in after.items()
                       if name == "llmhub_upstream_errors_total" and count != before.get((name, labels), 0)}
    assert upstream_errors == {frozenset({("model", "demo"), ("kind", "unavailable")}): 1}
    assert delta("llmhub_requests_total", endpoint=CHAT, model="demo", status="ok", code="200") == 1
    assert delta("llmhub_quota_refusals_total", metric="requests", period="day", scope="user") == 1


@pytest.mark.django_db(transaction=True)
def test_it_counts_each_row_once_while_rows_arrive_during_flushes(writer_paused, make_entry):
    from usage.models import UsageLog
    from usage.services import usage_flush, usage_record

    def requests() -> float:
        return REGISTRY.get_sample_value("llmhub_requests_total", {"endpoint": "bench.race", "model": "demo",
                                                                   "status": "ok", "code": "200"}) or 0.0

    before, done = requests(), threading.Event()
    entries = [make_entry(endpoint="bench.race") for _ in range(3000)]

    def record_all() -> None:
        for entry in entries:
            usage_record(entry)
        done.set()

    recorder = threading.Thread(target=record_all)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns every few bytecodes: rows arrive in the middle of a flush
    try:
        recorder.start()
        while not done.is_set():
            usage_flush()  # each flush counts, then writes, while rows keep arriving
        recorder.join()
    finally:
        sys.setswitchinterval(switch_interval)
    usage_flush()

    assert UsageLog.objects.filter(endpoint="bench.race").count() == 3000
    assert requests() - before == 3000


# --- Two uvicorn workers: one view -------------------------------------------------------------------------

def _process_start(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]


def _worker_files(folder: Path) -> dict[int, list[Path]]:
    files: dict[int, list[Path]] = {}
    for path in folder.glob("*.db"):
        files.setdefault(int(path.stem.rsplit("_", 1)[1]), []).append(path)
    return files


def _requests_of(files: list[Path], scratch: Path) -> float:
    """One worker's requests counter, read from its own files alone."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for path in files:
        shutil.copy(path, scratch / path.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(scratch))
    return sum(count for (name, _), count in parsed(generate_latest(registry).decode()).items()
               if name == "llmhub_requests_total")


@pytest.mark.django_db(transaction=True)
def test_two_workers_report_one_view(registry, make_user, api_key_for, simulated_upstream, tmp_path):
    key = api_key_for(make_user("scraped", tier="free"))
    base = tmp_path / "prometheus"
    stale = base / "999999999-1"  # a server long gone: cleaned when the next one starts
    stale.mkdir(parents=True)
    (stale / "counter_999999999.db").write_bytes(b"\0" * 16)
    notes = base / "notes"  # not a server's folder: left alone
    notes.mkdir()
    port = free_port()
    env = production_env(database_url=database_url(), LLMHUB_SIMULATOR_URL=simulated_upstream.base_url,
                         LLMHUB_METRICS_TOKEN=TOKEN, LLMHUB_METRICS_DIR=str(base))
    server = ServerProcess(uvicorn_command("llmhub.asgi:application", port=port, workers=2), env=env,
                           log=tmp_path / "app.log").start()
    sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=20)
    try:
        server.wait_output(lambda text: text.count("Application startup complete") == 2)
        folder = base / f"{server.process.pid}-{_process_start(server.process.pid)}"
        assert folder.is_dir() and not stale.exists() and notes.is_dir()
        assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None  # the children's alone

        # Fresh connections, several at once, until both workers have answered some.
        sent = 0
        with ThreadPoolExecutor(8) as pool:
            for _ in range(10):
                list(pool.map(lambda n: sdk.with_options(max_retries=0).chat.completions.create(
                    model="demo", messages=[{"role": "user", "content": f"n{n}"}], max_tokens=4), range(16)))
                sent += 16
                time.sleep(0.4)  # the writers' flush interval: their rows are counted
                per_worker = {pid: _requests_of(files, tmp_path / "one") for pid, files in _worker_files(folder).items()}
                if sum(count > 0 for count in per_worker.values()) >= 2 and sum(per_worker.values()) == sent:
                    break
        assert sum(count > 0 for count in per_worker.values()) == 2, per_worker
        assert sum(per_worker.values()) == sent

        # Whichever worker answers the scrape, it reports both workers' requests.
        for _ in range(6):
            samples = metrics(port)
            assert value(samples, "llmhub_requests_total", endpoint=CHAT, model="demo", status="ok", code="200") == sent
            assert value(samples, "llmhub_request_duration_seconds_count", endpoint=CHAT, model="demo") == sent
        assert scrape(port, token="wrong")[0] == 401

        # In flight: a slow request shows while it runs, and leaves.
        simulated_upstream.set_fault("demo", "latency=2500")
        slow = threading.Thread(target=lambda: sdk.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "slow"}], max_tokens=4))
        slow.start()
        assert eventually(lambda: value(metrics(port), "llmhub_requests_in_flight", endpoint=CHAT) == 1)
        slow.join()
        simulated_upstream.clear_faults()
        sent += 1
        assert eventually(lambda: value(metrics(port), "llmhub_requests_in_flight", endpoint=CHAT) == 0)
        assert eventually(lambda: value(metrics(port), "llmhub_requests_total", endpoint=CHAT, model="demo",
                                        status="ok", code="200") == sent)

        # A worker killed (uvicorn starts another): its requests stay in the totals, its live gauge leaves.
        victim = next(pid for pid, files in _worker_files(folder).items()
                      if pid != server.process.pid and _requests_of(files, tmp_path / "one") > 0)
        os.kill(victim, signal.SIGKILL)
        # Marked dead by the next scrape after its death.
        assert eventually(lambda: metrics(port) and not (folder / f"gauge_livesum_{victim}.db").exists())
        samples = metrics(port)
        assert value(samples, "llmhub_requests_total", endpoint=CHAT, model="demo", status="ok", code="200") == sent
        assert (folder / f"counter_{victim}.db").exists()
    finally:
        server.stop()
