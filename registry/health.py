"""Model status (healthy / degraded / down / unknown), derived from connectivity tests and live traffic.

Interface used by generation (must stay cheap and non-blocking):
- `health_note(model, ok=...)`: a live request to `model` succeeded or failed.
- `unhealthy_keys()`: the keys (`ModelSpec.key`) of models currently `down`, for routing.
- `model_status(model)`: the model's current `HealthSpec`.

How a status is made:
- The last test that reached a verdict (see `status_from_test`): unreachable, key rejected or no answer to a
  plain chat → down; slow, a failed feature check, a claimed capability missing or a model missing from
  the upstream's list → degraded; else healthy. A test that crashed or timed out says nothing.
- Live traffic: consecutive failed requests since the last success (a live one, or a test that got an
  answer): 1-2 → degraded, 3 or more → down. A live success newer than a `down` test lifts it to degraded.
- The worse of the two wins; with neither, unknown.

Where it lives: `ModelHealth` rows, served from the `health` snapshot (no query once warm), plus this
process's live counters. `health_note` only touches the counters; when the status it sees changes, a
background thread merges them into the row (so other processes see it) off the event loop, tolerating a
failing database. On an event loop `model_status`/`unhealthy_keys` never wait for the database: a stale
snapshot is refreshed by that thread. Counters and snapshot belong to the registry snapshot they were
made with: a changed registry (a model edited) starts them afresh from the rows.
"""

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, close_old_connections, connection, transaction
from django.db.models import OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from llmhub.snapshot import LocalSnapshot
from registry.models import LLMModel, ModelHealth, ModelTest, UserLLMConfig
from registry.selectors import ModelSpec, Registry, registry_snapshot

logger = logging.getLogger(__name__)

HEALTHY, DEGRADED, DOWN, UNKNOWN_STATUS = (str(status.value) for status in (
    ModelHealth.Status.HEALTHY, ModelHealth.Status.DEGRADED, ModelHealth.Status.DOWN, ModelHealth.Status.UNKNOWN))
_RANK = {HEALTHY: 0, UNKNOWN_STATUS: 1, DEGRADED: 2, DOWN: 3}
DOWN_AFTER_FAILURES = 3
FINISHED = (ModelTest.State.SUCCEEDED, ModelTest.State.FAILED)

Ident = tuple[bool, int]  # (a user's model?, primary key): the rows' identity of a model


@dataclass(frozen=True, slots=True)
class HealthSpec:
    status: str = "unknown"
    last_checked_at: datetime | None = None
    last_latency_ms: float | None = None


UNKNOWN = HealthSpec()


# --- Deriving a status (pure) ------------------------------------------------------------------------------

def status_from_test(test: ModelTest, *, claimed: frozenset[str] = frozenset()) -> str | None:
    """The status a finished test gives its model, or None when it reached no verdict (crashed, timed out).
    `claimed`: the capabilities the model's configuration promises."""
    if test.reachable is None:
        return None
    capabilities = test.capabilities or {}
    if not test.reachable or test.key_accepted is False or capabilities.get("chat") is not True:
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


# --- Stored state: ModelHealth rows, as a snapshot ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Stored:
    tested: str | None  # the last verdict of a test
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


@dataclass(frozen=True, slots=True)
class _View:
    registry: Registry
    specs: dict[Ident, ModelSpec]
    entries: dict[Ident, _Stored]
    down: frozenset[Ident]


def _ident(model: ModelSpec) -> Ident:
    return model.owner_id is not None, model.pk


def _current_spec(registry: Registry, spec: ModelSpec) -> ModelSpec | None:
    models = registry.own_models(spec.owner_id) if spec.owner_id is not None else registry.models
    return models.get(spec.id)


def _timestamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0


def _specs_by_ident(registry: Registry) -> dict[Ident, ModelSpec]:
    specs = {_ident(spec): spec for spec in registry.models.values()}
    for own in registry.user_models.values():
        specs.update((_ident(spec), spec) for spec in own.values())
    return specs


