"""Usage accounting: the entry each request leaves behind, its cost, and local token counts.

`usage_record` only hands the entry on (a Redis stream, the embedded mode's spool, or an in-process queue: one
write or an append); usage/writer.py and the consumers write them to `UsageLog` in batches, off the response path.
`usage_record_now` writes one at once, for work off that path.
"""

import base64
import gzip
import hashlib
import json
import logging
import threading
from decimal import ROUND_HALF_UP, Decimal, localcontext
from importlib.metadata import distribution

import orjson
import tiktoken
from django.db import DatabaseError

from usage.billing import BillingEventEntry
from usage.entries import UsageEntry
from usage.metrics import usage_metrics_observe
from usage.rows import rows_insert
from usage.stream import stream_append
from usage.writer import writer

logger = logging.getLogger(__name__)


def usage_record(entry: UsageEntry) -> None:
    """Hand `entry` on: to the Redis stream when one is configured and this is an event loop (usage/stream.py: one
    write on a socket, a consumer writes the database), else to the usage writer (usage/writer.py: the embedded
    mode's spool, else its in-process queue).
    Non-blocking and thread-safe, safe to call from async code; never raises. An entry whose request_id is
    already logged is ignored."""
    if not isinstance(entry, UsageEntry):
        logger.error("usage_record() takes a UsageEntry, not %s: nothing recorded", type(entry).__name__)
        return
    try:
        if stream_append(entry):
            usage_metrics_observe([entry])  # the consumer serves no /metrics: this process counts its rows
            return
    except Exception:
        logger.exception("usage row %s could not be streamed: written by this process", entry.request_id)
    writer.record(entry)


def usage_record_now(entry: UsageEntry) -> None:
    """Writes `entry` at once, in the calling thread and its transaction, for work already off the request path
    (a model test in a Celery worker: its row then goes with the test's fate, and no queue outlives a test). A
    database that refuses for now gets the entry queued for the batched writer instead: nothing is lost."""
    try:
        rows_insert([entry])
    except DatabaseError as error:
        logger.warning("usage row %s queued: the database refused it for now (%s)", entry.request_id, error)
        writer.record(entry)  # counted in the metrics when the writer flushes it
        return
    usage_metrics_observe([entry])


def billing_event_record(entry: BillingEventEntry) -> None:
    """Queues a billing event for the batched writer (written in its next batch, retried while the database is
    down, like a usage row): for events born on the request path. Non-blocking, thread-safe; never raises."""
    writer.record(entry)


def usage_flush(timeout: float = 5.0) -> int:
    """Write every entry recorded so far, in the calling thread (a sync context): the queue, and the spooled rows
    (drained here, or waited for while another process holds the spool's lock); returns how many rows it wrote
    (an already logged request_id among them is skipped by the database).

    Waits up to `timeout` seconds for a flush already running elsewhere (TimeoutError past it). A database
    error is raised with the entries still queued: nothing is dropped.
    """
    return writer.flush(timeout=timeout)


# UsageLog.cost keeps 10 decimal places.
COST_QUANTUM = Decimal("1e-10")


def usage_cost(
    *, input_tokens: int, output_tokens: int, input_price_per_million: Decimal, output_price_per_million: Decimal
) -> Decimal:
    """The exact cost of a request, rounded once (half up) to the 10 decimal places the log stores."""
    with localcontext(prec=60):
        total = input_tokens * input_price_per_million + output_tokens * output_price_per_million
        return total.scaleb(-6).quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)


# tiktoken downloads its vocabularies on first use, which cannot work offline. The bpe-openai package
# ships OpenAI's o200k_base ranks file; it is checked against the SHA-256 that tiktoken itself expects
# (tiktoken_ext/openai_public.py), and the split pattern and special tokens are tiktoken's too.
_O200K_RANKS_FILE = ("bpe-openai", "bpe_openai/data/o200k_base.tiktoken.gz")
_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_O200K_SPECIAL_TOKENS = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}

_encoding: tiktoken.Encoding | None = None
_encoding_lock = threading.Lock()


def tokens_encoding() -> tiktoken.Encoding:
    """tiktoken's o200k_base encoding, built once per process without the network.

    The first call takes about 0.7 s and keeps about 75 MB: async callers should make it through
    `sync_to_async` (or warm it in a thread at start-up); later calls are free.
    """
    global _encoding
    if _encoding is None:
        with _encoding_lock:
            if _encoding is None:
                _encoding = _o200k_base_load()
    return _encoding


def _o200k_base_load() -> tiktoken.Encoding:
    package, path = _O200K_RANKS_FILE
    contents = gzip.decompress(distribution(package).locate_file(path).read_bytes())
    if hashlib.sha256(contents).hexdigest() != _O200K_SHA256:
        raise RuntimeError(f"{path} from {package} is not OpenAI's o200k_base vocabulary (SHA-256 mismatch).")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in contents.splitlines() if line)}
    return tiktoken.Encoding(
        name="o200k_base", pat_str=_O200K_PATTERN, mergeable_ranks=ranks, special_tokens=_O200K_SPECIAL_TOKENS
    )


def tokens_count_text(text: str) -> int:
    """Tokens in `text` under o200k_base; special-token markers in user text count as plain text."""
    return len(tokens_encoding().encode_ordinary(text))


def tokens_count_messages(messages: list[dict]) -> int:
    """Prompt tokens of a chat request, counted the way OpenAI bills its chat models (the openai-cookbook
    recipe): 3 per message, 1 more for a `name`, 3 to prime the reply.

    Text content parts are counted; other values (tool calls, function calls) by their compact JSON;
    images are not counted.
    """
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += sum(tokens_count_text(text) for text in _texts(key, value))
            if key == "name":
                total += 1
    return total


def prompt_hash(messages: object) -> str:
    """The usage row's `prompt_hash`: 128 bits of BLAKE2b over the messages' JSON as the client sent them (key order
    kept). A few microseconds for a usual prompt, about 2 ms per MiB; "" for what JSON cannot hold."""
    try:
        return hashlib.blake2b(orjson.dumps(messages), digest_size=16).hexdigest()
    except (TypeError, orjson.JSONEncodeError):
        return ""


def tokens_estimate_messages(messages: list[dict]) -> int:
    """A cheap estimate of a chat request's prompt tokens (4 characters a token, plus the per-message
    overhead), for reservations on the request path: no tokenizer (0.7 s and 75 MB to load) is needed.
    Settling replaces it with the upstream's count."""
    total = 3
    for message in messages:
        total += 3 + sum(-(-len(text) // 4) for key, value in message.items() for text in _texts(key, value))
    return total


def _texts(key: str, value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if key == "content" and isinstance(value, list):
        return [part["text"] for part in value if isinstance(part, dict) and isinstance(part.get("text"), str)]
    return [json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)]
