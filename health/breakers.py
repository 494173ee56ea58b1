"""Circuit breakers and cool-downs, one of each per model, shared by every process.

A breaker is closed (traffic flows), open (the model goes after every other candidate; opened by a 401/403, it is
skipped) or half-open (one trial request may go):
- `BREAKER_FAILURES` consecutive failed live requests (5xx, timeouts, broken answers; none older than
  `BREAKER_FAILURE_WINDOW_SECONDS` before the next) open it, for `BREAKER_OPEN_SECONDS`;
- a 401 or 403 opens it at once (the model's key or name is wrong: every request would fail alike), and says so in
  the log (the model and the status, never the key); the one call (across all processes: the script decides) that
  turned the breaker into such a rejection gets a `BreakerOpened` back, for its caller to tell staff (generation
  writes a `model.breaker_opened` billing event);
- a test that got no answer counts as a failure, one whose key was rejected opens it at once;
- once its time is up it is half-open: the first request to claim the trial (one, across all processes, for a
  lease of the model's timeout) tries the model; success closes it, failure opens it again for twice as long
  (at most `BREAKER_OPEN_MAX_SECONDS`). Any success (a live answer, a test that got one) closes it.

A cool-down is separate: a 429 skips the model for exactly its Retry-After (`DEFAULT_COOLDOWN_SECONDS` without
one), then traffic flows again; a 429 says nothing about the model's health.

Where it lives: with REDIS_URL, in one Redis hash (`HEALTH_KEY`), a field per model with trouble (its model key →
a JSON record); a model with none has no field. A request reads the whole hash once (`breakers_read`, one
pipelined HGETALL on the quota path's client: a few microseconds more than a round trip), so a breaker another
process opened is seen by the next request anywhere. Every change is one Lua script (atomic across processes);
the hash expires a week after its last change. Without Redis (embedded) the records live in this process's memory,
through the same transitions. Redis unreachable: the last view read is used, and this process's own outcomes
still change it (they are not shared until Redis is back).
"""

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from types import MappingProxyType
from typing import Any

import orjson
from django.conf import settings

from llmhub.redis_client import RedisClient, RedisUnavailable, Script, bulk
from registry.selectors import ModelSpec

logger = logging.getLogger(__name__)

HEALTH_KEY = "llmhub:health:breakers"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_EXPIRE_SECONDS = 7 * 24 * 3600
_LOG_EVERY_SECONDS = 30.0
_SHOWN_MAX_AGE_SECONDS = 1.0  # what admin, pages and the API show may be this old (the routing read never is)


def _config(name: str) -> Any:
    return settings.LLMHUB[name]


@dataclass(frozen=True, slots=True)
class Breaker:
    """What is known of one model's breaker and cool-down (times are Unix times)."""

    state: str = CLOSED
    reason: str = ""
    since: float | None = None  # when it opened (kept while it stays open or half-open)
    until: float | None = None  # open until then, half-open after
    failures: int = 0  # consecutive failures since the last success
    trial_until: float = 0.0  # a half-open trial runs until then (its lease)
    final: bool = False  # opened by a 401/403: never tried while open, not even as a last resort
    cooled_until: float = 0.0  # skipped until then after a 429
    cool_reason: str = ""

    def cooling(self, now: float) -> bool:
        return self.cooled_until > now

    def avoided(self, now: float) -> bool:
        """Whether a request must skip the model now: open, or half-open with another request's trial running."""
        if self.state != OPEN:
            return False
        return (self.until or 0.0) > now or self.trial_until > now

    def shown(self, now: float) -> str:
        """closed, open or half_open, as of `now`."""
        if self.state != OPEN:
            return CLOSED
        return OPEN if (self.until or 0.0) > now else HALF_OPEN


CLOSED_BREAKER = Breaker()


