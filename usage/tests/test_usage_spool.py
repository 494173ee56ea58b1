"""usage/spool.py: in the embedded mode usage rows leave the app process through an append-only spool; `usage_consume`
(or, without it, the app's own writer thread) writes them once each, and an app process killed with SIGKILL loses no
row of an answered request."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from openai import OpenAI

from llmhub.testing import ServerProcess, database_url, free_port, production_env, uvicorn_command
from usage.billing import BillingEventEntry
from usage.entries import entry_encode
from usage.models import BillingEvent, UsageLog
from usage.services import usage_flush, usage_record
from usage.spool import SpoolSegments, spool_drain, spool_lock_open, spool_lock_release, spool_lock_try, spool_segments
from usage.tests.conftest import wait_until
from usage.writer import writer

pytestmark = pytest.mark.django_db(transaction=True)

ANSWERED = 30
STREAMED = 10


def _embedded_env(spool: Path, **variables: str) -> dict[str, str]:
    """A child process in the embedded mode on this test's SQLite database, with its own spool folder (in the
    services run: on its PostgreSQL database, no Redis, the spool named)."""
    spooled = {"LLMHUB_USAGE_STREAM_URL": "", "LLMHUB_USAGE_SPOOL_DIR": str(spool), **variables}
    if connection.vendor != "sqlite":
        return production_env(database_url=database_url(), **spooled)
    env = {name: value for name, value in os.environ.items()
           if name not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
                           "PROMETHEUS_MULTIPROC_DIR")}
    return env | {"DJANGO_SETTINGS_MODULE": "llmhub.settings", "LLMHUB_SQLITE_PATH": connection.settings_dict["NAME"],
                  **spooled}


def _consumer(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "manage.py", "usage_consume", *args], cwd=django_settings.BASE_DIR,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _answers(port: int, key: str) -> list[str]:
    """Sends ANSWERED plain and STREAMED streamed chat requests with the openai SDK; returns their request ids."""
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "hello"}]
    answered = []
    for _ in range(ANSWERED):
        raw = client.chat.completions.with_raw_response.create(model="demo", messages=messages)
        assert raw.parse().choices[0].message.content
        answered.append(raw.headers["x-request-id"])
    for _ in range(STREAMED):
        raw = client.chat.completions.with_raw_response.create(model="demo", messages=messages, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
        answered.append(raw.headers["x-request-id"])
    return answered


def _lock_held(spool: Path) -> bool:
    lock = spool_lock_open(str(spool))
    try:
        if spool_lock_try(lock):
            spool_lock_release(lock)
            return False
        return True
    finally:
        os.close(lock)


def _logged(request_ids: list[str]) -> int:
    return UsageLog.objects.filter(request_id__in=request_ids).count()


def test_it_loses_no_answered_row_when_the_app_is_killed(registry, free_user, api_key_for, tmp_path) -> None:
    spool = tmp_path / "spool"
    # The app's own writer thread would drain only after 10 minutes: every row must come through its spool segment.
    app = ServerProcess(uvicorn_command("llmhub.asgi:application", port=(port := free_port())),
                        env=_embedded_env(spool, LLMHUB_USAGE_FLUSH_INTERVAL_SECONDS="600"), log=tmp_path / "app.log")
    consumer = _consumer(_embedded_env(spool))
    try:
        assert wait_until(lambda: _lock_held(spool), timeout=60)  # the consumer runs
        with app:
            app.wait_output(lambda text: "Uvicorn running on" in text)
            answered = _answers(port, api_key_for(free_user))
            time.sleep(0.5)  # the consumer looks at the spool every 0.1 s
            assert _logged(answered) == 0  # still in the app's open segment, which nobody may drain while it lives
            app.signal(signal.SIGKILL)  # no exit handler runs
            app.process.wait(timeout=10)

        assert wait_until(lambda: _logged(answered) == len(answered), timeout=20), app.output()
        assert len(answered) == ANSWERED + STREAMED
        assert spool_segments(str(spool)) == []  # the dead process's segment is deleted once written
    finally:
        consumer.send_signal(signal.SIGTERM)
        output = consumer.communicate(timeout=30)[0]
    assert consumer.returncode == 0, output
    assert f"usage rows written: {ANSWERED + STREAMED}" in output


def _spooled(folder: Path, count: int, *, per_segment: int) -> list[str]:
    """`count` usage rows in segments of `per_segment`, as an app process leaves them."""
    segments, request_ids = SpoolSegments(), []
    for number in range(count):
        request_id = f"spooled-{number}"
        segments.append(entry_encode(_entry(request_id)), str(folder))
        request_ids.append(request_id)
        if (number + 1) % per_segment == 0:
            segments.roll(str(folder))
    segments.close()
    return request_ids


def _entry(request_id: str):
    from usage.entries import UsageEntry

    return UsageEntry(request_id=request_id, endpoint="v1.chat_completions", status="ok", http_status=200,
                      requested_model="demo", answered_model="demo", input_tokens=10, output_tokens=5, latency_ms=1.0)


def test_it_writes_each_row_once_when_the_consumer_dies_mid_batch_and_restarts(tmp_path) -> None:
    spool = tmp_path / "spool"
    request_ids = _spooled(spool, 20_000, per_segment=250)
    env = _embedded_env(spool)

    # Killed wherever it is: inside a batch's transaction, between its commit and the segments' deletion, or between
    # two batches.
    consumer = _consumer(env, "--batch-size", "1000")
    assert wait_until(lambda: UsageLog.objects.count() > 0, timeout=60)
    consumer.send_signal(signal.SIGKILL)
    consumer.wait(timeout=10)
    assert UsageLog.objects.count() < len(request_ids)

    # And the worst case for certain: every segment still there although its rows were committed.
    copies = tmp_path / "copies"
    shutil.copytree(spool, copies)
    restarted = _consumer(env, "--once")
    assert restarted.wait(timeout=120) == 0, restarted.stdout.read()
    assert UsageLog.objects.count() == len(request_ids)
    shutil.copytree(copies, spool, dirs_exist_ok=True)
    again = _consumer(env, "--once")
    assert again.wait(timeout=120) == 0, again.stdout.read()

    assert UsageLog.objects.count() == len(request_ids)
    assert set(UsageLog.objects.values_list("request_id", flat=True)) == set(request_ids)
    assert spool_segments(str(spool)) == []


def test_it_writes_the_rows_without_a_consumer(registry, free_user, api_key_for, tmp_path) -> None:
    spool = tmp_path / "spool"
    with ServerProcess(uvicorn_command("llmhub.asgi:application", port=(port := free_port())),
                       env=_embedded_env(spool), log=tmp_path / "app.log") as app:
        app.wait_output(lambda text: "Uvicorn running on" in text)
        answered = _answers(port, api_key_for(free_user))

        assert wait_until(lambda: _logged(answered) == len(answered), timeout=10), app.output()
        assert len(spool_segments(str(spool))) <= 1  # the app's open segment, empty


@pytest.fixture
def spooling(settings, tmp_path) -> Path:
    """This process's writer on a spool (the test process's is off: conftest.py)."""
    writer.stop()
    folder = tmp_path / "spool"
    settings.LLMHUB = {**settings.LLMHUB, "USAGE_SPOOL": True, "USAGE_SPOOL_DIR": str(folder),
                       "USAGE_FLUSH_INTERVAL_SECONDS": 0.05}
    yield folder
    writer.stop()


def test_it_stays_idle_while_another_process_drains_and_takes_over_when_it_is_gone(spooling) -> None:
    lock = spool_lock_open(str(spooling))
    assert spool_lock_try(lock)  # as a running `usage_consume` holds it (another descriptor: another holder)
    try:
        for number in range(5):
            usage_record(_entry(f"idle-{number}"))
        assert writer.pending == 0  # in the spool, not in memory
        time.sleep(0.5)
        assert UsageLog.objects.count() == 0
        assert len(spool_segments(str(spooling))) >= 2  # the rolled segment waits for the lock's holder
    finally:
        spool_lock_release(lock)
        os.close(lock)

    assert wait_until(lambda: UsageLog.objects.count() == 5, timeout=5)


def test_it_writes_billing_events_through_the_spool(spooling) -> None:
    # The Redis quota back end hands the thresholds a settle crossed to the writer (usage/quota_backends.py).
    event = BillingEventEntry(type="quota.threshold", dedupe_key="quota.threshold:test:100:80",
                              payload={"user_id": 1, "percent": 80})
    writer.record(event)
    writer.record(event)
    usage_record(_entry("with-an-event"))
    assert writer.pending == 0

    usage_flush()

    assert list(BillingEvent.objects.values_list("dedupe_key", "payload")) == [(event.dedupe_key, event.payload)]
    assert UsageLog.objects.filter(request_id="with-an-event").exists()
    assert spool_drain(str(spooling)) == 0


def test_it_rolls_and_writes_a_full_segment_at_once(spooling, settings) -> None:
    writer.stop()
    settings.LLMHUB = {**settings.LLMHUB, "USAGE_FLUSH_INTERVAL_SECONDS": 3600, "USAGE_BATCH_SIZE": 10}
    for number in range(9):
        usage_record(_entry(f"burst-{number}"))
    assert not wait_until(lambda: UsageLog.objects.exists(), timeout=0.3)

    usage_record(_entry("burst-9"))

    assert wait_until(lambda: UsageLog.objects.count() == 10, timeout=5)