def _view_build() -> _View:
    registry = registry_snapshot.get()
    specs = _specs_by_ident(registry)
    verdicts = ModelTest.objects.filter(state__in=FINISHED, reachable__isnull=False).order_by("-created_at", "-pk")
    rows = ModelHealth.objects.annotate(test_id=Coalesce(
        Subquery(verdicts.filter(llm_model=OuterRef("llm_model")).values("pk")[:1]),
        Subquery(verdicts.filter(user_model=OuterRef("user_model")).values("pk")[:1]),
    ))
    rows = list(rows)
    tests = ModelTest.objects.in_bulk([row.test_id for row in rows if row.test_id])
    entries = {}
    for row in rows:
        ident = (row.user_model_id is not None, row.user_model_id or row.llm_model_id)
        test = tests.get(row.test_id)
        spec = specs.get(ident)
        tested = status_from_test(test, claimed=spec.capabilities if spec else frozenset()) if test else None
        tested_at = _timestamp(test.finished_at) if test else 0.0
        answered = test is not None and (test.capabilities or {}).get("chat") is True
        entries[ident] = _Stored(
            tested=tested, tested_at=tested_at, last_checked_at=row.last_checked_at,
            last_latency_ms=row.last_latency_ms, live_failures=row.live_failures,
            live_failure_at=_timestamp(row.last_live_failure_at),
            reset_at=max(_timestamp(row.last_live_success_at), tested_at if answered else 0.0),
        )
    down = frozenset(ident for ident, stored in entries.items() if _state(stored, None)[0] == DOWN)
    return _View(registry=registry, specs=specs, entries=entries, down=down)


class _HealthSnapshot(LocalSnapshot[_View]):
    def latest(self) -> tuple[_View | None, bool]:
        """The snapshot held in memory, stale or not, and whether it is fresh; never any I/O."""
        return self._value, self._warm() is not None

    def forget(self) -> None:
        """Drop this process's copy only (it was built under another registry)."""
        with self._lock:
            self._value = None


health_snapshot = _HealthSnapshot("health", _view_build)


def _state(stored: _Stored | None, live: _Live | None) -> tuple[str, int]:
    """The merged (status, consecutive live failures) of one model."""
    live_success = live.success_at if live is not None else 0.0
    reset_at = max(stored.reset_at if stored else 0.0, live_success)
    failures = 0
    if stored is not None and stored.live_failure_at > reset_at:
        failures = stored.live_failures
    if live is not None:
        failures = max(failures, sum(1 for moment in live.failures if moment > reset_at))
    tested = stored.tested if stored else None
    if tested == DOWN and reset_at > stored.tested_at:
        tested = DEGRADED  # it answered since the test that found it down
    return status_combine(tested, live_status(failures)), failures


# --- This process's live counters and the background writer ----------------------------------------------

_lock = threading.Lock()
_live: dict[Ident, _Live] = {}


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Writer:
    """One daemon thread that saves live transitions and refreshes the snapshot, off any event loop."""

    def __init__(self) -> None:
        self._pending: set[Ident] = set()
        self._refresh = False
        self._busy = False
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, ident: Ident | None = None) -> None:
        with self._condition:
            if ident is None:
                self._refresh = True
            else:
                self._pending.add(ident)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="model-health", daemon=True)
                self._thread.start()
            self._condition.notify()

    def wait_idle(self, timeout: float) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: not (self._pending or self._refresh or self._busy), timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending or self._refresh)
                idents, self._pending = self._pending, set()
                self._refresh, self._busy = False, True
            try:
                close_old_connections()
                for ident in idents:
                    _live_save(ident)
                _view_sync()
            except Exception as error:  # the database may be down: the next transition tries again
                logger.warning("model health not saved: %s", type(error).__name__, exc_info=logger.isEnabledFor(logging.DEBUG))
            finally:
                with contextlib.suppress(DatabaseError):
                    connection.close()
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()


_writer = _Writer()


def _view_sync() -> _View:
    """The snapshot for the current registry (may query: not for an event loop)."""
    registry = registry_snapshot.get()
    view = health_snapshot.get()
    if view.registry is not registry:
        health_snapshot.forget()
        view = health_snapshot.get()
    return view


def _view() -> _View | None:
    registry = registry_snapshot.get()
    if not _on_event_loop():
        return _view_sync()
    view, fresh = health_snapshot.latest()
    current = view is not None and view.registry is registry
    if not (current and fresh):
        _writer.submit()
    return view if current else None


def _live_entry(registry: Registry | None, ident: Ident) -> _Live | None:
    entry = _live.get(ident)
    if entry is not None and registry is not None and _current_spec(registry, entry.spec) is not entry.spec:
        del _live[ident]
        return None
    return entry


def _upsert(ident: Ident, fields: dict[str, Any]) -> None:
    owner_model = UserLLMConfig if ident[0] else LLMModel
    if not owner_model.objects.filter(pk=ident[1]).exists():
        return  # deleted meanwhile (or not committed yet: a write would only wait for its lock)
    lookup = {"user_model_id": ident[1]} if ident[0] else {"llm_model_id": ident[1]}
    fields = {**fields, "updated_at": timezone.now()}
    for _attempt in range(2):
        try:
            with transaction.atomic():
                if ModelHealth.objects.filter(**lookup).update(**fields):
                    return
                ModelHealth.objects.create(**lookup, **fields)
                return
        except IntegrityError:
            continue  # created by another process meanwhile (or the model was deleted)


