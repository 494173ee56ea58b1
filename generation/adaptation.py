"""What a request becomes for one model: its declared request adaptation (registry `request_params`) and
whether the request fits its context window. Pure functions over a ModelSpec and a body; no I/O.

A model without declarations costs one identity check per call (`NO_PARAMS`), so the hot path stays as it was.
"""

from typing import Any

from llmhub.errors import ApplicationError
from registry.params import NO_PARAMS
from registry.selectors import ModelSpec


class ParameterRefused(ApplicationError):
    status = 400
    code = "unsupported_parameter"


class ContextLengthExceeded(ApplicationError):
    status = 400
    code = "context_length_exceeded"  # OpenAI's code


def request_adapt(model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
    """The body as `model` takes it: renamed parameters under the model's names (a value the client gave under
    the model's own name wins), unsupported ones dropped. A refusing model was refused before (`params_refused`)."""
    params = model.request_params
    if params is NO_PARAMS:
        return body
    adapted = dict(body)
    for source, target in params.renamed:
        if source in adapted:
            value = adapted.pop(source)
            adapted.setdefault(target, value)
    for name in params.unsupported:
        adapted.pop(name, None)
    if params.fold_system and isinstance(adapted.get("messages"), list):
        adapted["messages"] = system_folded(adapted["messages"])
    return adapted


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return content or ""


def system_folded(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages for a model that takes no system role: the system (and developer) messages' text leads the first
    user message (a user message of that text when there is none), separated by a blank line."""
    system = [message for message in messages if message.get("role") in ("system", "developer")]
    if not system:
        return messages
    lead = "\n\n".join(text for message in system if (text := _text_of(message.get("content"))))
    rest = [message for message in messages if message.get("role") not in ("system", "developer")]
    for index, message in enumerate(rest):
        if message.get("role") == "user":
            content = message.get("content")
            folded = [{"type": "text", "text": lead}, *content] if isinstance(content, list) \
                else f"{lead}\n\n{content or ''}"
            return [*rest[:index], {**message, "content": folded}, *rest[index + 1:]]
    return [{"role": "user", "content": lead}, *rest]


def params_dropped(model: ModelSpec, body: dict[str, Any]) -> list[str]:
    """The parameters of `body` that `request_adapt` drops for `model` (named in x-llmhub-dropped-params)."""
    params = model.request_params
    if params is NO_PARAMS:
        return []
    return sorted(name for name in params.unsupported if body.get(name) is not None)


def params_refused(model: ModelSpec, body: dict[str, Any]) -> str | None:
    """The first parameter of `body` that `model` refuses (it declares `on_unsupported: refuse`), else None."""
    params = model.request_params
    if params is NO_PARAMS or not params.refuse:
        return None
    return next((name for name in sorted(params.unsupported) if body.get(name) is not None), None)


def parameter_refused_error(model: ModelSpec, name: str) -> ParameterRefused:
    return ParameterRefused(f"Unsupported parameter: '{name}' is not supported with the model '{model.id}'.",
                            extra={"param": name})


def context_exceeded_error(model: ModelSpec, needed: int, *, param: str = "messages") -> ContextLengthExceeded:
    return ContextLengthExceeded(
        f"This model's maximum context length is {model.context_window} tokens; the request needs about {needed} "
        "(its messages plus the completion's max_tokens), and no fallback has a larger window. Shorten the "
        "messages or lower max_tokens.", extra={"param": param})
