"""An experiment's judge over real HTTP against the simulated upstream: a sample of the arms' answers is scored by the
judge model in a Celery task (in-process here), the score is the arm's judge metric, and the judge's request is metered
as the system's own usage. The simulated judge echoes its prompt, which holds the question: a question "Score: N" gets
the score N / 10, any other none."""

import time

import openai
import pytest

from conftest import usage_rows
from experiments.models import Experiment, JudgeScore
from experiments.services import experiment_evaluate, judge_sampled
from generation.judging import JUDGE_ENDPOINT, judge_execute
from usage.models import UsageLog
from usage.services import usage_cost

pytestmark = pytest.mark.django_db(transaction=True)


def scores(count: int, *, judged: int, timeout: float = 10.0) -> dict[str, JudgeScore]:
    """The judge scores once there are `count` and the judge's usage rows once there are `judged` (the tasks run in
    threads of the app)."""
    deadline = time.monotonic() + timeout
    while (JudgeScore.objects.count() < count or UsageLog.objects.filter(endpoint=JUDGE_ENDPOINT).count() < judged) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    return {score.request_id: score for score in JudgeScore.objects.all()}


def test_the_judge_scores_the_sampled_answers_per_arm_as_the_systems_usage(
        live_hub, make_user, api_key_for, make_experiment, registry):
    experiment = make_experiment("judged", primary_metric=Experiment.Metric.JUDGE, judge_model="demo-pro",
                                 judge_sample_rate=1.0)
    questions = {}
    for number in range(6):
        user = make_user(f"user-{number}")
        client = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(user), max_retries=0)
        question = f"Score: {number + 3}" if number else "hello"  # the first gets no score from the judge
        response = client.chat.completions.with_raw_response.create(
            model="demo", messages=[{"role": "user", "content": question}], metadata={"experiment": "judged"})
        questions[response.headers["x-request-id"]] = question

    judged = scores(5, judged=6)
    requests = {row.request_id: row for row in usage_rows(6 + 6) if row.experiment_id == experiment.pk}
    assert set(requests) == set(questions)
    assert {rid: (score.arm, score.score) for rid, score in judged.items()} == {
        rid: (requests[rid].experiment_arm, int(question.split()[1]) / 10)
        for rid, question in questions.items() if question != "hello"}

    # The judge's requests: one per sampled answer (the unscored one too), the system's, at the judge's prices.
    judge_rows = UsageLog.objects.filter(endpoint=JUDGE_ENDPOINT)
    assert judge_rows.count() == 6
    judge = registry.models["demo-pro"]
    for row in judge_rows:
        assert (row.user_id, row.tier, row.experiment_id, row.requested_model, row.prompt_template) == (
            None, "", None, "demo-pro", "judge")
        assert row.status == "ok" and row.input_tokens > 0
        assert row.cost == usage_cost(input_tokens=row.input_tokens, output_tokens=row.output_tokens,
                                      input_price_per_million=judge.input_price_per_million,
                                      output_price_per_million=judge.output_price_per_million) > 0

    # A task run again for a scored request asks nothing and changes nothing.
    rid = next(iter(judged))
    assert judge_execute(experiment_id=experiment.pk, arm="control", request_id=rid, question="Score: 1",
                         answer="x") is None
    assert JudgeScore.objects.count() == 5 and UsageLog.objects.filter(endpoint=JUDGE_ENDPOINT).count() == 6

    # The scores are the arms' judge metric.
    evaluation = experiment_evaluate(experiment_id=experiment.pk, act=False)
    for report in evaluation.arms:
        mine = [score.score for score in judged.values() if score.arm == report.arm.name]
        assert report.primary.summary.n == len(mine)
        if mine:
            assert report.primary.summary.mean == pytest.approx(sum(mine) / len(mine))


def test_an_experiment_without_a_judge_or_outside_the_sample_asks_no_judge(live_hub, free_user, api_key_for,
                                                                           make_experiment):
    make_experiment("unjudged", judge_model="demo-pro", judge_sample_rate=0.0)
    client = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(free_user), max_retries=0)
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Score: 9"}],
                                   metadata={"experiment": "unjudged"})
    usage_rows(1)
    time.sleep(0.3)  # a judge queued by mistake would have run in-process by now

    assert not JudgeScore.objects.exists() and not UsageLog.objects.filter(endpoint=JUDGE_ENDPOINT).exists()


def test_the_sample_is_the_stated_share_of_requests_and_fixed_by_the_request_id():
    ids = [f"req_{number}" for number in range(20_000)]
    share = sum(judge_sampled(rid, 0.1) for rid in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert [judge_sampled(rid, 0.1) for rid in ids[:100]] == [judge_sampled(rid, 0.1) for rid in ids[:100]]
    assert not any(judge_sampled(rid, 0.0) for rid in ids[:1000]) and all(judge_sampled(rid, 1.0) for rid in ids[:1000])
