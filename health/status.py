"""Model status (healthy / degraded / down / unknown), derived from connectivity tests and live traffic.

Interface used by generation (must stay cheap and non-blocking):
- `health_note(model, ok=...)`: a live request to `model` succeeded or failed.
- `unhealthy_keys()`: the keys (`ModelSpec.key`) of models currently `down`, for routing.
- `model_status(model)`: the model's current `HealthSpec`.

How a status is made:
- The last test that reached a verdict (`status_from_test`): unreachable, key rejected or no answer to a
  plain chat → down; slow, a failed feature check, a claimed capability missing or a model missing from
  the upstream's list → degraded; else healthy. A test that crashed or timed out says nothing.
- Live traffic: consecutive failed requests since the last success (a live one, or a test that got an
  answer): 1-2 → degraded, 3 or more → down. A live success newer than a `down` test lifts it to degraded.
- The worse of the two wins; with neither, unknown.

Where it lives: `ModelHealth` rows, served from the `health` snapshot (query-free once warm; a change made
by any process is seen within REGISTRY_CACHE_CHECK_SECONDS, the snapshot being rebuilt by the first reader
after it), merged with this process's live counters. `health_note` only touches the counters; when the
status it sees changes, a background thread saves the row (off the event loop, tolerating a failing
database). Counters and snapshot belong to the registry snapshot they were made with: a rebuilt registry
(a model edited) starts them afresh from the rows.
"""

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import SynchronousOnlyOperation
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from health.breakers import CLOSED_SHOWN, BreakerShown, breaker_shown
from health.models import ModelHealth, ModelTest
from llmhub.db import connection_heal
from llmhub.snapshot import LocalSnapshot
from registry.models import LLMModel, UserLLMConfig
from registry.selectors import CAPABILITIES, ModelSpec, Registry, registry_snapshot

logger = logging.getLogger(__name__)

HEALTHY, DEGRADED, DOWN, UNKNOWN_STATUS = (str(status.value) for status in (
    ModelHealth.Status.HEALTHY, ModelHealth.Status.DEGRADED, ModelHealth.Status.DOWN, ModelHealth.Status.UNKNOWN))
_RANK = {HEALTHY: 0, UNKNOWN_STATUS: 1, DEGRADED: 2, DOWN: 3}
DOWN_AFTER_FAILURES = 3
FINISHED = (ModelTest.State.SUCCEEDED, ModelTest.State.FAILED)

Ident = tuple[bool, int]  # (a user's model?, primary key): how the rows know a model
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HealthSpec:
    status: str = "unknown"
    last_checked_at: datetime | None = None
    last_latency_ms: float | None = None
    breaker: BreakerShown = CLOSED_SHOWN


UNKNOWN = HealthSpec()


# --- Deriving a status (pure) ------------------------------------------------------------------------------

def model_answered(capabilities: dict | None) -> bool:
    """Whether a test got the model's answer: a chat, or for an embedding model an embedding."""
    return bool(capabilities) and (capabilities.get("chat") is True or capabilities.get("embeddings") is True)


def status_from_test(test: ModelTest, *, claimed: frozenset[str] = frozenset()) -> str | None:
    """The status a finished test gives its model, or None when it reached no verdict (crashed, timed out).
    `claimed`: the capabilities the model's configuration promises."""
    if test.reachable is None:
        return None
    capabilities = test.capabilities or {}
    if not test.reachable or test.key_accepted is False or not model_answered(capabilities):
        return DOWN
    slow = test.latency_ms is not None and test.latency_ms > settings.LLMHUB["MODEL_TEST_SLOW_MS"]
    check_failed = any(value is None for value in capabilities.values())
    missing = any(capabilities.get(name) is False for name in claimed)
    return DEGRADED if slow or check_failed or missing or test.model_found is False else HEALTHY


def live_status(failures: int) -> str | None:
    if failures >= DOWN_AFTER_FAILURES:
        return DOWN
    return DEGRADED if failures else None


def status_combine(tested: str | None, live: str | None) -> str:
    if live is None:
        return tested or UNKNOWN_STATUS
    return max(tested or HEALTHY, live, key=_RANK.__getitem__)


