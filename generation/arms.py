"""Which experiment arm serves a request (experiments app): the request names an experiment (`metadata.experiment`
or the `x-llmhub-experiment` header, which its surface binds here) or uses a prompt template that one runs on
(`metadata.prompt`). The arm's model and parameters are applied by generation/services.py's `start_run`; its
template version (`Assignment.template_ref`) is for the prompt rendering to use. An experiment with a judge has a
sample of its answers scored (`judge_sample`; the scoring: generation/judging.py)."""

import asyncio
import logging
import threading
from contextvars import ContextVar
from typing import Any

from experiments.selectors import Assignment
from experiments.services import aexperiment_assign, judge_sampled
from registry.selectors import Registry

logger = logging.getLogger(__name__)

_bound_experiment: ContextVar[str | None] = ContextVar("llmhub_experiment", default=None)

HEADER = "x-llmhub-experiment"


def experiment_bind(key: str | None) -> None:
    """The experiment the request's header names (the surfaces call this once per request)."""
    _bound_experiment.set(key or None)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _named(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """The template and the experiment the request names (its metadata, else the header for the experiment)."""
    metadata = body.get("metadata")
    prompt = key = None
    if isinstance(metadata, dict):
        prompt, key = _text(metadata.get("prompt")), _text(metadata.get("experiment"))
    return prompt, key or _bound_experiment.get()


def request_names_experiment(body: dict[str, Any]) -> bool:
    """Whether an experiment could serve this request (it names a template or an experiment, in its metadata or
    the header): only such a request depends on the snapshots' epoch."""
    prompt, key = _named(body)
    return bool(prompt or key)


async def request_arm(*, user_id: int | None, tier, registry: Registry, body: dict[str, Any],
                      prompt_name: str | None = None) -> Assignment | None:
    """The arm serving this request, or None. A request whose caller's tier may not use the arm's model joins no
    experiment (it is served as if none ran), so an experiment never turns an allowed request into a 403."""
    prompt, key = _named(body)
    prompt = prompt or prompt_name
    if user_id is None or not (prompt or key):
        return None
    assignment = await aexperiment_assign(user_id, prompt=prompt, key=key)
    if assignment is None:
        return None
    model = registry.models.get(assignment.model_id)
    if model is None or not model.enabled or not model.allows(tier):
        return None
    return assignment


# --- The judge's sample -------------------------------------------------------------------------------------------

JUDGE_TASK = "generation.tasks.experiment_judge_run"
TEXT_MAX_CHARS = 8_000  # of the question and of the answer, in the task's message and in the judge's prompt
_queued: set[asyncio.Task] = set()
_task_lock = threading.Lock()  # the first lookup imports every tasks module: one thread at a time


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _question(messages: list[dict[str, Any]]) -> str:
    return next((_content_text(message.get("content")) for message in reversed(messages)
                 if isinstance(message, dict) and message.get("role") == "user"), "")


def judge_sample(*, arm: Assignment | None, request_id: str, messages: list[dict[str, Any]], answer: str) -> None:
    """Queues the judging of this answer when its experiment has a judge and the request is in its sample
    (`judge_sample_rate` of the requests, by request id). Returns at once: the task is sent from a thread (a broker's
    publish is blocking I/O). Only non-streamed chat answers are sampled (/v1 chat and completions, /api/generate/)."""
    if arm is None or not arm.judge_model or not judge_sampled(request_id, arm.judge_sample_rate):
        return
    arguments = (arm.experiment_id, arm.arm, request_id, _question(messages)[:TEXT_MAX_CHARS],
                 answer[:TEXT_MAX_CHARS])
    task = asyncio.get_running_loop().create_task(asyncio.to_thread(_queue, arguments))
    _queued.add(task)
    task.add_done_callback(_queued.discard)


def _queue(arguments: tuple) -> None:
    from django.db import connection

    from llmhub.celery import task_get

    try:
        with _task_lock:
            task = task_get(JUDGE_TASK)
        task.apply_async(arguments, retry=False)
    except Exception:  # the broker is away: this sample goes unscored, the request was served
        logger.exception("experiment %s: request %s could not be queued for its judge", arguments[0], arguments[2])
    finally:
        connection.close()  # an in-process (eager) run used this thread's connection: not left to the executor
