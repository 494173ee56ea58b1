"""Embeddings: `POST /v1/embeddings` for models of kind `embedding`, on the same pipeline as chat (tiers,
fallback to models of the same kind, quotas, one usage row with tokens and cost)."""

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import orjson

from generation import client
from generation.adaptation import request_adapt
from generation.services import (
    Caller,
    ChatOutcome,
    Usage,
    _first_answer,
    run_finish,
    start_run,
    tokenizer_load,
    usage_from,
    usage_garbled,
)
from llmhub.errors import ApplicationError
from registry.selectors import ModelSpec, Registry
from usage.services import tokens_count_text

logger = logging.getLogger(__name__)

MAX_INPUTS = 2048  # OpenAI's limit of inputs in one request
MAX_DIMENSIONS = 3072  # the largest embedding OpenAI serves (text-embedding-3-large)
MAX_TOKEN_ID = 2**32 - 1  # token arrays hold token ids; no vocabulary comes near
ENCODING_FORMATS = ("float", "base64")


class BadEmbeddingsRequest(ApplicationError):
    status = 400
    code = "invalid_request"


def _token(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_TOKEN_ID


def _input_texts(value: Any) -> list[str] | None:
    """The inputs as texts (a token array as its numbers), or None when `input` is not one of OpenAI's shapes:
    a non-empty string, a list of them, a token array, or a list of token arrays (at most MAX_INPUTS)."""
    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value or len(value) > MAX_INPUTS:
        return None
    if all(_token(item) for item in value):
        return [" ".join(map(str, value))]
    texts = []
    for item in value:
        if isinstance(item, str) and item:
            texts.append(item)
        elif isinstance(item, list) and item and all(_token(token) for token in item):
            texts.append(" ".join(map(str, item)))
        else:
            return None
    return texts


def embeddings_body_validate(data: Any, *, forbidden: frozenset[str]) -> tuple[dict[str, Any], list[str]]:
    """The request and its inputs as texts; a 400 naming the field otherwise. Unknown fields pass through."""
    if not isinstance(data, dict):
        raise BadEmbeddingsRequest("The request body must be a JSON object.")
    if blocked := sorted(forbidden.intersection(data)):
        raise BadEmbeddingsRequest(f"The field '{blocked[0]}' is not accepted: the hub chooses the upstream and its "
                                   "key.", code="forbidden_field", extra={"param": blocked[0]})
    if not isinstance(data.get("model"), str) or not data["model"]:
        raise BadEmbeddingsRequest("'model' must name an embedding model of /v1/models.", extra={"param": "model"})
    texts = _input_texts(data.get("input"))
    if texts is None:
        raise BadEmbeddingsRequest(f"'input' must be a non-empty string, a list of up to {MAX_INPUTS} of them, or "
                                   "token arrays.", extra={"param": "input"})
    dimensions = data.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or not 1 <= dimensions <= MAX_DIMENSIONS):
        raise BadEmbeddingsRequest(f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}.",
                                   extra={"param": "dimensions"})
    if data.get("encoding_format") is not None and data["encoding_format"] not in ENCODING_FORMATS:
        raise BadEmbeddingsRequest("'encoding_format' must be 'float' or 'base64'.", extra={"param": "encoding_format"})
    if data.get("user") is not None and not isinstance(data["user"], str):
        raise BadEmbeddingsRequest("'user' must be a string.", extra={"param": "user"})
    return data, texts


def _estimate(text: str) -> int:
    return -(-len(text) // 4)  # 4 characters a token, as usage.services.tokens_estimate_messages


async def embeddings_create(*, caller: Caller, registry: Registry, body: dict[str, Any], texts: list[str],
                            endpoint: str = "v1.embeddings") -> ChatOutcome:
    """One embeddings request, with fallback, settled and logged exactly once. A model whose window is smaller
    than the longest input is skipped (a 400 context_length_exceeded when none is left)."""
    model_id = body.pop("model")
    estimates = [_estimate(text) for text in texts]
    run = await start_run(caller=caller, registry=registry, body=body, endpoint=endpoint, model_id=model_id,
                          provider=None, preferred_ids=(), kind="embedding", fit_context=True,
                          prompt_tokens=sum(estimates), context_tokens=max(estimates), output_tokens=1,
                          context_param="input")

    def call(model: ModelSpec, remaining: float) -> Awaitable[client.Completion]:
        return client.embeddings(model, request_adapt(model, body), timeout=min(model.timeout, remaining))

    usage, model, error = Usage(), None, None
    try:
        model, answer = await _first_answer(run, call, latency_ms=lambda completion: completion.latency_ms)
        usage = await _usage(run.request_id, model, texts, answer)
    except BaseException as failure:  # a cancelled request (client gone) is settled and logged too
        error = failure
        raise
    finally:
        await asyncio.shield(run_finish(run, model=model, usage=usage, error=error))
    return ChatOutcome(request_id=run.request_id, model=model, raw=answer.raw, data=answer.data,
                       attempts=run.attempts, usage=usage, cost=run.cost,
                       latency_ms=(time.perf_counter() - run.started) * 1000, quota=run.reservation)


async def _usage(request_id: str, model: ModelSpec, texts: list[str], answer: client.Completion) -> Usage:
    """The upstream's count, else counted locally (and passed on in place of a nonsensical one)."""
    counted = usage_from(answer.data)
    if counted is not None:
        return Usage(counted[0], 0)
    await tokenizer_load()
    usage = Usage(sum(tokens_count_text(text) for text in texts), 0, True)
    if usage_garbled(answer.data) or answer.data.get("usage") is None:
        if usage_garbled(answer.data):
            logger.warning("request %s: model %s reported an unusable usage; counted locally", request_id, model.id)
        answer.data["usage"] = {"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens}
        answer.raw = orjson.dumps(answer.data)
    return usage