@dataclass(frozen=True, slots=True)
class BreakerView:
    """Every model's breaker as read at `at` (a model with none is closed)."""

    breakers: Mapping[str, Breaker]
    at: float

    def get(self, model_key: str) -> Breaker:
        return self.breakers.get(model_key, CLOSED_BREAKER)

    def avoided(self, now: float | None = None) -> frozenset[str]:
        """Keys of the models to skip now (open, or half-open with a trial running elsewhere)."""
        now = time.time() if now is None else now
        return frozenset(key for key, breaker in self.breakers.items() if breaker.avoided(now))

    def final(self, now: float | None = None) -> frozenset[str]:
        """Keys of the avoided models not to try even when nothing else is left (opened by a 401/403)."""
        now = time.time() if now is None else now
        return frozenset(key for key, breaker in self.breakers.items() if breaker.final and breaker.avoided(now))

    def half_open(self, now: float | None = None) -> frozenset[str]:
        """Keys of the models whose trial request is free to claim (`breaker_trial_claim`)."""
        now = time.time() if now is None else now
        return frozenset(key for key, breaker in self.breakers.items()
                         if breaker.shown(now) == HALF_OPEN and breaker.trial_until <= now)

    def cooled_until(self, now: float | None = None) -> dict[str, float]:
        """Model key → Unix time its cool-down ends, for the models cooling down now."""
        now = time.time() if now is None else now
        return {key: breaker.cooled_until for key, breaker in self.breakers.items() if breaker.cooling(now)}


EMPTY_VIEW = BreakerView(breakers=MappingProxyType({}), at=0.0)


# --- Transitions (the Lua scripts below do the same in Redis) ---------------------------------------------------

def _failed(record: dict, *, now: float, reason: str, at_once: bool, threshold: int, base: float,
            longest: float, window: float) -> tuple[bool, dict]:
    """(whether this failure made it a rejection of the credentials: an opening staff hear of, the record after)."""
    rejected_before = bool(record.get("final"))
    if now - record.get("failed_at", 0.0) > window:
        record["failures"] = 0
    record["failures"] = record.get("failures", 0) + 1
    record["failed_at"] = now
    is_open = record.get("state") == OPEN
    trial_over = is_open and record.get("until", 0.0) <= now  # half-open: its trial (or a late request) failed
    if trial_over or (not is_open and (at_once or record["failures"] >= threshold)):
        record["opened"] = record.get("opened", 0) + 1 if is_open else 1
        if not is_open:
            record["since"] = now
        record.update(state=OPEN, reason=reason, until=now + min(base * 2 ** (record["opened"] - 1), longest))
        record.pop("trial_until", None)
        if at_once:
            record["final"] = 1
    elif is_open and at_once:
        record.update(reason=reason, final=1)
    return at_once and not rejected_before, record


def _succeeded(record: dict, *, now: float) -> dict | None:
    for name in ("failures", "failed_at", "state", "reason", "since", "until", "opened", "trial_until", "final"):
        record.pop(name, None)
    return record if record.get("cooled_until", 0.0) > now else None


def _cooled(record: dict, *, now: float, seconds: float, reason: str) -> dict:
    record.update(cooled_until=now + seconds, cool_reason=reason)
    return record


def _trial(record: dict | None, *, now: float, lease: float) -> tuple[bool, dict | None]:
    """(may this request try the model, the record after)."""
    if record is None or record.get("state") != OPEN:
        return True, record
    if record.get("until", 0.0) > now or record.get("trial_until", 0.0) > now:
        return False, record
    record["trial_until"] = now + lease
    return True, record


_LUA_PREAMBLE = f"""
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local record = raw and cjson.decode(raw) or {{}}
local now = tonumber(ARGV[2])
local function save()
  local encoded = cjson.encode(record)
  redis.call('HSET', KEYS[1], ARGV[1], encoded)
  redis.call('EXPIRE', KEYS[1], {_EXPIRE_SECONDS})
  return encoded
end
"""

