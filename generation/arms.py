"""Which experiment arm serves a request (experiments app): the request names an experiment (`metadata.experiment`
or the `x-llmhub-experiment` header, which its surface binds here) or uses a prompt template that one runs on
(`metadata.prompt`). The arm's model and parameters are applied by generation/services.py's `start_run`; its
template version (`Assignment.template_ref`) is for the prompt rendering to use."""

from contextvars import ContextVar
from typing import Any

from experiments.selectors import Assignment
from experiments.services import aexperiment_assign
from registry.selectors import Registry

_bound_experiment: ContextVar[str | None] = ContextVar("llmhub_experiment", default=None)

HEADER = "x-llmhub-experiment"


def experiment_bind(key: str | None) -> None:
    """The experiment the request's header names (the surfaces call this once per request)."""
    _bound_experiment.set(key or None)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


async def request_arm(*, user_id: int | None, tier, registry: Registry, body: dict[str, Any],
                      prompt_name: str | None = None) -> Assignment | None:
    """The arm serving this request, or None. A request whose caller's tier may not use the arm's model joins no
    experiment (it is served as if none ran), so an experiment never turns an allowed request into a 403."""
    metadata = body.get("metadata")
    prompt = key = None
    if isinstance(metadata, dict):
        prompt, key = _text(metadata.get("prompt")), _text(metadata.get("experiment"))
    prompt, key = prompt or prompt_name, key or _bound_experiment.get()
    if user_id is None or not (prompt or key):
        return None
    assignment = await aexperiment_assign(user_id, prompt=prompt, key=key)
    if assignment is None:
        return None
    model = registry.models.get(assignment.model_id)
    if model is None or not model.enabled or not model.allows(tier):
        return None
    return assignment
