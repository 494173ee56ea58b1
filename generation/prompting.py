"""Model-aware assembly of a request that names a prompt template: the one place a template is resolved and
rendered on the request path (`prompt_apply`, called by `services.start_run` once the primary model is known).

- The rendered system part leads the messages (on the Responses API: the instructions), the client's messages
  follow, and the rendered user part ends them.
- The template's parameter defaults (temperature, max_tokens) fill what the request leaves out.
- When the prompt and max_tokens exceed the model's context window, the oldest turns of the client's messages are
  trimmed (never the system part, nor the last message) until it fits, and the response says how many in
  `x-llmhub-trimmed-turns`; what still does not fit is the usual 400 `context_length_exceeded`.
- A model that takes no system role (`request_params.no_system_role`) gets the system part folded into the first
  user message by `adaptation.request_adapt`, per candidate model.
"""

from dataclasses import dataclass
from typing import Any

from generation import responses_bridge as bridge
from prompts.services import PromptRequest, RenderedPrompt, metadata_for_upstream, prompt_render, prompt_resolve
from registry.selectors import ModelSpec
from usage.services import tokens_estimate_messages

PROMPT_HEADER = b"x-llmhub-prompt"
TRIMMED_HEADER = b"x-llmhub-trimmed-turns"


@dataclass(frozen=True, slots=True)
class PromptUse:
    """The template version a request was served with, and how many turns were trimmed to fit."""

    name: str
    version: int
    trimmed: int = 0

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def header_bytes(self) -> list[tuple[bytes, bytes]]:
        headers = [(PROMPT_HEADER, self.ref.encode())]
        if self.trimmed:
            headers.append((TRIMMED_HEADER, str(self.trimmed).encode()))
        return headers

    def headers(self) -> dict[str, str]:
        return {name.decode(): value.decode() for name, value in self.header_bytes()}


def _output_tokens(body: dict[str, Any]) -> int:
    return body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens") or 0


def _turn_end(messages: list[dict[str, Any]], start: int) -> int:
    """The index after the turn starting at `start`: a message and the tool results that answer it."""
    end = start + 1
    while end < len(messages) - 1 and messages[end].get("role") == "tool":
        end += 1
    return end


def messages_fit(messages: list[dict[str, Any]], *, window: int, output_tokens: int) -> tuple[list[dict[str, Any]], int]:
    """The messages with their oldest turns trimmed until the estimate plus `output_tokens` fits `window`: never a
    system or developer message, never the last message. Returns them and how many messages were trimmed."""
    if tokens_estimate_messages(messages) + output_tokens <= window:
        return messages, 0
    kept, trimmed = list(messages), 0
    while tokens_estimate_messages(kept) + output_tokens > window:
        start = next((index for index, message in enumerate(kept[:-1])
                      if message.get("role") not in ("system", "developer")), None)
        if start is None:
            break
        end = _turn_end(kept, start)
        trimmed += end - start
        del kept[start:end]
    return kept, trimmed


def _chat_assemble(body: dict[str, Any], rendered: RenderedPrompt) -> None:
    messages = list(body.get("messages") or [])
    if rendered.system is not None:
        messages.insert(0, {"role": "system", "content": rendered.system})
    if rendered.user is not None:
        messages.append({"role": "user", "content": rendered.user})
    body["messages"] = messages


def _responses_assemble(body: dict[str, Any], rendered: RenderedPrompt) -> None:
    if rendered.system is not None:
        given = body.get("instructions")
        body["instructions"] = f"{rendered.system}\n\n{given}" if isinstance(given, str) and given else rendered.system
    if rendered.user is not None:
        items = body.get("input")
        items = [] if items is None else [{"role": "user", "content": items}] if isinstance(items, str) else list(items)
        body["input"] = [*items, {"role": "user", "content": rendered.user}]


def _defaults_fill(body: dict[str, Any], params: Any, *, api: str) -> None:
    if "temperature" in params and body.get("temperature") is None:
        body["temperature"] = params["temperature"]
    if "max_tokens" in params and not _output_tokens(body):
        body["max_output_tokens" if api == bridge.RESPONSES else "max_tokens"] = params["max_tokens"]


async def prompt_apply(body: dict[str, Any], request: PromptRequest, *, model: ModelSpec, user_id: int | None,
                       api: str = bridge.CHAT) -> PromptUse:
    """Resolves the template the request names for `model` and assembles it into `body` (in place)."""
    resolved = await prompt_resolve(request, model=model, user_id=user_id)
    rendered = prompt_render(resolved, variables=request.variables, model=model, param=request.variables_param)
    metadata_for_upstream(body)
    _defaults_fill(body, rendered.params, api=api)
    trimmed = 0
    if api == bridge.CHAT:
        _chat_assemble(body, rendered)
        body["messages"], trimmed = messages_fit(body["messages"], window=model.context_window,
                                                 output_tokens=_output_tokens(body))
    else:
        _responses_assemble(body, rendered)
    return PromptUse(name=rendered.name, version=rendered.version, trimmed=trimmed)