# ARGV: model key, now, reason, at once (0/1), threshold, base seconds, longest seconds, window seconds.
# Returns {1 if this failure made it a rejection of the credentials else 0, record}.
_FAILURE = _LUA_PREAMBLE + """
local rejected_before = (record.final or 0) ~= 0
if now - (record.failed_at or 0) > tonumber(ARGV[8]) then record.failures = 0 end
record.failures = (record.failures or 0) + 1
record.failed_at = now
local is_open = record.state == 'open'
local trial_over = is_open and (record['until'] or 0) <= now
if trial_over or (not is_open and (ARGV[4] == '1' or record.failures >= tonumber(ARGV[5]))) then
  if is_open then record.opened = (record.opened or 0) + 1 else record.opened = 1; record.since = now end
  record.state = 'open'
  record.reason = ARGV[3]
  record['until'] = now + math.min(tonumber(ARGV[6]) * 2 ^ (record.opened - 1), tonumber(ARGV[7]))
  record.trial_until = nil
  if ARGV[4] == '1' then record.final = 1 end
elseif is_open and ARGV[4] == '1' then
  record.reason = ARGV[3]
  record.final = 1
end
local told = (ARGV[4] == '1' and not rejected_before) and 1 or 0
return {told, save()}
"""

# ARGV: model key, now
_SUCCESS = _LUA_PREAMBLE + """
if not raw then return false end
for _, name in ipairs({'failures', 'failed_at', 'state', 'reason', 'since', 'until', 'opened', 'trial_until', 'final'}) do
  record[name] = nil
end
if (record.cooled_until or 0) > now then return save() end
redis.call('HDEL', KEYS[1], ARGV[1])
return false
"""

# ARGV: model key, now, seconds, reason
_COOL = _LUA_PREAMBLE + """
record.cooled_until = now + tonumber(ARGV[3])
record.cool_reason = ARGV[4]
return save()
"""

# ARGV: model key, now, lease seconds. Returns {1 or 0, record or false}.
_TRIAL = _LUA_PREAMBLE + """
if not raw or record.state ~= 'open' then return {1, raw or false} end
if (record['until'] or 0) > now or (record.trial_until or 0) > now then return {0, raw} end
record.trial_until = now + tonumber(ARGV[3])
return {1, save()}
"""


def _breaker(record: dict) -> Breaker:
    return Breaker(state=record.get("state") or CLOSED, reason=record.get("reason", ""), since=record.get("since"),
                   until=record.get("until"), failures=int(record.get("failures", 0)),
                   trial_until=float(record.get("trial_until", 0.0)), final=bool(record.get("final")),
                   cooled_until=float(record.get("cooled_until", 0.0)), cool_reason=record.get("cool_reason", ""))


def _decoded(raw: bytes | str | None) -> dict | None:
    if not raw:
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


# --- Stores: Redis (shared) or this process's memory (embedded) -------------------------------------------------

class _MemoryStore:
    """The records in this process (embedded mode): the same transitions, under a lock."""

    def __init__(self) -> None:
        self._records: dict[str, dict] = {}
        self._lock = threading.Lock()

    def read(self) -> dict[str, dict]:
        with self._lock:
            return {key: dict(record) for key, record in self._records.items()}

    def change(self, model_key: str, step) -> Any:
        with self._lock:
            record = self._records.get(model_key)
            result, after = step(dict(record) if record is not None else None)
            if after:
                self._records[model_key] = after
            else:
                self._records.pop(model_key, None)
            return result, after

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


