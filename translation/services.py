"""Translation on top of generation's pipeline: same registry, access checks and fallback.

A text longer than the model's context is split at paragraph boundaries, each piece translated in
order, and the pieces rejoined; the whole translation is one request with one usage row. Each piece is
billed at the prices of the model that answered it (a fallback may answer some pieces); the row names every
model that answered. When a piece fails on every model, the pieces translated before it are returned in the
error (`partial_text`) and billed, the row's status is "partial"; nothing after it is attempted.
"""

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import langcodes

from generation import services as generation
from generation.prompting import PromptUse
from generation.services import Caller, GenerationFailed, Usage
from llmhub.errors import ApplicationError
from prompts.builtin import TRANSLATION
from prompts.services import PromptRequest, ResolvedPrompt, prompt_render, prompt_resolve, prompt_version_get
from registry.selectors import ModelSpec, Registry
from usage.services import tokens_count_text

# Share of the context window one piece may take: the prompt, the piece and its translation must fit.
_PIECE_SHARE = 0.3
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")

# Legacy callers passed `language`/`target_lang`, `source_lang`, `provider`; see `legacy_arguments`.
LEGACY_NAMES = {"target_lang": "target_language", "language": "target_language", "source_lang": "source_language",
                "src_lang": "source_language"}


class InvalidLanguage(ApplicationError):
    status = 400
    code = "invalid_language"


