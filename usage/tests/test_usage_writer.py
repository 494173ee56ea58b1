import asyncio
import gc
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import OperationalError, connection
from django.db.backends.base.base import BaseDatabaseWrapper

from llmhub.testing import ServerProcess, production_env, uvicorn_command
from usage import writer as writer_module
from usage.models import UsageLog
from usage.services import usage_flush, usage_record
from usage.tests.conftest import wait_until
from usage.writer import writer

PROBE_ROWS = 300


@pytest.fixture
def flush_interval(settings):
    def set_options(seconds: float, batch_size: int = 500) -> None:
        writer.stop()
        settings.LLMHUB = {**settings.LLMHUB, "USAGE_FLUSH_INTERVAL_SECONDS": seconds, "USAGE_BATCH_SIZE": batch_size}

    return set_options


@pytest.mark.django_db(transaction=True)
def test_it_writes_in_the_background_without_a_flush(flush_interval, make_entry) -> None:
    flush_interval(0.05)
    for _ in range(5):
        usage_record(make_entry())

    assert wait_until(lambda: UsageLog.objects.count() == 5)
    assert writer.pending == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
@pytest.mark.django_db(transaction=True)
def test_it_writes_at_a_lower_cpu_priority_than_the_requests(flush_interval, make_entry) -> None:
    # The event loop is woken ahead of a batch being written (the p99 at concurrency 16), yet the writer is never
    # starved: eight nice levels below the thread that started it, not the lowest priority there is.
    flush_interval(0.05)
    requests_priority = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    usage_record(make_entry())
    assert wait_until(lambda: UsageLog.objects.count() == 1)

    assert os.getpriority(os.PRIO_PROCESS, writer._thread.native_id) == min(19, requests_priority + 8)


@pytest.mark.django_db(transaction=True)
def test_it_writes_at_once_when_a_batch_is_full(flush_interval, make_entry) -> None:
    flush_interval(3600, batch_size=10)
    for _ in range(9):
        usage_record(make_entry())
    assert not wait_until(lambda: UsageLog.objects.exists(), timeout=0.3)

    usage_record(make_entry())

    assert wait_until(lambda: UsageLog.objects.count() == 10, timeout=5)


@pytest.mark.django_db(transaction=True)
def test_it_keeps_no_debug_log_of_its_batches(flush_interval, make_entry, settings) -> None:
    # With DEBUG on (the embedded default) Django keeps each connection's last 9,000 queries until the request cycle
    # resets them; the writer's thread has none, so every batch stayed in memory (`make soak`: RSS crept ~0.3 MB/min).
    settings.DEBUG = True
    flush_interval(0.02)
    for written in range(1, 6):
        usage_record(make_entry())
        assert wait_until(lambda written=written: UsageLog.objects.count() == written)

    # Per connection (earlier tests' threads may have left theirs): at most the last batch, cleared before the next.
    batches_kept = [sum(query["sql"].startswith("1 times: INSERT INTO") for query in wrapper.queries_log)
                    for wrapper in gc.get_objects() if issubclass(type(wrapper), BaseDatabaseWrapper)]  # proxies untouched
    assert max(batches_kept) <= 1


@pytest.mark.django_db(transaction=True)
def test_it_keeps_the_rows_through_a_database_error_and_writes_them_once(flush_interval, make_entry, monkeypatch) -> None:
    flush_interval(0.05)
    real_insert, calls = writer_module.rows_insert, []

    def insert_failing_once(entries) -> None:
        calls.append(len(entries))
        if len(calls) == 1:
            real_insert(entries)  # the rows reach the database, but the flush still fails (lost commit reply)
            raise OperationalError("server closed the connection unexpectedly")
        real_insert(entries)

    monkeypatch.setattr(writer_module, "rows_insert", insert_failing_once)
    entries = [make_entry() for _ in range(20)]
    for entry in entries:
        usage_record(entry)

    assert wait_until(lambda: len(calls) >= 2 and writer.pending == 0)
    assert sorted(UsageLog.objects.values_list("request_id", flat=True)) == sorted(entry.request_id for entry in entries)


@pytest.mark.django_db(transaction=True)
def test_it_retries_with_backoff_while_the_database_is_down(flush_interval, make_entry, monkeypatch) -> None:
    flush_interval(0.02)
    real_insert, failures = writer_module.rows_insert, []

    def insert_down_for_a_while(entries) -> None:
        if len(failures) < 4:
            failures.append(len(entries))
            raise OperationalError("connection refused")
        real_insert(entries)

    monkeypatch.setattr(writer_module, "rows_insert", insert_down_for_a_while)
    for _ in range(7):
        usage_record(make_entry())

    assert wait_until(lambda: UsageLog.objects.count() == 7)
    assert failures == [7, 7, 7, 7]