class _RedisStore:
    """The records in one Redis hash: async reads and changes on the hot path's pipelined client, sync ones
    (admin, pages, API, tasks) through redis-py."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self.client = RedisClient(url, timeout=timeout)
        self._sync = None

    def sync(self):
        if self._sync is None:
            import redis

            self._sync = redis.Redis.from_url(self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout)
        return self._sync


@cache
def _redis_store(url: str, timeout: float) -> _RedisStore:
    return _RedisStore(url, timeout)


_memory = _MemoryStore()


def _store() -> _RedisStore | None:
    url = _config("HEALTH_REDIS_URL")
    return _redis_store(url, _config("QUOTA_TIMEOUT_SECONDS")) if url else None


# --- This process's latest view ---------------------------------------------------------------------------------

_latest = EMPTY_VIEW
_latest_lock = threading.Lock()
_complained_at = 0.0


def _view_from(records: Mapping[str, dict | None], *, at: float) -> BreakerView:
    return BreakerView(breakers=MappingProxyType({key: _breaker(record) for key, record in records.items() if record}),
                       at=at)


def _remember(view: BreakerView) -> BreakerView:
    global _latest
    with _latest_lock:
        if view.at >= _latest.at:
            _latest = view
    return view


def _remember_one(model_key: str, record: dict | None) -> None:
    """Folds one changed record into the latest view (this process sees its own change before the next read)."""
    global _latest
    with _latest_lock:
        breakers = dict(_latest.breakers)
        if record:
            breakers[model_key] = _breaker(record)
        else:
            breakers.pop(model_key, None)
        _latest = BreakerView(breakers=MappingProxyType(breakers), at=_latest.at)


def _complain(error: Exception) -> None:
    global _complained_at
    now = time.monotonic()
    if now - _complained_at > _LOG_EVERY_SECONDS:
        _complained_at = now
        logger.warning("circuit breakers: Redis unavailable (%s): using this process's last view", error)


def _read_records(raw: list | dict) -> dict[str, dict | None]:
    items = raw.items() if isinstance(raw, dict) else zip(raw[0::2], raw[1::2], strict=True)
    return {(key.decode() if isinstance(key, bytes) else key): _decoded(value) for key, value in items}


async def breakers_read() -> BreakerView:
    """Every model's breaker, read now (one Redis round trip; none embedded). Redis unreachable: the last view."""
    store = _store()
    now = time.time()
    if store is None:
        return _remember(_view_from(_memory.read(), at=now))
    try:
        raw = await store.client.call("HGETALL", HEALTH_KEY)
    except RedisUnavailable as error:
        _complain(error)
        return _latest
    return _remember(_view_from(_read_records(raw), at=now))


# The breakers and one more key (the snapshots' epoch, llmhub.versions) in one command; an unset key reads as "".
_READ_WITH = "return {redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2]) or ''}"


async def breakers_read_with(url: str, key: str) -> tuple[BreakerView, bytes | None]:
    """`breakers_read`, and the value of `key` in the Redis at `url` (b"" when unset, None when Redis did not
    answer): in the same round trip when the breakers live there (the default for the snapshots' epoch), else by a
    GET of its own."""
    store = _store()
    if store is None or store.url != url:
        view = await breakers_read()
        try:
            value = await _redis_store(url, _config("QUOTA_TIMEOUT_SECONDS")).client.call("GET", key)
        except RedisUnavailable:
            return view, None
        return view, value or b""
    now = time.time()
    try:
        raw, value = await store.client.run(_script(_READ_WITH), b"".join(map(bulk, (2, HEALTH_KEY, key))), 3)
    except RedisUnavailable as error:
        _complain(error)
        return _latest, None
    return _remember(_view_from(_read_records(raw), at=now)), value


def breakers_read_sync(*, max_age: float = 0.0) -> BreakerView:
    """`breakers_read` off the event loop (admin, pages, the API's model list, tasks); with `max_age`, the last
    view when it is that recent."""
    store = _store()
    now = time.time()
    if max_age and store is not None and now - _latest.at < max_age:
        return _latest
    if store is None:
        return _remember(_view_from(_memory.read(), at=now))
    try:
        raw = store.sync().hgetall(HEALTH_KEY)
    except Exception as error:  # redis-py's connection and timeout errors
        _complain(error)
        return _latest
    return _remember(_view_from(_read_records(raw), at=now))


def breaker_view() -> BreakerView:
    """The latest view this process read or changed, with no I/O (for routing policies: plain data)."""
    return _latest


@dataclass(frozen=True, slots=True)
class BreakerShown:
    """A model's breaker as the API, admin and pages show it."""

    state: str = CLOSED
    reason: str = ""
    since: datetime | None = None  # when it opened
    retry_at: datetime | None = None  # open: when it turns half-open
    cooled_until: datetime | None = None  # after a 429: skipped until then
    cool_reason: str = ""


CLOSED_SHOWN = BreakerShown()


def _moment(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, tz=UTC) if timestamp else None