def _moment(timestamp: float) -> datetime | None:
    return datetime.fromtimestamp(timestamp, tz=UTC) if timestamp else None


def _live_save(ident: Ident) -> None:
    view = _view_sync()
    stored = view.entries.get(ident)
    with _lock:
        entry = _live_entry(view.registry, ident)
        if entry is None:
            return
        status, failures = _state(stored, entry)
        failure_at = max(entry.failures[-1] if entry.failures else 0.0, stored.live_failure_at if stored else 0.0)
        success_at = entry.success_at
    fields: dict[str, Any] = {"status": status, "live_failures": failures, "last_live_failure_at": _moment(failure_at)}
    if success_at:
        fields["last_live_success_at"] = _moment(success_at)
    _upsert(ident, fields)
    health_snapshot.invalidate()


# --- The interface ----------------------------------------------------------------------------------------

def health_note(model: ModelSpec, *, ok: bool) -> None:
    """Counts a live request's outcome. No I/O: a changed status is saved by a background thread."""
    ident = _ident(model)
    view, _fresh = health_snapshot.latest()
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
    """Keys of the models currently down (query-free when warm; on an event loop it never waits for the
    database)."""
    view = _view()
    registry = view.registry if view is not None else registry_snapshot.get()
    down = {ident: view.specs[ident].key for ident in view.down if ident in view.specs} if view is not None else {}
    with _lock:
        for ident in list(_live):
            entry = _live_entry(registry, ident)
            if entry is None:
                continue
            if _state(view.entries.get(ident) if view is not None else None, entry)[0] == DOWN:
                down[ident] = entry.spec.key
            else:
                down.pop(ident, None)
    return frozenset(down.values())


def model_status(model: ModelSpec) -> HealthSpec:
    """The model's current status, last test time and latency (query-free when warm)."""
    view = _view()
    ident = _ident(model)
    stored = view.entries.get(ident) if view is not None else None
    with _lock:
        entry = _live.get(ident)
        status = _state(stored, entry if entry is not None and entry.spec is model else None)[0]
    if stored is None:
        return HealthSpec(status=status)
    return HealthSpec(status=status, last_checked_at=stored.last_checked_at, last_latency_ms=stored.last_latency_ms)


def health_flush(timeout: float = 5.0) -> bool:
    """Waits until the background thread has saved every status change seen so far (tests, shutdown)."""
    return _writer.wait_idle(timeout)


def health_reset() -> None:
    """Forgets this process's live counters and snapshot (tests)."""
    with _lock:
        _live.clear()
    health_snapshot.forget()


# --- Writes from tests ------------------------------------------------------------------------------------

def health_record_test(test: ModelTest) -> None:
    """Records a finished test on its model's health row. A test without a verdict changes nothing; one that
    got an answer also ends the run of live failures (it is a success)."""
    if test.reachable is None:
        return
    ident: Ident = (test.user_model_id is not None, test.user_model_id or test.llm_model_id)
    claimed = _claimed(test)
    fields: dict[str, Any] = {"status": status_from_test(test, claimed=claimed), "last_checked_at": test.finished_at,
                              "last_latency_ms": test.latency_ms}
    if (test.capabilities or {}).get("chat") is True:
        fields["live_failures"] = 0
    _upsert(ident, fields)
    health_snapshot.invalidate()


def _claimed(test: ModelTest) -> frozenset[str]:
    from registry.selectors import CAPABILITIES

    target = test.user_model if test.user_model_id else test.llm_model
    return frozenset(name for name in CAPABILITIES if getattr(target, f"supports_{name}", False))


def model_status_of(instance: LLMModel | UserLLMConfig) -> HealthSpec:
    """`model_status` for a database row (admin): also for a model the registry does not serve (disabled)."""
    registry = registry_snapshot.get()
    if isinstance(instance, UserLLMConfig):
        spec = registry.own_models(instance.owner_id).get(instance.slug)
    else:
        spec = registry.models.get(instance.public_id)
    if spec is not None and spec.pk == instance.pk:
        return model_status(spec)
    view = _view_sync()
    stored = view.entries.get((isinstance(instance, UserLLMConfig), instance.pk))
    if stored is None:
        return UNKNOWN
    return HealthSpec(status=_state(stored, None)[0], last_checked_at=stored.last_checked_at,
                      last_latency_ms=stored.last_latency_ms)
