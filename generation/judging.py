"""An experiment's judge: a model that scores a sample of the experiment's answers (its judge metric).

On the request path `generation.arms.judge_sample` picks the sample and queues the Celery task from a thread
(`generation.tasks.experiment_judge_run`); the task runs `judge_execute` here: it asks the experiment's `judge_model`
with the `judge` prompt template (prompts/builtin.py; a version saved in admin replaces it), reads `Score: N` (0..10)
from its answer and stores N / 10 as the request's `JudgeScore`. The judge's request is the system's own usage, as a
registry model's connectivity test is: a usage row (endpoint `experiment_judge`, no user, no experiment: it is not an
arm's request) with its tokens and their cost at the judge model's prices, outside quotas. A task run twice for one
request asks the judge once.
"""

import logging
import re
import time
import uuid

from django.conf import settings

logger = logging.getLogger(__name__)

JUDGE_ENDPOINT = "experiment_judge"  # the usage log's endpoint of the judge's requests
_SCORE = re.compile(r"\bscore\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def score_parse(text: str) -> float | None:
    """`Score: N` (0..10) as N / 10; None when the judge gave none in range."""
    match = _SCORE.search(text or "")
    if match is None or float(match.group(1)) > 10:
        return None
    return float(match.group(1)) / 10


def judge_execute(*, experiment_id: int, arm: str, request_id: str, question: str, answer: str) -> float | None:
    """Asks the experiment's judge model to score `answer`, records its usage and the score; returns the score (None
    when there is none: no judge, the judge failed or gave no score). Asks nothing when the request has a score."""
    from experiments.models import Experiment
    from experiments.selectors import judge_score_exists
    from experiments.services import judge_score_record
    from generation.client import UpstreamError
    from generation.connectivity import CheckUsage, chat_ask
    from prompts.builtin import JUDGE
    from prompts.services import prompt_render, prompt_version_get
    from registry.selectors import registry_get

    if judge_score_exists(request_id):
        return None
    judge_model = Experiment.objects.filter(pk=experiment_id).values_list("judge_model", flat=True).first()
    model = registry_get().models.get(judge_model or "")
    if model is None or not model.enabled:
        logger.warning("experiment %s: its judge model %r is not an enabled registry model", experiment_id,
                       judge_model)
        return None
    rendered = prompt_render(prompt_version_get(JUDGE), variables={"question": question, "answer": answer},
                             model=model)
    messages = ([{"role": "system", "content": rendered.system}] if rendered.system else []) + \
        [{"role": "user", "content": rendered.user or ""}]
    usage, started, text, error = CheckUsage(), time.perf_counter(), "", ""
    try:
        text = chat_ask(model, {"messages": messages, "max_tokens": 16, "temperature": 0},
                        timeout=min(model.timeout, settings.LLMHUB["MODEL_TEST_CHECK_TIMEOUT_SECONDS"]),
                        max_response_bytes=settings.LLMHUB["MODEL_TEST_MAX_RESPONSE_BYTES"], usage=usage)
    except UpstreamError as failure:
        error = failure.kind
    finally:
        if usage.calls:
            _usage_record(model, usage, rendered, error=error, latency_ms=(time.perf_counter() - started) * 1000)
    score = score_parse(text) if not error else None
    if score is None:
        logger.warning("experiment %s: the judge %s gave no score for request %s (%s)", experiment_id, model.id,
                       request_id, error or "no 'Score: N' in its answer")
        return None
    judge_score_record(experiment_id=experiment_id, arm=arm, request_id=request_id, score=score)
    return score


def _usage_record(model, usage, rendered, *, error: str, latency_ms: float) -> None:
    # No experiment on the row: it is the judge's request, not one of an arm's.
    from usage.services import UsageEntry, usage_cost, usage_record_now

    answered = not error
    usage_record_now(UsageEntry(
        request_id=f"judge_{uuid.uuid4().hex}", endpoint=JUDGE_ENDPOINT, user_id=None, tier="",
        requested_model=model.id, answered_model=model.id if answered else "",
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, tokens_estimated=usage.estimated,
        cost=usage_cost(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                        input_price_per_million=model.input_price_per_million,
                        output_price_per_million=model.output_price_per_million),
        latency_ms=latency_ms, status="ok" if answered else "error", http_status=200 if answered else 502,
        error_type=error, attempts=usage.calls, prompt_template=rendered.name, prompt_version=rendered.version,
    ))