@dataclass(frozen=True, slots=True)
class _Stored:
    """A ModelHealth row with the verdict of the model's last test."""

    tested: str | None
    tested_at: float
    last_checked_at: datetime | None
    last_latency_ms: float | None
    live_failures: int
    live_failure_at: float
    reset_at: float  # the last success: a live one, or a test that got an answer


@dataclass(slots=True)
class _Live:
    """This process's live outcomes for one model, since its last success."""

    spec: ModelSpec  # counters belong to this very spec: a rebuilt registry starts them afresh
    failures: deque[float] = field(default_factory=lambda: deque(maxlen=DOWN_AFTER_FAILURES))
    success_at: float = 0.0


def _state(stored: _Stored | None, live: _Live | None) -> tuple[str, int]:
    """The merged (status, consecutive live failures) of one model."""
    reset_at = max(stored.reset_at if stored else 0.0, live.success_at if live else 0.0)
    failures = stored.live_failures if stored is not None and stored.live_failure_at > reset_at else 0
    if live is not None:
        failures = max(failures, sum(1 for moment in live.failures if moment > reset_at))
    tested = stored.tested if stored else None
    if tested == DOWN and reset_at > stored.tested_at:
        tested = DEGRADED  # it answered since the test that found it down
    return status_combine(tested, live_status(failures)), failures


# --- Stored state ------------------------------------------------------------------------------------------

def _ident(model: ModelSpec) -> Ident:
    return model.owner_id is not None, model.pk


def _row_ident(row: ModelHealth | ModelTest) -> Ident:
    return (row.user_model_id is not None, row.user_model_id or row.llm_model_id)


def _lookup(ident: Ident) -> dict[str, int]:
    return {"user_model_id": ident[1]} if ident[0] else {"llm_model_id": ident[1]}


def _timestamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0


def _claimed(target: LLMModel | UserLLMConfig | None) -> frozenset[str]:
    return frozenset(name for name in CAPABILITIES if getattr(target, f"supports_{name}", False))


def _stored(rows: QuerySet[ModelHealth]) -> dict[Ident, _Stored]:
    verdicts = ModelTest.objects.filter(state__in=FINISHED, reachable__isnull=False).order_by("-created_at", "-pk")
    rows = list(rows.select_related("llm_model", "user_model").annotate(test_id=Coalesce(
        Subquery(verdicts.filter(llm_model=OuterRef("llm_model")).values("pk")[:1]),
        Subquery(verdicts.filter(user_model=OuterRef("user_model")).values("pk")[:1]),
    )))
    tests = ModelTest.objects.in_bulk([row.test_id for row in rows if row.test_id])
    entries = {}
    for row in rows:
        test = tests.get(row.test_id)
        tested_at = _timestamp(test.finished_at) if test else 0.0
        answered = test is not None and model_answered(test.capabilities)
        entries[_row_ident(row)] = _Stored(
            tested=status_from_test(test, claimed=_claimed(row.user_model or row.llm_model)) if test else None,
            tested_at=tested_at, last_checked_at=row.last_checked_at, last_latency_ms=row.last_latency_ms,
            live_failures=row.live_failures, live_failure_at=_timestamp(row.last_live_failure_at),
            reset_at=max(_timestamp(row.last_live_success_at), tested_at if answered else 0.0),
        )
    return entries


@dataclass(frozen=True, slots=True)
class _View:
    registry: Registry  # the registry snapshot this view was built with
    specs: dict[Ident, ModelSpec]
    entries: dict[Ident, _Stored]
    down: frozenset[Ident]


def _view_build() -> _View:
    registry = registry_snapshot.get()
    specs = {_ident(spec): spec for spec in registry.models.values()}
    for own in registry.user_models.values():
        specs.update((_ident(spec), spec) for spec in own.values())
    entries = _stored(ModelHealth.objects.all())
    down = frozenset(ident for ident, stored in entries.items() if _state(stored, None)[0] == DOWN)
    return _View(registry=registry, specs=specs, entries=entries, down=down)


class _HealthSnapshot(LocalSnapshot[_View]):
    def latest(self) -> _View | None:
        """The snapshot held in memory, however old; never any I/O."""
        return self._value

    def fresh(self) -> bool:
        return self._warm() is not None

    def forget(self) -> None:
        """Drop this process's copy only (it was built under another registry)."""
        with self._lock:
            self._value = None


