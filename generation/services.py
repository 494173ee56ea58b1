"""Text generation: one pipeline for /v1, /api/generate and translation.

resolve model → authorise → reserve → call upstream (falling back on retryable errors) → settle → log.
Nothing here holds a thread or a database connection while an upstream answers.
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import orjson
from django.conf import settings

from experiments.selectors import Assignment
from generation import client
from generation import responses_bridge as bridge
from generation.adaptation import context_exceeded_error, parameter_refused_error, params_refused, request_adapt
from generation.arms import judge_sample, request_arm, request_names_experiment
from generation.prompting import PromptUse, prompt_apply
from generation.routing import earliest_retry
from health.breakers import (
    BreakerOpened,
    BreakerView,
    breaker_cool,
    breaker_failure,
    breaker_success,
    breaker_trial_claim,
    breaker_view,
    breakers_read,
    breakers_read_with,
    breakers_reset,
)
from health.status import health_note, unhealthy_keys
from llmhub.errors import ApplicationError, NotFound
from llmhub.snapshot import snapshots_epoch_seen
from llmhub.versions import epoch_get, epoch_location
from prompts.services import PromptRequest
from registry.selectors import ModelSpec, Registry, TierSpec, check_model_access, get_default_model, get_model_by_id
from routing.policies import Health, Route, request_needs
from routing.preferences import preference_counts
from routing.selectors import arouting_plan
from routing.services import budget_remaining, plan_needs_budget, plan_needs_counts, route_request, task_resolve
from routing.stats import stats_note
from usage.billing import breaker_opened_event
from usage.metrics import upstream_error_count
from usage.quotas import (
    QuotaExceeded,
    QuotaUnavailable,
    Reservation,
    quota_decided_remotely,
    quota_release_nowait,
    quota_reserve,
    quota_reserve_sent,
    quota_settle_nowait,
)
from usage.services import (
    UsageEntry,
    billing_event_record,
    prompt_hash,
    tokens_count_messages,
    tokens_count_text,
    tokens_encoding,
    tokens_estimate_messages,
    usage_cost,
    usage_record,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")



@dataclass(frozen=True, slots=True)
class Caller:
    user_id: int | None
    api_key_id: int | None
    tier: TierSpec


@dataclass(slots=True)
class Attempt:
    model: str
    outcome: str
    latency_ms: float
    upstream_status: int | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "outcome": self.outcome, "latency_ms": round(self.latency_ms, 1),
                "upstream_status": self.upstream_status, "message": self.message}


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False


@dataclass(slots=True)
class ChatOutcome:
    """A non-streaming call's answer, whichever API it went to: Chat Completions, Responses (generation/responses.py:
    `data` is then a Response object) or embeddings."""

    request_id: str
    model: ModelSpec
    raw: bytes
    data: dict[str, Any]
    attempts: list[Attempt]
    usage: Usage
    cost: Decimal
    latency_ms: float
    quota: Reservation | None = None  # its rate-limit headers go on the response
    prompt: PromptUse | None = None  # the prompt template it was served with (its headers go on the response)
    route: Route | None = None  # how it was routed (the x-llmhub-route header)

    @property
    def text(self) -> str:
        message = (self.data.get("choices") or [{}])[0].get("message") or {}
        return message.get("content") or ""


class GenerationFailed(ApplicationError):
    """Every candidate model failed (or the one that answered refused the request)."""

    def __init__(self, message: str, *, status: int, code: str, attempts: list[Attempt],
                 retry_after: float | None = None, param: str | None = None) -> None:
        extra: dict[str, Any] = {"attempts": [a.as_dict() for a in attempts]}
        if param is not None:
            extra["param"] = param
        super().__init__(message, status=status, code=code, extra=extra)
        self.attempts = attempts
        self.retry_after = retry_after


# A usage row keeps the first attempts only (a long translation makes one or more per piece).
MAX_ATTEMPT_DETAILS = 50


def _config(name: str) -> Any:
    return settings.LLMHUB[name]


def request_id_new() -> str:
    return "req_" + os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID


# The id a surface (/v1) gave the request it is answering, so its error responses and its usage row agree.
_bound_request_id: ContextVar[str | None] = ContextVar("llmhub_request_id", default=None)


def request_id_bind(request_id: str) -> None:
    """The next run started in this context (this request) takes `request_id` as its id."""
    _bound_request_id.set(request_id)


def request_id_take() -> str:
    """The id bound to this request, once (a second run gets an id of its own: usage rows' ids are unique)."""
    bound = _bound_request_id.get()
    if bound is None:
        return request_id_new()
    _bound_request_id.set(None)
    return bound


def model_resolve(*, caller: Caller, registry: Registry, model_id: str | None = None,
                  provider: str | None = None, preferred_ids: Sequence[str] = ()) -> ModelSpec:
    """The explicit model, else the legacy provider's model, else the first of the user's preferences (in order:
    the task's default, their default) they may still use and that chat, else the tier default.

    An explicit model above the caller's tier is refused (403) before any upstream is called.
    """
    if model_id:
        model = get_model_by_id(model_id, registry=registry, owner_id=caller.user_id)
        check_model_access(caller.tier, model)
        return model
    if provider:
        return _legacy_provider_model(caller=caller, registry=registry, provider=provider)
    for preferred_id in preferred_ids:
        model = registry.own_models(caller.user_id).get(preferred_id) or registry.models.get(preferred_id)
        if model is not None and model.enabled and model.allows(caller.tier) and model.kind == "chat":
            return model
    model = get_default_model(caller.tier, registry=registry)
    if model is None:
        raise ApplicationError("No model is available to your tier.", status=503, code="no_model_available")
    return model


def _legacy_provider_model(*, caller: Caller, registry: Registry, provider: str) -> ModelSpec:
    """Old clients named a provider ("openai") instead of a model: its default or first model the tier may use."""
    default = get_default_model(caller.tier, registry=registry)
    if default is not None and default.provider == provider:
        return default
    for model in registry.models.values():
        if model.provider == provider and model.enabled and model.allows(caller.tier):
            return model
    raise NotFound(f"No model of provider '{provider}' is available to your tier.", code="model_not_found")


# More tokens than any request could use: an upstream reporting this is reporting nonsense (and the log's
# columns could not hold it).
MAX_REPORTED_TOKENS = 2**31 - 1


def _token_count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value <= MAX_REPORTED_TOKENS else None


def usage_from(data: dict[str, Any] | None) -> tuple[int, int] | None:
    """The (prompt, completion) tokens an upstream reported, or None when it reported none or nonsense (negative,
    fractional, not numbers, absurdly large): the caller then counts locally. Never raises."""
    usage = (data or {}).get("usage")
    if not isinstance(usage, dict):
        return None
    completion = usage.get("completion_tokens")
    prompt, completion = _token_count(usage.get("prompt_tokens")), _token_count(0 if completion is None else completion)
    return None if prompt is None or completion is None else (prompt, completion)


def usage_garbled(data: dict[str, Any] | None) -> bool:
    """Whether the upstream reported a usage that `usage_from` refuses (as opposed to none at all)."""
    return (data or {}).get("usage") is not None and usage_from(data) is None


def estimated_input(body: dict[str, Any]) -> int:
    return tokens_count_messages(body.get("messages") or [])


def request_messages(body: dict[str, Any], *, api: str = bridge.CHAT) -> list[dict[str, Any]]:
    """The request's prompt as chat messages, for estimates and local counts (a Responses request's input that
    no chat message can hold is counted as its JSON)."""
    if api == bridge.CHAT:
        return body.get("messages") or []
    try:
        return bridge.responses_input_to_messages(body)
    except bridge.Unmappable:
        return [{"role": "user", "content": orjson.dumps([body.get("instructions"), body.get("input")]).decode()}]


async def _note_failure(model: ModelSpec, error: client.UpstreamError) -> None:
    upstream_error_count(model=model.id, kind=error.kind)
    if error.retryable or isinstance(error, client.UpstreamMisconfigured):
        stats_note(model.key, ok=False)
    if isinstance(error, client.UpstreamRateLimited):
        seconds = error.retry_after if error.retry_after is not None else _config("DEFAULT_COOLDOWN_SECONDS")
        await breaker_cool(model, seconds=seconds)
    elif error.retryable or isinstance(error, client.UpstreamMisconfigured):
        health_note(model, ok=False)
        breaker_opened_tell(await breaker_failure(model, kind=error.kind, status=error.upstream_status))


def breaker_opened_tell(opened: BreakerOpened | None) -> None:
    """Tells staff of a breaker the upstream's rejection of the credentials opened: a `model.breaker_opened`
    billing event (webhooks), beside the error log health writes. None: nothing to tell."""
    if opened is not None:
        billing_event_record(breaker_opened_event(model=opened.model_key, reason=opened.reason, status=opened.status,
                                                  opened_at=opened.since, source=opened.source))


def _failure(attempts: list[Attempt], last: client.UpstreamError | None, candidates: list[str], *,
             since: int = 0, out_of_time: bool = False) -> GenerationFailed:
    """The error for a call no candidate answered; `attempts[since:]` are this call's (a translation makes
    several calls in one request, the error lists every attempt)."""
    view, now = breaker_view(), time.time()
    retry_after = earliest_retry(model_keys=candidates, cooled_until=view.cooled_until(now), now=now)
    if last is None:
        if retry_after is not None:
            return GenerationFailed("Every model for this request is rate limited.", status=429, code="rate_limited",
                                    attempts=attempts, retry_after=retry_after)
        opened = sorted((view.get(key) for key in candidates if view.get(key).final and view.get(key).avoided(now)),
                        key=lambda breaker: breaker.until or now)
        if opened:
            return GenerationFailed(f"The model is unavailable: {opened[0].reason}.", status=503,
                                    code="model_unavailable", attempts=attempts,
                                    retry_after=max((opened[0].until or now) - now, opened[0].trial_until - now, 1.0))
        if out_of_time:
            return GenerationFailed("The request ran out of time.", status=504, code="upstream_timeout",
                                    attempts=attempts)
        return GenerationFailed("No model could be tried in time.", status=503, code="no_model_available",
                                attempts=attempts)
    if isinstance(last, client.UpstreamRejected):
        return GenerationFailed(last.message, status=last.status, code=last.code or last.kind, attempts=attempts,
                                param=last.param)
    if not last.retryable:
        return GenerationFailed(last.message, status=last.status, code=last.kind, attempts=attempts)
    # This call's attempts (a translation's earlier pieces made calls of their own), with the models skipped first.
    tried = attempts_described(attempts[since:] if any(a.outcome == "ok" for a in attempts[:since]) else attempts)
    if all(a.outcome == client.UpstreamRateLimited.kind for a in attempts[since:]):
        return GenerationFailed(f"Every model for this request is rate limited: {tried}.", status=429,
                                code="rate_limited", attempts=attempts, retry_after=retry_after or last.retry_after)
    if isinstance(last, client.UpstreamTimeout):
        return GenerationFailed(f"Every model timed out: {tried}.", status=504, code="upstream_timeout",
                                attempts=attempts)
    return GenerationFailed(f"Every model failed: {tried}.", status=502, code="upstream_failed", attempts=attempts)


def attempts_described(attempts: list[Attempt]) -> str:
    """Each model tried and its outcome, for an error message: `demo (unavailable, HTTP 500), demo-backup
    (timeout)`."""
    return ", ".join(f"{a.model} ({a.outcome}{f', HTTP {a.upstream_status}' if a.upstream_status else ''})"
                     for a in attempts)


@dataclass(slots=True)
class _Run:
    """One request's state, from resolution to the usage row."""

    caller: Caller
    endpoint: str
    requested: str
    primary: ModelSpec
    candidates: list[ModelSpec]
    request_id: str = field(default_factory=request_id_take)
    started: float = field(default_factory=time.perf_counter)
    deadline: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    prompt_hash: str = ""  # the same prompt again soon after is a retry (feedback/implicit.py)
    reservation: Reservation | None = None
    cost: Decimal = Decimal(0)
    # What each answer cost, at the prices of the model that gave it (a translation gets one answer per piece).
    charges: list[tuple[ModelSpec, Usage]] = field(default_factory=list)
    _charged: tuple[int, Decimal] | None = None  # (len(charges), their cost): the settle and the usage row share it
    prompt: PromptUse | None = None  # the prompt template version the request was served with
    arm: Assignment | None = None  # the experiment arm serving the request (its model and parameters)

    def arm_applied(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with the arm's parameters, which win over the client's (a translation's pieces get them too)."""
        return {**body, **self.arm.params} if self.arm is not None and self.arm.params else body
    route: Route | None = None

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def tried_keys(self) -> list[str]:
        """The primary and its fallbacks, cooling down or not (for the Retry-After of a 429)."""
        return [self.primary.key, *self.primary.fallbacks, *(model.key for model in self.candidates)]

    def charge(self, model: ModelSpec, usage: Usage) -> None:
        """Bills one answer at its own model's prices (for requests answered in several parts)."""
        self.charges.append((model, usage))

    def charged(self) -> Decimal:
        if self._charged is not None and self._charged[0] == len(self.charges):  # charges are only ever appended
            return self._charged[1]
        cost = sum((usage_cost(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                               input_price_per_million=model.input_price_per_million,
                               output_price_per_million=model.output_price_per_million)
                    for model, usage in self.charges), Decimal(0))
        self._charged = (len(self.charges), cost)
        return cost

    def answered_by(self) -> list[str]:
        """The models that answered, in order, once each."""
        return list(dict.fromkeys(model.id for model, _ in self.charges))

    def demote(self, model: ModelSpec) -> None:
        """A model that just failed is tried last by this request's later calls (a translation's next pieces)."""
        if self.candidates and self.candidates[-1] is not model:
            self.candidates = [candidate for candidate in self.candidates if candidate is not model] + [model]

    def record(self, *, model: ModelSpec | None, usage: Usage, status: str, http_status: int, error_type: str = "",
               streamed: bool = False, ttft_ms: float | None = None) -> Decimal:
        """Writes the request's usage row, billed at `charges` (`run_finish` charges a single answer first)."""
        cost = self.charged()
        usage_record(UsageEntry(
            request_id=self.request_id, user_id=self.caller.user_id, api_key_id=self.caller.api_key_id,
            endpoint=self.endpoint, requested_model=self.requested, answered_model=",".join(self.answered_by()),
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, tokens_estimated=usage.estimated,
            cost=cost, latency_ms=(time.perf_counter() - self.started) * 1000, ttft_ms=ttft_ms, status=status,
            http_status=http_status, error_type=error_type, attempts=len(self.attempts), streamed=streamed,
            attempt_details=tuple(attempt.as_dict() for attempt in self.attempts[:MAX_ATTEMPT_DETAILS]),
            tier=self.caller.tier.slug, prompt_template=self.prompt.name if self.prompt else "",
            prompt_version=self.prompt.version if self.prompt else None,
            prompt_hash=self.prompt_hash,
            experiment_id=self.arm.experiment_id if self.arm else None,
            experiment_arm=self.arm.arm if self.arm else "",
            route=self.route,
        ))
        self.cost = cost
        return cost


_tokenizer_loaded = False


async def tokenizer_load() -> None:
    """Builds tiktoken's vocabulary (about 0.7 s, once per process) in a thread: on the event loop it would
    stall every request in flight."""
    global _tokenizer_loaded
    if not _tokenizer_loaded:
        await asyncio.to_thread(tokens_encoding)
        _tokenizer_loaded = True


async def usage_counted(body: dict[str, Any], answer: str) -> Usage:
    """Counts a request's tokens locally, for an upstream that reported none."""
    await tokenizer_load()
    return Usage(estimated_input(body), tokens_count_text(answer), True)


class WrongModelKind(ApplicationError):
    status = 400
    code = "model_not_supported"


def model_kind_check(model: ModelSpec, kind: str) -> None:
    if model.kind != kind:
        where = "/v1/embeddings" if model.kind == "embedding" else "/v1/chat/completions or /v1/completions"
        raise WrongModelKind(f"The model '{model.id}' is a {model.kind} model: use it on {where}.",
                             extra={"param": "model"})


def candidates_admitted(primary: ModelSpec, candidates: list[ModelSpec], body: dict[str, Any], *,
                        needed_tokens: int | None, context_param: str = "messages") -> tuple[list[ModelSpec],
                                                                                          list[Attempt]]:
    """The candidates that can take this request, and an attempt explaining each one skipped: a model whose
    context window is smaller than `needed_tokens`, a fallback that refuses one of its parameters (the primary
    refusing one is the client's 400, before any upstream call, as is no model having the window)."""
    refused = params_refused(primary, body)
    if refused is not None:
        raise parameter_refused_error(primary, refused)
    admitted, skipped = [], []
    for model in candidates:
        if model.kind != primary.kind:
            continue
        if needed_tokens is not None and needed_tokens > model.context_window:
            skipped.append(Attempt(model.id, "context_length_exceeded", 0.0, None,
                                   f"The request needs about {needed_tokens} tokens; the model's context window is "
                                   f"{model.context_window}."))
        elif model is not primary and (name := params_refused(model, body)) is not None:
            skipped.append(Attempt(model.id, "unsupported_parameter", 0.0, None, f"The model refuses '{name}'."))
        else:
            admitted.append(model)
    if not admitted and skipped and skipped[0].outcome == "context_length_exceeded":
        largest = max((m for m in candidates if m.kind == primary.kind), key=lambda m: m.context_window)
        raise context_exceeded_error(largest, needed_tokens, param=context_param)
    return admitted, skipped


async def breakers_and_epoch_read() -> BreakerView:
    """The circuit breakers (shared by every process), and the snapshots' epoch (llmhub.snapshot): read in the same
    Redis round trip, or from one small file when embedded. A template or experiment changed by any process is
    then served from this request on."""
    location = epoch_location()
    if location is None:
        view = await breakers_read()
        try:
            snapshots_epoch_seen(epoch_get())
        except OSError as error:  # its folder is unreadable: the snapshots' own checks still apply
            logger.warning("the snapshots' epoch could not be read (%s)", type(error).__name__)
        return view
    view, epoch = await breakers_read_with(*location)
    if epoch is not None:  # None: Redis did not answer, and the snapshots serve what they have (llmhub.snapshot)
        snapshots_epoch_seen(epoch)
    return view


async def start_run(*, caller: Caller, registry: Registry, body: dict[str, Any], endpoint: str,
                    model_id: str | None, provider: str | None, preferred_ids: Sequence[str], kind: str = "chat",
                    fit_context: bool = False, prompt_tokens: int | None = None, context_tokens: int | None = None,
                    output_tokens: int | None = None, context_param: str = "messages",
                    api: str = bridge.CHAT, prompt: PromptRequest | None = None, task: str | None = None,
                    prompt_name: str | None = None,
                    prepare: Callable[[ModelSpec], Awaitable[None]] | None = None) -> _Run:
    """Resolves, authorises and reserves a request. With `fit_context`, models whose window is too small for
    the request (`context_tokens`, by default the estimated prompt plus max_tokens) are skipped (a 400
    context_length_exceeded when none is left); a translation splits its text to fit instead. `api` is the API
    the request is written for: candidates served on the other one get it translated, and those it cannot be
    translated for are skipped (a 400 naming the field when the primary is one of them). `prompt`: the template the
    request names, assembled into `body` for the primary model (generation/prompting.py). A request an experiment arm
    serves gets the arm's model and parameters (generation/arms.py); `prompt_name`: the template a request uses that
    `start_run` does not assemble (a translation's), for the experiment running on it. `prepare(primary)` is awaited
    once the primary model is known, before anything is reserved (a translation resolves and checks its template
    there). The candidates and their order are the tier's routing policy's for the task (`task`, else the
    endpoint's: routing/).

    A plain request (no template, no experiment: nothing it resolves depends on the epoch) whose reservation is
    decided in Redis, while no circuit breaker is open, cooling or half-open anywhere, reads the breakers and
    reserves in one round trip (`pipelined`): it is routed on the breakers as this process last saw them, its
    reservation sent alongside the read, and if the read finds a breaker after all, the reservation is given back
    and the request routed again on what the read found. One wait for Redis instead of two: on a machine where
    each wake-up of an idle process costs tens of microseconds, most of what quotas added to a request."""
    pipelined = (prompt is None and prompt_name is None and prepare is None and not request_names_experiment(body)
                 and not breaker_view().breakers
                 and await quota_decided_remotely(user_id=caller.user_id, api_key_id=caller.api_key_id,
                                                  tier_slug=caller.tier.slug))
    # Else first: the templates and experiments below are then current.
    view = breaker_view() if pipelined else await breakers_and_epoch_read()
    if prompt is not None:
        prompt_name = prompt.name
    arm = await request_arm(user_id=caller.user_id, tier=caller.tier, registry=registry, body=body,
                            prompt_name=prompt_name) if kind == "chat" else None
    if arm is not None:
        model_id, provider = arm.model_id, None
        body.update(arm.params)
    primary = model_resolve(caller=caller, registry=registry, model_id=model_id, provider=provider,
                            preferred_ids=preferred_ids)
    model_kind_check(primary, kind)
    prompt_use = None if prompt is None else \
        await prompt_apply(body, prompt, model=primary, user_id=caller.user_id, api=api)
    if prepare is not None:
        await prepare(primary)
    now = time.time()
    if prompt_tokens is None:
        prompt_tokens = tokens_estimate_messages(request_messages(body, api=api))
    max_tokens = (body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")) \
        if output_tokens is None else output_tokens
    if fit_context and context_tokens is None:
        context_tokens = prompt_tokens + (max_tokens or 0)
    route = await _route(caller=caller, registry=registry, body=body, primary=primary, task=task, endpoint=endpoint,
                         pinned="explicit" if model_id or provider else
                         "user default" if primary.id in preferred_ids else None,
                         context_tokens=context_tokens if fit_context else 0, prompt_tokens=prompt_tokens,
                         max_tokens=max_tokens, view=view, now=now)
    candidates = await breakers_admit(route.models, view, now)
    candidates, skipped = candidates_admitted(primary, candidates, body, context_param=context_param,
                                              needed_tokens=context_tokens if fit_context else None)
    candidates = bridge.servable(candidates, primary=primary, body=body, source=api)
    run = _Run(caller=caller, endpoint=endpoint, requested=model_id or provider or primary.id, primary=primary,
               candidates=candidates, attempts=skipped, prompt=prompt_use,
               prompt_hash=prompt_hash(body.get("messages") if api == bridge.CHAT
                                       else [body.get("instructions"), body.get("input")]) if kind == "chat" else "",
               arm=arm, route=route)
    run.deadline = run.started + _config("GENERATION_DEADLINE_SECONDS")
    logger.info("request %s: model %s for user %s (tier %s), candidates %s", run.request_id, primary.id,
                caller.user_id, caller.tier.slug, [m.id for m in candidates])
    reserve_args = dict(request_id=run.request_id, user_id=caller.user_id, api_key_id=caller.api_key_id,
                        tier_slug=caller.tier.slug, model=primary, candidates=candidates, prompt_tokens=prompt_tokens,
                        max_tokens=max_tokens)
    if not pipelined:
        run.reservation = await quota_reserve(**reserve_args)
        return run
    # Its command goes out in the same turn as the read's (queued now, or by a task of its own when it cannot be).
    reserved = quota_reserve_sent(**reserve_args) or asyncio.ensure_future(quota_reserve(**reserve_args))
    try:
        fresh = await breakers_and_epoch_read()
    except BaseException:  # cancelled (the client went away): whatever the reservation becomes is given back
        asyncio.ensure_future(reserved).add_done_callback(_given_back_when_done)
        raise
    if not fresh.breakers:  # as routed: no breaker anywhere
        run.reservation = await reserved
        return run
    await _given_back(reserved)  # a breaker changed meanwhile: routed again on what the read found
    request_id_bind(run.request_id)
    return await start_run(
        caller=caller, registry=registry, body=body, endpoint=endpoint, model_id=model_id, provider=provider,
        preferred_ids=preferred_ids, kind=kind, fit_context=fit_context, prompt_tokens=prompt_tokens,
        context_tokens=context_tokens, output_tokens=output_tokens, context_param=context_param, api=api, task=task)


def _given_back_when_done(reserved: "asyncio.Future[Reservation]") -> None:
    if not reserved.cancelled() and reserved.exception() is None:
        quota_release_nowait(reserved.result())


async def _given_back(reserved: Awaitable[Reservation]) -> None:
    """A reservation made for a route that did not stand: given back, counting nothing (a refusal of it stands
    for nothing either: the request is decided again)."""
    with contextlib.suppress(QuotaExceeded, QuotaUnavailable):
        quota_release_nowait(await reserved)


async def _route(*, caller: Caller, registry: Registry, body: dict[str, Any], primary: ModelSpec, task: str | None,
                 endpoint: str, pinned: str | None, context_tokens: int, prompt_tokens: int,
                 max_tokens: int | None, view: BreakerView, now: float) -> Route:
    """The tier's routing policy over the request's candidates (health and statistics as of now)."""
    task = task or task_resolve(endpoint=endpoint)
    plan = await arouting_plan(caller.tier.slug, task)
    counts = preference_counts(caller.user_id, task) if plan_needs_counts(plan) else None  # memory, no I/O
    budget = await budget_remaining(user_id=caller.user_id, api_key_id=caller.api_key_id,
                                    tier_slug=caller.tier.slug) if plan_needs_budget(plan) else None
    needs = request_needs(body, context_tokens=context_tokens, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
    # A half-open model keeps its place: the request that claims its trial must try it, not keep it for last.
    health = Health(open_keys=unhealthy_keys() - view.half_open(now), cooled_until=view.cooled_until(now), now=now)
    return route_request(primary=primary, pinned=pinned, registry=registry, tier=caller.tier, user_id=caller.user_id,
                         task=task, needs=needs, health=health, plan=plan, counts=counts, budget=budget)


async def breakers_admit(candidates: list[ModelSpec], view: BreakerView, now: float) -> list[ModelSpec]:
    """The candidates in the order their circuit breakers allow (health/breakers.py): closed ones, and a half-open
    one whose trial this request claimed, in their places; open ones last, tried only when all else failed (as a
    model that is down), except those a 401/403 opened, never tried while open."""
    if not view.breakers:
        return candidates
    avoided, final, trials = view.avoided(now), view.final(now), view.half_open(now)
    admitted = [model for model in candidates
                if model.key not in avoided and (model.key not in trials or await breaker_trial_claim(model))]
    return admitted + [model for model in candidates if model.key in avoided and model.key not in final]


async def _first_answer(run: _Run, call: Callable[[ModelSpec, float], Awaitable[T]], *,
                        latency_ms: Callable[[T], float]) -> tuple[ModelSpec, T]:
    """Walks the candidates, calling `call(model, seconds left)`, until one answers; raises GenerationFailed
    when none does. A final error (the request itself is wrong, or a model is misconfigured) stops the walk.
    A model that fails is demoted for the rest of the request (a hanging one must not cost every piece of a
    translation its whole timeout)."""
    last: client.UpstreamError | None = None
    since, out_of_time = len(run.attempts), False
    for model in list(run.candidates):
        remaining = run.remaining()
        if remaining <= 0:
            out_of_time = True
            break
        attempt_started = time.perf_counter()
        try:
            answer = await call(model, remaining)
        except client.UpstreamError as error:
            last = error
            run.attempts.append(Attempt(model.id, error.kind, (time.perf_counter() - attempt_started) * 1000,
                                        error.upstream_status, error.message))
            logger.warning("request %s: model %s failed (%s)", run.request_id, model.id, error.kind)
            await _note_failure(model, error)
            if not error.retryable:
                break
            run.demote(model)
            continue
        run.attempts.append(Attempt(model.id, "ok", latency_ms(answer)))
        health_note(model, ok=True)
        stats_note(model.key, ok=True, latency_ms=run.attempts[-1].latency_ms)
        await breaker_success(model)
        return model, answer
    raise _failure(run.attempts, last, run.tried_keys(), since=since, out_of_time=out_of_time)


async def complete(run: _Run, body: dict[str, Any]) -> tuple[ModelSpec, client.Completion]:
    """One non-streaming completion for the run, from the first candidate that answers."""

    def call(model: ModelSpec, remaining: float) -> Awaitable[client.Completion]:
        return client.chat_completion(model, request_adapt(model, run.arm_applied(body)),
                                      timeout=min(model.timeout, remaining))

    return await _first_answer(run, call, latency_ms=lambda completion: completion.latency_ms)


async def chat(*, caller: Caller, registry: Registry, body: dict[str, Any], endpoint: str,
               model_id: str | None = None, provider: str | None = None,
               preferred_ids: Sequence[str] = (), prompt: PromptRequest | None = None,
               task: str | None = None, finish_after_response: bool = False) -> ChatOutcome:
    """One non-streaming chat completion request, with fallback, settled and logged exactly once.

    With `finish_after_response` (a caller on the server's own event loop, which answers right after this
    returns: /v1), an answered request is settled and logged on the loop's next turn, after the response has
    been written, so the client does not wait for the bookkeeping; its cost is worked out here all the same."""
    run = await start_run(caller=caller, registry=registry, body=body, endpoint=endpoint, model_id=model_id,
                          provider=provider, preferred_ids=preferred_ids, fit_context=True, prompt=prompt, task=task)
    usage, model, error = Usage(), None, None
    try:
        model, completion = await complete(run, body)
        usage = await completion_usage(run, model, body, completion)
    except BaseException as failure:  # a cancelled request (client gone) is settled and logged too
        error = failure
        raise
    finally:
        if error is not None or not finish_after_response:
            await asyncio.shield(run_finish(run, model=model, usage=usage, error=error))  # even when cancelled
    if finish_after_response:
        if not run.charges:  # (as run_finish charges it)
            run.charge(model, usage)
        run.cost = run.charged()
        asyncio.get_running_loop().call_soon(_run_finish_logged, run, model, usage)
    judge_sample(arm=run.arm, request_id=run.request_id, messages=body.get("messages") or [],
                 answer=completion_text(completion.data))
    return ChatOutcome(request_id=run.request_id, model=model, raw=completion.raw, data=completion.data,
                       attempts=run.attempts, usage=usage, cost=run.cost,
                       latency_ms=(time.perf_counter() - run.started) * 1000, quota=run.reservation,
                       prompt=run.prompt, route=run.route)


async def completion_usage(run: _Run, model: ModelSpec, body: dict[str, Any], completion: client.Completion) -> Usage:
    """The usage of one completion: the upstream's, or counted locally when it reported none or nonsense (the
    answer passed on then carries the local count instead of the nonsense)."""
    counted = usage_from(completion.data)
    if counted is not None:
        return Usage(*counted)
    usage = await usage_counted(body, completion_text(completion.data))
    if usage_garbled(completion.data):
        logger.warning("request %s: model %s reported an unusable usage; counted locally", run.request_id, model.id)
        completion.data["usage"] = {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                                    "total_tokens": usage.input_tokens + usage.output_tokens}
        completion.raw = orjson.dumps(completion.data)
    return usage


def error_classified(error: BaseException) -> tuple[int, str]:
    """(HTTP status, error type) of a request that ended with `error`: a cancelled one (its client went away)
    is 499 "client_disconnected"; anything unforeseen is 500 "internal_error", never a client's fault."""
    if isinstance(error, ApplicationError):
        return error.status, error.code
    if isinstance(error, client.UpstreamError):
        return error.status, error.kind
    if isinstance(error, asyncio.CancelledError):
        return 499, "client_disconnected"
    return 500, "internal_error"


def _run_finish_logged(run: _Run, model: ModelSpec, usage: Usage) -> None:
    """`run_finish` of an answered request, as a callback of the event loop (`chat`'s `finish_after_response`)."""
    try:
        run_finish_now(run, model=model, usage=usage, error=None)
    except Exception:  # never seen: the loop would only log it without the request's id
        logger.exception("request %s: not settled or not logged", run.request_id)


async def run_finish(run: _Run, *, model: ModelSpec | None, usage: Usage, error: BaseException | None,
                     status: str | None = None, error_type: str | None = None, streamed: bool = False,
                     ttft_ms: float | None = None) -> None:
    """Settles the reservation and writes the request's one usage row (even if settling fails).

    `status` and `error_type` default from `error`: "ok", or "error" with its HTTP status and type (see
    `error_classified`)."""
    run_finish_now(run, model=model, usage=usage, error=error, status=status, error_type=error_type,
                   streamed=streamed, ttft_ms=ttft_ms)


def run_finish_now(run: _Run, *, model: ModelSpec | None, usage: Usage, error: BaseException | None,
                   status: str | None = None, error_type: str | None = None, streamed: bool = False,
                   ttft_ms: float | None = None) -> None:
    """`run_finish`, which never waits for anything."""
    if not run.charges and model is not None:
        run.charge(model, usage)
    try:
        # Sent now, answered after the response: the response does not wait for the quota back end.
        quota_settle_nowait(reservation=run.reservation, model=model, input_tokens=usage.input_tokens,
                            output_tokens=usage.output_tokens, cost=run.charged())
    finally:
        http_status, error_kind = error_classified(error) if error else (200, "")
        run.record(model=model, usage=usage, status=status or ("error" if error else "ok"), http_status=http_status,
                   error_type=error_kind if error_type is None else error_type, streamed=streamed, ttft_ms=ttft_ms)


def completion_text(data: dict[str, Any]) -> str:
    choices = data.get("choices") or []
    return "".join(((choice.get("message") or {}).get("content") or "") for choice in choices if isinstance(choice, dict))


def _event_object(payload: bytes) -> dict[str, Any] | client.UpstreamBadResponse:
    """A server-sent event's JSON object, or the error that breaks the stream when it is not one."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return client.UpstreamBadResponse("The upstream sent an event that is not JSON.")
    if not isinstance(data, dict):
        return client.UpstreamBadResponse("The upstream sent an event of an unexpected shape.")
    return data


class ChatStream:
    """A streaming request whose upstream has answered 2xx. Iterate `events()` for SSE bytes to send;
    it settles and logs exactly once, however the stream ends (done, upstream break, client gone).

    Events are passed on as they came, but each is checked: an event that is not JSON, content that is not
    text, or an upstream that stops before `data: [DONE]`, ends the stream with an error event rather than a
    silent truncation; a usage that makes no sense is left out (and counted locally). Whatever happens, the
    stream ends with `data: [DONE]` or an error event."""

    def __init__(self, run: _Run, model: ModelSpec, handle: client.StreamHandle, body: dict[str, Any],
                 client_wants_usage: bool) -> None:
        self.run, self.model, self.handle, self.body = run, model, handle, body
        self.client_wants_usage = client_wants_usage
        self.request_id = run.request_id
        self.attempts = run.attempts
        self.usage: Usage | None = None
        self.ttft_ms: float | None = None
        self._text: list[str] = []
        self._done = False
        self._broken: client.UpstreamError | None = None

    async def events(self) -> AsyncIterator[bytes]:
        status, error_type, failure = "partial", "client_disconnected", None
        buffer = b""
        chunks = self.handle.chunks()
        try:
            async for chunk in chunks:
                buffer += chunk
                if b"\r" in buffer:  # SSE allows CRLF line ends
                    buffer = buffer.replace(b"\r\n", b"\n")
                *events, buffer = buffer.split(b"\n\n")
                out = b"".join(self._pass(event) for event in events if event)
                if out:
                    if self.ttft_ms is None:
                        self.ttft_ms = (time.perf_counter() - self.run.started) * 1000
                    yield out
                if self._broken is not None:
                    raise self._broken
                if self._done:
                    break
            if not self._done:
                raise client.UpstreamBadResponse("The upstream stream ended before it was complete.")
            status, error_type = "ok", ""
        except client.UpstreamError as error:
            # Bytes already reached the client: no fallback (it would duplicate text). End with an error event.
            error_type = error.kind
            upstream_error_count(model=self.model.id, kind=error.kind)
            logger.warning("request %s: stream from %s broke (%s)", self.request_id, self.model.id, error.kind)
            yield self._error_event(code=error.kind, message=f"The upstream stream broke: {error.message}")
        except Exception as error:  # a bug of ours, or an upstream oddity nobody foresaw: still a clean end
            failure, error_type = error, None
            logger.exception("request %s: stream from %s failed unexpectedly", self.request_id, self.model.id)
            yield self._error_event(code="internal_error", message="Internal error.")
        finally:
            # Shielded: a client that went away cancels this generator, but the upstream must still be
            # closed and the request settled and logged.
            await asyncio.shield(self._finish(chunks, status=status, error_type=error_type, failure=failure))

    async def _finish(self, chunks: AsyncIterator[bytes], *, status: str, error_type: str | None,
                      failure: Exception | None) -> None:
        try:
            await chunks.aclose()  # also when left early, after [DONE]
            await self.handle.close()  # in case the chunks were never started
        finally:
            self.usage = self.usage or await usage_counted(self.body, "".join(self._text))
            await run_finish(self.run, model=self.model, usage=self.usage, error=failure, status=status,
                             error_type=error_type, streamed=True, ttft_ms=self.ttft_ms)

    def _error_event(self, *, code: str, message: str) -> bytes:
        """The event that ends a stream that broke."""
        return b"data: " + orjson.dumps({"error": {"message": message, "type": "server_error", "param": None,
                                                   "code": code}}) + b"\n\n"

    def _pass(self, event: bytes) -> bytes:
        """The bytes to send on for one upstream event (nothing once the stream is done or broken)."""
        if self._done or self._broken is not None:
            return b""
        if not event.startswith(b"data:"):
            return event + b"\n\n"  # comments, event names
        payload = event[5:].strip()
        if payload == b"[DONE]":
            self._done = True
            return event + b"\n\n"
        data = _event_object(payload)
        if not isinstance(data, dict):
            self._broken = data
            return b""
        texts = []
        for choice in data.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if content is not None and not isinstance(content, str):
                self._broken = client.UpstreamBadResponse("The upstream sent content that is not text.")
                return b""
            texts.append(content or "")
        self._text.extend(texts)
        if data.get("usage") is not None:
            counted = usage_from(data)
            if counted is None:  # nonsense: counted locally at the end, and not passed on
                logger.warning("request %s: model %s streamed an unusable usage; counted locally",
                               self.request_id, self.model.id)
                del data["usage"]
                event = b"data: " + orjson.dumps(data)
            else:
                self.usage = Usage(*counted)
            if not data.get("choices") and (counted is None or not self.client_wants_usage):
                return b""
        return event + b"\n\n"



class ChatFromResponsesStream(ChatStream):
    """A chat stream from a model served on the Responses API: each upstream event is checked, metered and turned
    into chat chunks in one pass (`responses_bridge.ChatFromResponsesEvents`); the events that repeat what was
    streamed are skipped unread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chunks = bridge.ChatFromResponsesEvents()

    def _pass(self, event: bytes) -> bytes:
        if self._done or self._broken is not None:
            return b""
        name, payload = bridge.event_parts(event)
        if payload is None or (name is not None and name not in self._chunks.USED):
            return b""
        data = _event_object(payload)
        if not isinstance(data, dict):
            self._broken = data
            return b""
        kind = data.get("type")
        if kind == "response.output_text.delta":
            if not isinstance(data.get("delta"), str):
                self._broken = client.UpstreamBadResponse("The upstream sent content that is not text.")
                return b""
            self._text.append(data["delta"])
        elif kind in ("response.completed", "response.incomplete"):
            self._done = True
            response = data.get("response") if isinstance(data.get("response"), dict) else {}
            counted = usage_from({"usage": bridge.usage_responses_to_chat(response.get("usage"))})
            if counted is not None:
                self.usage = Usage(*counted)
            elif response.get("usage") is not None:
                logger.warning("request %s: model %s streamed an unusable usage; counted locally",
                               self.request_id, self.model.id)
            if counted is None or not self.client_wants_usage:
                response["usage"] = None  # no usage chunk
        out = self._chunks.event(data)
        if self._chunks.failed:
            self._broken = client.UpstreamUnavailable("The upstream failed the response.")
        return out


async def chat_stream(*, caller: Caller, registry: Registry, body: dict[str, Any], endpoint: str,
                      model_id: str | None = None, provider: str | None = None,
                      preferred_ids: Sequence[str] = (), prompt: PromptRequest | None = None,
                      task: str | None = None) -> ChatStream:
    """Opens a streaming request, falling back while no byte has been sent. Raises GenerationFailed
    (logged) when every candidate fails before streaming."""
    run = await start_run(caller=caller, registry=registry, body=body, endpoint=endpoint, model_id=model_id,
                          provider=provider, preferred_ids=preferred_ids, fit_context=True, prompt=prompt, task=task)
    client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    upstream = {**body, "stream": True, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}

    def open_stream(model: ModelSpec, remaining: float) -> Awaitable[client.StreamHandle]:
        first_byte, idle = client.default_timeouts(model)
        return client.chat_completion_stream(model, request_adapt(model, upstream), idle_timeout=idle,
                                             first_byte_timeout=min(first_byte, remaining))

    try:
        model, handle = await _first_answer(run, open_stream, latency_ms=lambda handle: handle.first_byte_ms)
        stream_class = ChatFromResponsesStream if model.api == bridge.RESPONSES else ChatStream
        return stream_class(run, model, handle, body, client_wants_usage)
    except BaseException as failure:  # every candidate failed, or the request was cancelled meanwhile
        await run_finish(run, model=None, usage=Usage(), error=failure, streamed=True)
        raise


async def generate(*, caller: Caller, registry: Registry, prompt: str | None = None,
                   messages: list[dict[str, Any]] | None = None, model_id: str | None = None,
                   provider: str | None = None, preferred_ids: Sequence[str] = (), endpoint: str = "api.generate",
                   template: PromptRequest | None = None, task: str | None = None, **params: Any) -> ChatOutcome:
    """Generates text from a prompt or messages (or a prompt `template` alone). `provider` is the legacy way of
    choosing a model."""
    if messages is None:
        messages = [] if prompt is None and template is not None else [{"role": "user", "content": prompt or ""}]
    body = {"messages": messages, **{k: v for k, v in params.items() if v is not None}}
    return await chat(caller=caller, registry=registry, body=body, endpoint=endpoint, model_id=model_id,
                      provider=provider, preferred_ids=preferred_ids, prompt=template, task=task)


def cooldowns_reset() -> None:
    breakers_reset()