@pytest.mark.django_db
def test_it_bounds_the_queue_and_says_so(writer_paused, make_entry, monkeypatch, caplog) -> None:
    monkeypatch.setattr(writer_module, "MAX_PENDING", 5)

    for _ in range(8):
        usage_record(make_entry())

    assert writer.pending == 5
    assert "usage log queue full" in caplog.text
    assert sum("usage log queue full" in record.message for record in caplog.records) == 1


@pytest.mark.django_db
def test_it_never_raises_to_the_caller_and_drops_only_what_the_database_refuses(writer_paused, make_entry, caplog) -> None:
    good, bad = make_entry(), make_entry(input_tokens="many")

    usage_record(object())
    usage_record(bad)
    usage_record(good)

    assert writer.pending == 2
    assert usage_flush() == 2
    assert list(UsageLog.objects.values_list("request_id", flat=True)) == [good.request_id]
    assert f"usage row {bad.request_id} refused by the database and dropped" in caplog.text
    assert writer.pending == 0


# The exit tests run the writer in a real process on a fresh SQLite file, in production mode.
@pytest.fixture(scope="module")
def migrated_database(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("usage-exit") / "template.sqlite3"
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=django_settings.BASE_DIR,
                   env=_production_env(path), check=True, timeout=120)
    return path


def _production_env(database: Path) -> dict[str, str]:
    return production_env(database_url=f"sqlite:///{database}", LLMHUB_USAGE_FLUSH_INTERVAL_SECONDS="3600",
                          LLMHUB_USAGE_BATCH_SIZE="100000", PROBE_ROWS=str(PROBE_ROWS))


@pytest.fixture
def database(migrated_database, tmp_path) -> Path:
    path = tmp_path / "usage.sqlite3"
    shutil.copy(migrated_database, path)
    return path


def _rows(database: Path) -> tuple[int, int]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage_usagelog").fetchone()


@pytest.mark.mode_independent  # its own processes and SQLite file
def test_it_writes_the_queued_rows_when_the_process_exits_normally(database) -> None:
    result = subprocess.run([sys.executable, "-c", "import usage.tests.shutdown_probe"], cwd=django_settings.BASE_DIR,
                            env=_production_env(database), capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert _rows(database) == (PROBE_ROWS, PROBE_ROWS)


# One worker: uvicorn drains, then re-raises SIGTERM into the handler usage installed at start-up. Several
# workers: each worker's uvicorn sends the ASGI lifespan shutdown after draining.
@pytest.mark.mode_independent
@pytest.mark.parametrize(("workers", "lifespan"), [(1, "off"), (2, "on")])
def test_it_writes_the_queued_rows_when_uvicorn_gets_sigterm(database, workers, lifespan, tmp_path) -> None:
    command = uvicorn_command("usage.tests.shutdown_probe:application", workers=workers, lifespan=lifespan)
    with ServerProcess(command, env=_production_env(database), log=tmp_path / "uvicorn.log") as server:
        output = server.wait_output(lambda text: text.count("queued ") == workers and "Uvicorn running on" in text)
        assert _rows(database) == (0, 0), output  # everything is still in memory

        server.signal(signal.SIGTERM)
        server.process.wait(timeout=60)

    assert server.process.returncode in (0, -signal.SIGTERM), server.output()
    assert _rows(database) == (PROBE_ROWS * workers, PROBE_ROWS * workers), server.output()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_it_writes_concurrent_records_once_each_to_postgresql(flush_interval, make_entry) -> None:
    assert connection.vendor == "postgresql"
    flush_interval(0.05, batch_size=200)
    entries = [make_entry() for _ in range(2000)]

    def record_all() -> None:
        for entry in entries:
            usage_record(entry)

    async def record_from_tasks() -> None:
        async def record(entry) -> None:
            usage_record(entry)

        await asyncio.gather(*(record(entry) for entry in entries))

    # Every entry is recorded three times, from two threads and from async tasks, so duplicates meet both
    # inside one batch and across batches.
    threads = [threading.Thread(target=record_all) for _ in range(2)]
    for thread in threads:
        thread.start()
    asyncio.run(record_from_tasks())
    for thread in threads:
        thread.join()

    assert wait_until(lambda: writer.pending == 0, timeout=30)
    assert UsageLog.objects.count() == 2000
    assert set(UsageLog.objects.values_list("request_id", flat=True)) == {entry.request_id for entry in entries}