health_snapshot = _HealthSnapshot("health", _view_build)
# The ORM may not run on an event loop: there, a snapshot is (re)built on this thread while the loop waits,
# which happens about once a second (a version check) and after a change.
_builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-health-read")


def _off_loop(function: Callable[[], T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return function()

    def run() -> T:
        try:
            return function()
        finally:
            connection.close()

    return _builder.submit(run).result()


def _view_sync() -> _View:
    registry = registry_snapshot.get()
    view = health_snapshot.get()
    if view.registry is not registry:
        health_snapshot.forget()
        view = health_snapshot.get()
    return view


def _view() -> _View:
    """The snapshot, for the current registry. No query, no thread once warm."""
    try:
        registry = registry_snapshot.get()  # on the hot path the request has just fetched it: warm
    except SynchronousOnlyOperation:
        return _off_loop(_view_sync)  # the registry changed this very moment
    view = health_snapshot.latest()
    if view is not None and view.registry is registry and health_snapshot.fresh():
        return view
    return _off_loop(_view_sync)


# --- This process's live counters, saved by a background thread -------------------------------------------

_lock = threading.Lock()
_live: dict[Ident, _Live] = {}


class _Writer:
    """One daemon thread that saves live status changes. It reads and writes single rows only, never a
    shared snapshot (which the next reader rebuilds in its own thread, transaction and all)."""

    def __init__(self) -> None:
        self._pending: set[Ident] = set()
        self._busy = False
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, ident: Ident) -> None:
        with self._condition:
            self._pending.add(ident)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="model-health", daemon=True)
                self._thread.start()
            self._condition.notify()

    def wait_idle(self, timeout: float) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: not (self._pending or self._busy), timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending)
                idents, self._pending, self._busy = self._pending, set(), True
            try:
                connection_heal()
                for ident in idents:
                    _live_save(ident)
            except Exception as error:  # the database may be down: the next transition tries again
                logger.warning("model health not saved: %s", type(error).__name__,
                               exc_info=logger.isEnabledFor(logging.DEBUG))
            finally:
                with contextlib.suppress(DatabaseError):
                    connection.close()  # transitions are rare: hold no connection between them
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()


_writer = _Writer()


def _after_fork() -> None:
    # A forked child (gunicorn, celery prefork) has none of the parent's threads, and maybe a held lock.
    global _builder, _lock, _writer
    _builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-health-read")
    _lock = threading.Lock()
    _writer = _Writer()


os.register_at_fork(after_in_child=_after_fork)


def _moment(timestamp: float) -> datetime | None:
    return datetime.fromtimestamp(timestamp, tz=UTC) if timestamp else None


def _upsert(ident: Ident, fields: dict[str, Any]) -> None:
    owner_model = UserLLMConfig if ident[0] else LLMModel
    if not owner_model.objects.filter(pk=ident[1]).exists():
        return  # deleted meanwhile (or not committed yet: a write would only wait for its lock)
    fields = {**fields, "updated_at": timezone.now()}
    for _attempt in range(2):
        try:
            with transaction.atomic():
                if not ModelHealth.objects.filter(**_lookup(ident)).update(**fields):
                    ModelHealth.objects.create(**_lookup(ident), **fields)
            break
        except IntegrityError:
            continue  # created by another process meanwhile: update it
    health_snapshot.invalidate()


def _live_save(ident: Ident) -> None:
    stored = _stored(ModelHealth.objects.filter(**_lookup(ident))).get(ident)
    with _lock:
        entry = _live.get(ident)
        if entry is None:
            return
        status, failures = _state(stored, entry)
        failure_at = max(entry.failures[-1] if entry.failures else 0.0, stored.live_failure_at if stored else 0.0)
        success_at = entry.success_at
    fields: dict[str, Any] = {"status": status, "live_failures": failures, "last_live_failure_at": _moment(failure_at)}
    if success_at:
        fields["last_live_success_at"] = _moment(success_at)
    _upsert(ident, fields)