def breaker_shown(model_key: str) -> BreakerShown:
    """The model's breaker and cool-down now, for display (at most a second old)."""
    now = time.time()
    breaker = breakers_read_sync(max_age=_SHOWN_MAX_AGE_SECONDS).get(model_key)
    state = breaker.shown(now)
    cooling = breaker.cooling(now)
    return BreakerShown(state=state, reason=breaker.reason if state != CLOSED else "",
                        since=_moment(breaker.since) if state != CLOSED else None,
                        retry_at=_moment(breaker.until) if state == OPEN else None,
                        cooled_until=_moment(breaker.cooled_until) if cooling else None,
                        cool_reason=breaker.cool_reason if cooling else "")


# --- Changes ----------------------------------------------------------------------------------------------------

def _failure_args(reason: str, at_once: bool) -> tuple[str, int, int, float, float, float]:
    return (reason, int(at_once), _config("BREAKER_FAILURES"), _config("BREAKER_OPEN_SECONDS"),
            _config("BREAKER_OPEN_MAX_SECONDS"), _config("BREAKER_FAILURE_WINDOW_SECONDS"))


def _failed_step(now: float, reason: str, at_once: bool):
    _, _, threshold, base, longest, window = _failure_args(reason, at_once)

    def step(record: dict | None) -> tuple[bool, dict]:
        return _failed(record or {}, now=now, reason=reason, at_once=at_once, threshold=threshold, base=base,
                       longest=longest, window=window)
    return step


def _apply_locally(model_key: str, step) -> Any:
    """A change this process keeps to itself: embedded, or Redis unreachable (then in a copy of the last view)."""
    if _store() is None:
        result, after = _memory.change(model_key, step)
    else:
        breaker = _latest.breakers.get(model_key)
        result, after = step(_record_of(breaker) if breaker is not None else None)
    _remember_one(model_key, after)
    return result


def _record_of(breaker: Breaker) -> dict:
    record = {"state": breaker.state, "reason": breaker.reason, "failures": breaker.failures, "final": breaker.final,
              "trial_until": breaker.trial_until, "cooled_until": breaker.cooled_until,
              "cool_reason": breaker.cool_reason}
    if breaker.since is not None:
        record["since"] = breaker.since
    if breaker.until is not None:
        record["until"] = breaker.until
    return record


@cache
def _script(source: str) -> Script:
    return Script(source)


async def _run(model_key: str, script: str, args: tuple, step) -> Any:
    store = _store()
    if store is None:
        return _apply_locally(model_key, step)
    try:
        items = (1, HEALTH_KEY, model_key, repr(time.time()), *map(str, args))  # one key, then the arguments
        reply = await store.client.run(_script(script), b"".join(map(bulk, items)), len(items))
    except RedisUnavailable as error:
        _complain(error)
        return _apply_locally(model_key, step)
    return _after_script(model_key, reply)


def _run_sync(model_key: str, script: str, args: tuple, step) -> Any:
    store = _store()
    if store is None:
        return _apply_locally(model_key, step)
    try:
        reply = store.sync().eval(script, 1, HEALTH_KEY, model_key, repr(time.time()), *map(str, args))
    except Exception as error:  # redis-py's connection and timeout errors
        _complain(error)
        return _apply_locally(model_key, step)
    return _after_script(model_key, reply)


def _after_script(model_key: str, reply: Any) -> Any:
    if isinstance(reply, list):  # {a yes or no (the trial's allowed, the failure's rejection), record}
        answer, raw = reply
        _remember_one(model_key, _decoded(raw))
        return bool(answer)
    _remember_one(model_key, _decoded(reply))
    return None


def _failure_reason(status: int | None, kind: str) -> tuple[str, bool]:
    """(the reason shown, whether it opens the breaker at once)."""
    if status in (401, 403):
        return f"the upstream rejected the model's credentials (HTTP {status})", True
    described = kind.replace("_", " ")
    return (f"{described} (HTTP {status})" if status else described), False


@dataclass(frozen=True, slots=True)
class BreakerOpened:
    """A breaker opened because the upstream rejected the model's credentials: staff must fix its key or model.
    Handed to exactly one caller per opening, across all processes (the failure script decides it atomically)."""

    model_key: str
    reason: str  # in generic words: never a key, a header or an upstream body
    status: int | None  # the upstream's HTTP status (401 or 403); None for a test's rejected key
    since: float  # when the breaker opened (Unix time); a failure that only made an open breaker final keeps it
    source: str  # "request" (live traffic) or "test" (a connectivity test)


