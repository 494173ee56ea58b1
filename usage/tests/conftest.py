import itertools
import time
from collections.abc import Callable

import pytest

from usage.services import UsageEntry
from usage.writer import writer

_request_ids = itertools.count()


@pytest.fixture
def writer_paused(settings) -> None:
    """No background thread: rows are written only by `usage_flush()`, in the test's thread."""
    writer.stop()
    settings.LLMHUB = {**settings.LLMHUB, "USAGE_FLUSH_INTERVAL_SECONDS": 0}


@pytest.fixture
def make_entry() -> Callable[..., UsageEntry]:
    def make(**fields) -> UsageEntry:
        fields.setdefault("request_id", f"req-{next(_request_ids)}")
        defaults = {"endpoint": "v1.chat_completions", "status": "ok", "http_status": 200, "requested_model": "demo",
                    "answered_model": "demo", "input_tokens": 10, "output_tokens": 5, "latency_ms": 12.5}
        return UsageEntry(**{**defaults, **fields})

    return make


def wait_until(condition: Callable[[], bool], *, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