def _current_entry(registry: Registry, ident: Ident) -> _Live | None:
    """This process's counters for `ident`, unless they belong to a registry snapshot since replaced."""
    entry = _live.get(ident)
    if entry is None:
        return None
    spec = entry.spec
    models = registry.own_models(spec.owner_id) if spec.owner_id is not None else registry.models
    if models.get(spec.id) is not spec:
        del _live[ident]
        return None
    return entry


# --- The interface ----------------------------------------------------------------------------------------

def health_note(model: ModelSpec, *, ok: bool) -> None:
    """Counts a live request's outcome. No I/O, no query: a changed status is saved by a background thread."""
    ident = _ident(model)
    view = health_snapshot.latest()
    stored = view.entries.get(ident) if view is not None and view.specs.get(ident) is model else None
    with _lock:
        entry = _live.get(ident)
        if entry is None or entry.spec is not model:
            entry = _live[ident] = _Live(model)
        before = _state(stored, entry)[0]
        now = time.time()
        if ok:
            entry.success_at = now
            entry.failures.clear()
        else:
            entry.failures.append(now)
        after = _state(stored, entry)[0]
    if after != before:
        _writer.submit(ident)


def unhealthy_keys() -> frozenset[str]:
    """Keys of the models currently down. No query once warm."""
    view = _view()
    down = {ident: view.specs[ident].key for ident in view.down if ident in view.specs}
    with _lock:
        for ident in list(_live):
            entry = _current_entry(view.registry, ident)
            if entry is None:
                continue
            if _state(view.entries.get(ident), entry)[0] == DOWN:
                down[ident] = entry.spec.key
            else:
                down.pop(ident, None)
    return frozenset(down.values())


def model_status(model: ModelSpec) -> HealthSpec:
    """The model's current status, last test time and latency, and its circuit breaker. No query once warm."""
    view = _view()
    ident = _ident(model)
    stored = view.entries.get(ident)
    with _lock:
        entry = _live.get(ident)
        status = _state(stored, entry if entry is not None and entry.spec is model else None)[0]
    breaker = breaker_shown(model.key)
    if stored is None:
        return HealthSpec(status=status, breaker=breaker)
    return HealthSpec(status=status, last_checked_at=stored.last_checked_at, last_latency_ms=stored.last_latency_ms,
                      breaker=breaker)


def model_status_of(instance: LLMModel | UserLLMConfig) -> HealthSpec:
    """`model_status` for a database row (admin), also for a model the registry does not serve (disabled)."""
    view = _view()
    ident = (isinstance(instance, UserLLMConfig), instance.pk)
    spec = view.specs.get(ident)
    if spec is not None:
        return model_status(spec)
    stored = view.entries.get(ident)
    breaker = breaker_shown(model_key_of(instance))
    if stored is None:
        return HealthSpec(breaker=breaker)
    return HealthSpec(status=_state(stored, None)[0], last_checked_at=stored.last_checked_at,
                      last_latency_ms=stored.last_latency_ms, breaker=breaker)


def model_key_of(instance: LLMModel | UserLLMConfig) -> str:
    """The `ModelSpec.key` of a database row."""
    return f"user:{instance.owner_id}:{instance.slug}" if isinstance(instance, UserLLMConfig) else instance.public_id


def health_record_test(test: ModelTest) -> None:
    """Records a finished test on its model's health row. A test without a verdict changes nothing; one that
    got an answer also ends the run of live failures (it is a success)."""
    if test.reachable is None:
        return
    claimed = _claimed(test.user_model if test.user_model_id else test.llm_model)
    fields: dict[str, Any] = {"status": status_from_test(test, claimed=claimed), "last_checked_at": test.finished_at,
                              "last_latency_ms": test.latency_ms}
    if model_answered(test.capabilities):
        fields["live_failures"] = 0
    _upsert(_row_ident(test), fields)


def health_flush(timeout: float = 5.0) -> bool:
    """Waits until the background thread has saved every status change seen so far (tests, shutdown)."""
    return _writer.wait_idle(timeout)


def health_reset() -> None:
    """Forgets this process's live counters and snapshot (tests)."""
    with _lock:
        _live.clear()
    health_snapshot.forget()