def _incomplete(failure: GenerationFailed, *, piece: int, pieces: int, done: list[str], answered_by: list[str],
                usage: Usage, cost: object) -> GenerationFailed:
    """The failure of piece `piece` (from 0) of a text in several: what happened, and the pieces translated before
    it, which are billed."""
    reason = failure.message[:1].lower() + failure.message[1:]
    translated = f"The {len(done)} piece{'s' if len(done) != 1 else ''} translated before it " \
                 f"{'are' if len(done) != 1 else 'is'} in partial_text (and billed)." if done else "Nothing was billed."
    incomplete = GenerationFailed(f"Piece {piece + 1} of {pieces} could not be translated: {reason} {translated}",
                                  status=failure.status, code=failure.code, attempts=failure.attempts,
                                  retry_after=failure.retry_after)
    incomplete.extra.update(pieces=pieces, pieces_translated=len(done), partial_text="\n\n".join(done),
                            answered_by=answered_by, cost=f"{cost}", usage={
                                "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                                "estimated": usage.estimated})
    return incomplete


@dataclass(slots=True)
class Translation:
    request_id: str
    text: str
    model: ModelSpec
    source_language: str | None
    target_language: str
    pieces: int
    answered_by: list[str]  # the model that answered each piece, in order
    attempts: list[generation.Attempt]
    usage: Usage
    cost: object
    latency_ms: float
    quota: object = None  # the usage.quotas reservation, whose rate-limit headers go on the response
    prompt: PromptUse | None = None  # the prompt template version it was served with
    route: object = None  # routing.policies.Route: how the model was chosen (the x-llmhub-route header)


def language_validate(code: str, *, field: str) -> str:
    """A well-formed BCP 47 tag, normalised (`en-us` → `en-US`)."""
    if not isinstance(code, str) or not langcodes.tag_is_valid(code):
        message = f"'{code}' is not a valid BCP 47 language tag (e.g. 'fr', 'pt-BR')."
        raise InvalidLanguage(message, extra={"fields": {field: [message]}})
    return langcodes.standardize_tag(code)


def _language_name(tag: str) -> str:
    # Names come from langcodes' `language_data` package (a requirement).
    return f"{langcodes.Language.get(tag).display_name()} ({tag})"


_PARAGRAPH_JOIN = "\n\n"


def text_split(text: str, *, max_tokens: int) -> list[str]:
    """Splits at paragraph boundaries into pieces of at most `max_tokens`; a paragraph that alone is too
    long is split at sentence ends, a sentence still too long at whitespace, and a word still too long
    into slices. Linear in the text: each part is counted once, and a piece is taken to count the sum of
    its parts and joins (the tokenizer cuts text at whitespace before merging, so the whole counts no more)."""
    pieces: list[str] = []
    current: list[str] = []
    current_tokens = 0
    join_tokens = tokens_count_text(_PARAGRAPH_JOIN)
    for paragraph in _PARAGRAPH_BREAK.split(text.strip()):
        for part, tokens in _fit(paragraph, max_tokens):
            if current and current_tokens + join_tokens + tokens > max_tokens:
                pieces.append(_PARAGRAPH_JOIN.join(current))
                current, current_tokens = [], 0
            current_tokens += (join_tokens if current else 0) + tokens
            current.append(part)
    if current:
        pieces.append(_PARAGRAPH_JOIN.join(current))
    return pieces


def _fit(paragraph: str, max_tokens: int) -> list[tuple[str, int]]:
    """The paragraph as parts of at most `max_tokens`, each with its token count, in order."""
    tokens = tokens_count_text(paragraph)
    if tokens <= max_tokens:
        return [(paragraph, tokens)]
    units: list[tuple[str, int]] = []
    for sentence in _SENTENCE_END.split(paragraph):
        tokens = tokens_count_text(sentence)
        units.extend([(sentence, tokens)] if tokens <= max_tokens else _words(sentence, max_tokens))
    # Glue consecutive units back together while they fit, keeping order. A unit counted alone may
    # take one more token once a space precedes it.
    merged: list[tuple[str, int]] = []
    for unit, tokens in units:
        if merged and merged[-1][1] + tokens + 1 <= max_tokens:
            merged[-1] = (merged[-1][0] + " " + unit, merged[-1][1] + tokens + 1)
        else:
            merged.append((unit, tokens))
    return merged


def _words(sentence: str, max_tokens: int) -> list[tuple[str, int]]:
    units = []
    for word in sentence.split():
        tokens = tokens_count_text(word)
        if tokens <= max_tokens:
            units.append((word, tokens))
            continue
        # A "word" longer than the whole budget (a URL, base64): slices of at most max_tokens bytes in
        # UTF-8, since a token never covers less than one byte.
        size = max(1, max_tokens // 4)
        units.extend((word[i:i + size], tokens_count_text(word[i:i + size])) for i in range(0, len(word), size))
    return units


def _messages(piece: str, *, target: str, source: str | None, prompt: ResolvedPrompt | None = None,
              request: PromptRequest | None = None, model: ModelSpec | None = None) -> list[dict[str, str]]:
    """The piece's messages from the translation's template (`translation` unless the request names another):
    `text`, `target_language` and `source_clause` are supplied to any template that declares them."""
    request = request or PromptRequest(name=TRANSLATION)
    prompt = prompt or prompt_version_get(request.name)
    supplied = {"text": piece, "target_language": _language_name(target),
                "source_clause": f" from {_language_name(source)}" if source else ""}
    rendered = prompt_render(prompt, variables=request.variables, model=model, supplied=supplied,
                             param=request.variables_param)
    messages = [{"role": "system", "content": rendered.system}] if rendered.system is not None else []
    return [*messages, {"role": "user", "content": piece if rendered.user is None else rendered.user}]


async def translate(*, caller: Caller, registry: Registry, text: str, target_language: str,
                    source_language: str | None = None, model_id: str | None = None, provider: str | None = None,
                    preferred_ids: Sequence[str] = (), endpoint: str = "api.translate",
                    prompt: PromptRequest | None = None) -> Translation:
    target = language_validate(target_language, field="target_language")
    source = language_validate(source_language, field="source_language") if source_language else None
    if not isinstance(text, str) or not text.strip():
        message = "There is no text to translate."
        raise ApplicationError(message, code="invalid", extra={"fields": {"text": [message]}})
    prompt = prompt or PromptRequest(name=TRANSLATION)
    resolved: ResolvedPrompt | None = None

    async def prompt_prepare(primary: ModelSpec) -> None:
        # The template, resolved for the model that will answer (an experiment's arm may have chosen both) and
        # checked (variables) before anything is reserved.
        nonlocal resolved
        resolved = await prompt_resolve(prompt, model=primary, user_id=caller.user_id)
        _messages("", target=target, source=source, prompt=resolved, request=prompt, model=primary)

    run = await generation.start_run(caller=caller, registry=registry, body={"messages": [{"content": text}]},
                                     endpoint=endpoint, model_id=model_id, provider=provider,
                                     preferred_ids=preferred_ids, task="translation", prompt_name=prompt.name,
                                     prepare=prompt_prepare)
    run.prompt = PromptUse(resolved.name, resolved.version)
    usage, model, error, answered_by, results = Usage(), None, None, [], []
    try:
        # Counting a long text's tokens takes a while: not on the event loop.
        pieces = await asyncio.to_thread(text_split, text,
                                         max_tokens=max(64, int(run.primary.context_window * _PIECE_SHARE)))
        for index, piece in enumerate(pieces):
            body = {"messages": _messages(piece, target=target, source=source, prompt=resolved, request=prompt,
                                          model=run.primary)}
            try:
                model, completion = await generation.complete(run, body)
            except GenerationFailed as failure:
                if len(pieces) == 1:
                    raise
                raise _incomplete(failure, piece=index, pieces=len(pieces), done=results, answered_by=answered_by,
                                  usage=usage, cost=run.charged()) from None
            piece_usage = await generation.completion_usage(run, model, body, completion)
            run.charge(model, piece_usage)
            usage = Usage(usage.input_tokens + piece_usage.input_tokens,
                          usage.output_tokens + piece_usage.output_tokens, usage.estimated or piece_usage.estimated)
            results.append(generation.completion_text(completion.data).strip())
            answered_by.append(model.id)
    except BaseException as failure:
        error = failure
        raise
    finally:
        # Pieces already translated are billed whatever happens next (and returned in the error).
        status = "partial" if error is not None and results else None
        await asyncio.shield(generation.run_finish(run, model=model, usage=usage, error=error, status=status))
    return Translation(request_id=run.request_id, text="\n\n".join(results), model=model, source_language=source,
                       target_language=target, pieces=len(pieces), answered_by=answered_by, attempts=run.attempts,
                       usage=usage, cost=run.cost, latency_ms=(time.perf_counter() - run.started) * 1000,
                       quota=run.reservation, prompt=run.prompt, route=run.route)


def legacy_arguments(data: dict) -> dict:
    """Maps the old parameter names onto today's."""
    return {LEGACY_NAMES.get(name, name): value for name, value in data.items()}
