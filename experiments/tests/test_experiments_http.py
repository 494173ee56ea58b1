"""Experiments over real HTTP against the simulated upstream, with the openai SDK: sticky assignment across requests
and sessions (API keys), the arm's model and parameters applied and recorded on the usage row, a guardrail that
stops an arm doubling the cost, and a promotion seen by every app process."""

import contextlib

import httpx2
import openai
import pytest

from conftest import usage_rows
from experiments.models import Arm, Experiment
from experiments.services import (
    experiment_assign,
    experiment_evaluate,
    experiment_promote,
    experiment_start,
    experiment_stop,
)

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "hi"}]


def sdk(root: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{root}/v1", api_key=key, max_retries=0, timeout=20)


def served_by(client: openai.OpenAI, *, experiment: str | None = None, header: str | None = None,
              model: str = "demo") -> str:
    """The model that answered (x-llmhub-model) a chat completion joining the experiment."""
    response = client.chat.completions.with_raw_response.create(
        model=model, messages=HI, metadata={"experiment": experiment} if experiment else None,
        extra_headers={"x-llmhub-experiment": header} if header else None)
    return response.headers["x-llmhub-model"]


def users_on_both_arms(make_user, key: str, *, at_least: int, **fields) -> list:
    """At least `at_least` users, more until both arms have some (the hash of user and experiment decides)."""
    users = []
    while len(users) < at_least or len({experiment_assign(user.pk, key=key).arm for user in users}) < 2:
        users.append(make_user(f"user-{len(users)}", **fields))
    return users


def test_it_keeps_each_user_on_one_arm_across_requests_and_sessions_and_records_it(
        live_hub, make_user, api_key_for, make_experiment, simulated_upstream):
    experiment = make_experiment("sticky", arms=(("control", "demo", {"temperature": 0.3}, 1),
                                                 ("treatment", "demo-backup", {"temperature": 0.9}, 1)))
    users = users_on_both_arms(make_user, "sticky", at_least=8)
    arms_of = {}
    for user in users:
        # Two sessions (API keys) and both ways of naming the experiment: always the same arm.
        first, second = sdk(live_hub, api_key_for(user)), sdk(live_hub, api_key_for(user))
        seen = {served_by(first, experiment="sticky"), served_by(second, header="sticky"),
                served_by(first, header="sticky", model="demo-backup"), served_by(second, experiment="sticky")}
        assert len(seen) == 1, (user.username, seen)
        arms_of[user.pk] = seen.pop()
    assert set(arms_of.values()) == {"demo", "demo-backup"}

    # The arm's parameters reach the upstream, whatever the client sent.
    treated = next(user for user in users if arms_of[user.pk] == "demo-backup")
    sdk(live_hub, api_key_for(treated)).chat.completions.create(model="demo", messages=HI, temperature=0.1,
                                                                metadata={"experiment": "sticky"})
    assert simulated_upstream.last_request("demo-backup")["temperature"] == 0.9

    rows = usage_rows(4 * len(users) + 1)
    assert len(rows) == 4 * len(users) + 1
    for row in rows:
        assert row.experiment_id == experiment.pk
        assert row.experiment_arm == {"demo": "control", "demo-backup": "treatment"}[arms_of[row.user_id]]
        assert row.answered_model == arms_of[row.user_id]


def test_it_serves_requests_naming_no_running_experiment_as_usual(live_hub, free_user, api_key_for, make_experiment):
    make_experiment("draft-one", start=False)
    client = sdk(live_hub, api_key_for(free_user))

    assert served_by(client, experiment="draft-one", model="demo-backup") == "demo-backup"
    assert served_by(client, header="no-such-experiment") == "demo"
    assert [(row.experiment_id, row.experiment_arm) for row in usage_rows(2)] == [(None, ""), (None, "")]


def test_it_joins_api_generate_and_translate_by_header_and_metadata(live_hub, free_user, api_key_for, make_experiment):
    experiment = make_experiment("generate", arms=(("only-backup", "demo-backup", {}, 1),
                                                   ("also-backup", "demo-backup", {}, 1)))
    key = api_key_for(free_user)
    with httpx2.Client(base_url=live_hub, headers={"Authorization": f"Bearer {key}"}, timeout=20) as http:
        by_header = http.post("/api/generate/", json={"prompt": "hi"}, headers={"x-llmhub-experiment": "generate"})
        by_metadata = http.post("/api/generate/", json={"prompt": "hi", "metadata": {"experiment": "generate"}})
        bad = http.post("/api/generate/", json={"prompt": "hi", "metadata": {"experiment": ["not", "a", "string"]}})
        translated = http.post("/api/translate/", json={"text": "hello", "target_language": "fr"},
                               headers={"x-llmhub-experiment": "generate"})
        translated_by_metadata = http.post("/api/translate/", json={
            "text": "hello", "target_language": "fr", "metadata": {"experiment": "generate"}})
        bad_translation = http.post("/api/translate/", json={"text": "hello", "target_language": "fr",
                                                             "metadata": {"experiment": {"not": "a string"}}})

    answers = (by_header, by_metadata, translated, translated_by_metadata)
    assert [answer.status_code for answer in answers] == [200] * 4
    assert {answer.json()["model"] for answer in answers} == {"demo-backup"}
    for bad_one in (bad, bad_translation):
        assert bad_one.status_code == 400 and "metadata" in bad_one.json()["error"]["fields"]
    assert [row.experiment_id for row in usage_rows(4)] == [experiment.pk] * 4


def test_an_experiment_on_the_translation_template_serves_each_arms_version_and_model_on_translate(
        live_hub, make_user, api_key_for, make_experiment):
    from prompts.builtin import BUILTIN_TEMPLATES, TRANSLATION
    from prompts.services import prompt_version_create

    # load_models seeded version 1 (production); the treatment's is a second one.
    builtin = {key: BUILTIN_TEMPLATES[TRANSLATION][key] for key in ("user", "variables")}
    assert prompt_version_create(name=TRANSLATION, system="Into {{ target_language }}, tersely.", **builtin).version == 2
    experiment = make_experiment("translate-ab", start=False, prompt_name=TRANSLATION)
    Arm.objects.filter(experiment=experiment, name="treatment").update(template_ref=f"{TRANSLATION}@2")
    Arm.objects.filter(experiment=experiment, name="control").update(template_ref=f"{TRANSLATION}@1")
    experiment_start(experiment=experiment)

    served = set()
    for user in users_on_both_arms(make_user, "translate-ab", at_least=4):
        with httpx2.Client(base_url=live_hub, headers={"Authorization": f"Bearer {api_key_for(user)}"},
                           timeout=20) as http:
            answer = http.post("/api/translate/", json={"text": "hello", "target_language": "fr"})  # names nothing
        assert answer.status_code == 200
        served.add((answer.json()["model"], answer.headers["x-llmhub-prompt"]))
    # Each user gets their arm's model with their arm's template version.
    assert served == {("demo", f"{TRANSLATION}@1"), ("demo-backup", f"{TRANSLATION}@2")}
    assert {row.experiment_arm for row in usage_rows(len(served))} == {"control", "treatment"}


def test_a_guardrail_stops_an_arm_that_doubles_the_cost_and_its_users_move_to_the_control(
        live_hub, make_user, api_key_for, make_experiment):
    # demo-pro costs 4× demo per token: the treatment's cost per request is far past 2× the control's.
    experiment = make_experiment("pricey", arms=(("control", "demo", {}, 1), ("pricier", "demo-pro", {}, 1)),
                                 guardrail_min_requests=6, guardrail_cost_ratio=2.0)
    clients, served = [], []
    while len(set(served)) < 2 or len(clients) < 4:  # users until both arms have some (which ones: the hash's say)
        clients.append(sdk(live_hub, api_key_for(make_user(f"pro-{len(clients)}", tier="pro"))))
        served.append(served_by(clients[-1], experiment="pricey"))
    for model in ("demo", "demo-pro"):  # each arm past the guardrails' minimum
        client = clients[served.index(model)]
        while served.count(model) < 6:
            served.append(served_by(client, experiment="pricey"))
    usage_rows(len(served))

    evaluation = experiment_evaluate(experiment_id=experiment.pk)

    pricier = Arm.objects.get(experiment=experiment, name="pricier")
    assert pricier.state == Arm.State.STOPPED
    assert "Guardrail: cost per request" in pricier.reason and "the control's (limit 2×)" in pricier.reason
    assert "pricier stopped" in evaluation.decision
    assert Arm.objects.get(experiment=experiment, name="control").state == Arm.State.ACTIVE
    # From the next request on, everyone is served by the control.
    assert {served_by(client, experiment="pricey") for client in clients} == {"demo"}
    assert Experiment.objects.get(pk=experiment.pk).status == Experiment.Status.RUNNING


def test_an_error_rate_guardrail_stops_a_failing_arm(live_hub, make_user, api_key_for, make_experiment,
                                                     simulated_upstream):
    experiment = make_experiment("flaky", arms=(("control", "demo", {}, 1), ("broken", "demo-backup", {}, 1)),
                                 guardrail_min_requests=3, guardrail_error_rate=0.5)
    simulated_upstream.set_fault("demo-backup", "status=400")  # not retried: the arm's requests fail
    for user in [make_user(f"user-{n}") for n in range(10)]:
        client = sdk(live_hub, api_key_for(user))
        for _ in range(2):
            with contextlib.suppress(openai.BadRequestError):
                served_by(client, experiment="flaky")
    usage_rows(20)

    experiment_evaluate(experiment_id=experiment.pk)

    broken = Arm.objects.get(experiment=experiment, name="broken")
    assert broken.state == Arm.State.STOPPED and "Guardrail: error rate 100.0% is above 50.0%" in broken.reason


def test_a_promoted_arm_and_a_stop_are_served_from_the_very_next_request_on_in_every_process(
        two_app_processes, make_user, api_key_for, make_experiment):
    experiment = make_experiment("promote", arms=(("control", "demo", {}, 1), ("treatment", "demo-backup", {}, 1)))
    users = users_on_both_arms(make_user, "promote", at_least=4)
    keys = {user.pk: api_key_for(user) for user in users}
    before = {(root, pk): served_by(sdk(root, key), experiment="promote")
              for root in two_app_processes for pk, key in keys.items()}
    assert set(before.values()) == {"demo", "demo-backup"}
    for pk in keys:  # sticky across processes
        assert len({before[(root, pk)] for root in two_app_processes}) == 1

    assert experiment_promote(experiment=experiment, arm_name="treatment")

    # No wait: the next request to either process is served by the winner (they check versions once a minute).
    after = {served_by(sdk(root, key), experiment="promote") for root in reversed(two_app_processes)
             for key in keys.values()}
    assert after == {"demo-backup"}

    experiment_stop(experiment=Experiment.objects.get(pk=experiment.pk))

    # Stopped: the very next request is served as if it did not exist (the model the client asked for).
    assert {served_by(sdk(root, key), experiment="promote") for root in two_app_processes
            for key in keys.values()} == {"demo"}