def _opened(model_key: str, told: Any, *, reason: str, status: int | None, source: str) -> BreakerOpened | None:
    if not told:
        return None
    return BreakerOpened(model_key=model_key, reason=reason, status=status,
                         since=_latest.get(model_key).since or time.time(), source=source)


def _opened_log(model: ModelSpec, before: Breaker, reason: str) -> None:
    after = _latest.get(model.key)
    if after.state == OPEN and before.state != OPEN:
        level = logging.ERROR if "credentials" in reason else logging.WARNING
        logger.log(level, "circuit breaker of model %s opened: %s (half-open in %.0f s)%s", model.key, reason,
                   (after.until or 0.0) - time.time(), "; an operator must fix its key or model" if
                   level == logging.ERROR else "")


async def breaker_failure(model: ModelSpec, *, kind: str, status: int | None = None) -> BreakerOpened | None:
    """A live request to `model` failed (`kind`: the client's error kind; `status`: the upstream's HTTP status).
    Returns the opening when this failure (a 401/403) is the one that must tell staff, else None."""
    reason, at_once = _failure_reason(status, kind)
    before = _latest.get(model.key)
    told = await _run(model.key, _FAILURE, _failure_args(reason, at_once), _failed_step(time.time(), reason, at_once))
    _opened_log(model, before, reason)
    return _opened(model.key, told, reason=reason, status=status, source="request")


async def breaker_success(model: ModelSpec) -> None:
    """A live request to `model` was answered: closes its breaker. No I/O unless this request's view had a record
    of the model (a failure count, an open breaker, a cool-down)."""
    if model.key not in _latest.breakers:
        return
    await _run(model.key, _SUCCESS, (), lambda record: (None, _succeeded(record, now=time.time()) if record else None))


async def breaker_cool(model: ModelSpec, *, seconds: float) -> None:
    """An upstream 429: `model` is skipped for exactly `seconds`, in every process."""
    reason = f"rate limited by the upstream for {seconds:g} s"
    now = time.time()
    await _run(model.key, _COOL, (seconds, reason),
               lambda record: (None, _cooled(record or {}, now=now, seconds=seconds, reason=reason)))


async def breaker_trial_claim(model: ModelSpec) -> bool:
    """Whether this request may try a half-open `model` (one trial at a time across all processes)."""
    lease = model.timeout + 5.0
    return await _run(model.key, _TRIAL, (lease,), lambda record: _trial(record, now=time.time(), lease=lease))


def breaker_test_outcome(model_key: str, *, answered: bool, key_rejected: bool) -> BreakerOpened | None:
    """A model test's verdict: an answer closes the breaker, a rejected key opens it at once, no answer is a
    failure like a live one. Sync (a Celery task). Returns the opening staff must hear of, as `breaker_failure`."""
    if answered:
        _run_sync(model_key, _SUCCESS, (), lambda record: (None, _succeeded(record, now=time.time()) if record else None))
        return None
    reason, at_once = ("the upstream rejected the model's key (test)", True) if key_rejected else (
        "no answer to a connectivity test", False)
    told = _run_sync(model_key, _FAILURE, _failure_args(reason, at_once), _failed_step(time.time(), reason, at_once))
    return _opened(model_key, told, reason=reason, status=None, source="test")


def breaker_reset(model_key: str) -> None:
    """Forgets a model's breaker and cool-down (its configuration changed: it deserves a fresh start)."""
    store = _store()
    if store is None:
        _memory.change(model_key, lambda record: (None, None))
    else:
        try:
            store.sync().hdel(HEALTH_KEY, model_key)
        except Exception as error:  # redis-py's connection and timeout errors
            _complain(error)
    _remember_one(model_key, None)


def breakers_reset() -> None:
    """Forgets every breaker (tests)."""
    global _latest
    store = _store()
    _memory.clear()
    if store is not None:
        store.sync().delete(HEALTH_KEY)
    with _latest_lock:
        _latest = EMPTY_VIEW
