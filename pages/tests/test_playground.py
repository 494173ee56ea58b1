"""/playground/stream/ over real HTTP (the ASGI app, the simulated upstream): the answer as server-sent events framed
by `meta` and `summary`, fallbacks named, refusals and failures as the API's JSON errors."""

import json

import pytest

from conftest import usage_rows
from registry.services import preferences_update


def events(response) -> list[tuple[str, object]]:
    """(event name, data) of every server-sent event, in order."""
    found = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        payload = "\n".join(data)
        found.append((name, payload if payload == "[DONE]" else json.loads(payload)))
    return found


def answer(found: list[tuple[str, object]]) -> str:
    return "".join(choice["delta"].get("content") or "" for name, data in found if name == "message" and data != "[DONE]"
                   for choice in data.get("choices", []))


def named(found: list[tuple[str, object]], event: str) -> dict:
    return next(data for name, data in found if name == event)


def test_it_streams_the_answer_with_its_model_tokens_cost_and_latency(live_hub, make_user, http_as, simulated_upstream):
    user = make_user("pat", tier="free")

    with http_as(user).stream("POST", "/playground/stream/", data={"task": "generation", "prompt": "hello there",
                                                                   "model": "demo"}) as response:
        response.read()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    found = events(response)
    meta = found[0][1]
    assert found[0][0] == "meta" and meta["route"]["winner"] == "demo"  # how it was chosen (routing/)
    assert {name: value for name, value in meta.items() if name != "route"} == {
        "model": "demo", "display_name": "Demo (simulated)", "attempts": [
            {"model": "demo", "outcome": "ok", "latency_ms": meta["attempts"][0]["latency_ms"],
             "upstream_status": None, "message": ""}]}
    assert answer(found) == "Simulated reply from demo: hello there"
    summary = named(found, "summary")
    assert summary["output_tokens"] == 6 and summary["input_tokens"] > 0 and not summary["estimated"]
    assert float(summary["cost"]) > 0 and summary["latency_ms"] > 0 and summary["ttft_ms"] is not None
    assert found[-1][0] == "summary"
    [row] = usage_rows(1)
    assert (row.user_id, row.endpoint, row.answered_model, row.status, row.streamed) == (
        user.pk, "pages.playground", "demo", "ok", True)


def test_it_names_the_model_that_failed_and_why(live_hub, make_user, http_as, simulated_upstream):
    simulated_upstream.set_fault("demo", "status=500")

    response = http_as(make_user("pat")).post("/playground/stream/", data={"prompt": "hi", "model": "demo"})

    meta = named(events(response), "meta")
    assert meta["model"] == "demo-backup"
    failed, answered = meta["attempts"]
    assert (failed["model"], failed["upstream_status"], answered["model"], answered["outcome"]) == (
        "demo", 500, "demo-backup", "ok")
    assert failed["outcome"] != "ok" and failed["message"]
    assert answer(events(response)) == "Simulated reply from demo-backup: hi"
    assert [row.answered_model for row in usage_rows(1)] == ["demo-backup"]


def test_it_refuses_a_model_above_the_tier_before_calling_it(live_hub, make_user, http_as, simulated_upstream):
    response = http_as(make_user("pat", tier="free")).post("/playground/stream/", data={"prompt": "hi",
                                                                                        "model": "demo-premium"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tier_required"
    assert simulated_upstream.stats()["demo-premium"] == 0


def test_it_reports_every_attempt_when_every_model_fails(live_hub, make_user, http_as, simulated_upstream):
    for model in ("demo", "demo-backup"):
        simulated_upstream.set_fault(model, "status=503")

    response = http_as(make_user("pat")).post("/playground/stream/", data={"prompt": "hi", "model": "demo"})

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_failed"
    assert [(attempt["model"], attempt["upstream_status"]) for attempt in error["attempts"]] == [
        ("demo", 503), ("demo-backup", 503)]
    assert [row.status for row in usage_rows(1)] == ["error"]


def test_it_uses_the_users_default_for_the_task(live_hub, make_user, http_as, simulated_upstream):
    user = make_user("pat", tier="pro")
    preferences_update(user=user, data={"default_model": "demo-backup", "task_defaults": {"translation": "demo"}})
    http = http_as(user)

    generated = events(http.post("/playground/stream/", data={"prompt": "hi"}))
    translated = events(http.post("/playground/stream/", data={"task": "translation", "text": "Hello",
                                                                "target_language": "fr"}))

    assert named(generated, "meta")["model"] == "demo-backup"
    assert named(translated, "meta")["model"] == "demo"
    assert answer(translated).startswith("Simulated reply from demo:")
    assert named(translated, "summary")["output_tokens"] > 0
    # Both logged as the playground's, translations too (issue 16, item 17).
    assert [row.endpoint for row in usage_rows(2)] == ["pages.playground", "pages.playground"]


@pytest.mark.parametrize(("data", "fields"), [
    ({"task": "translation", "text": "Hello", "target_language": "not a language!"}, {"target_language"}),
    ({"task": "translation", "target_language": "fr"}, {"text"}),
    ({"task": "generation"}, {"non_field_errors"}),
])
def test_it_refuses_bad_input_with_the_apis_field_errors(live_hub, make_user, http_as, data, fields):
    response = http_as(make_user("pat")).post("/playground/stream/", data=data)

    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == fields


def test_it_reaches_a_model_served_on_the_responses_api(live_hub, make_user, http_as):
    from registry.models import LLMModel
    from registry.selectors import registry_snapshot

    LLMModel.objects.filter(public_id="demo").update(api="responses")
    registry_snapshot.invalidate()

    with http_as(make_user("pat")).stream("POST", "/playground/stream/", data={"prompt": "hello there",
                                                                               "model": "demo"}) as response:
        response.read()

    found = events(response)
    assert answer(found) == "Simulated reply from demo: hello there"
    assert named(found, "summary")["output_tokens"] == 6
    assert [(row.endpoint, row.answered_model, row.status) for row in usage_rows(1)] == [
        ("pages.playground", "demo", "ok")]
def test_it_takes_a_conversation_with_settings_as_json(live_hub, make_user, http_as, simulated_upstream):
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"},
                    {"role": "assistant", "content": "Simulated reply from demo: one"},
                    {"role": "user", "content": "two three four five"}]

    response = http_as(make_user("pat")).post("/playground/stream/", json={
        "task": "generation", "model": "demo", "messages": conversation, "max_tokens": 6, "temperature": 0.3})

    found = events(response)
    assert answer(found) == "Simulated reply from demo: two three"  # the last user turn, cut at 6 tokens
    [row] = usage_rows(1)
    assert (row.input_tokens, row.output_tokens) == (2 + 1 + 5 + 4, 6)


@pytest.mark.parametrize(("body", "fields"), [
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, {"temperature"}),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "6"}, {"max_tokens"}),  # JSON: exact types
    ({"messages": [{"role": "wizard", "content": "hi"}]}, {"messages"}),
    ({"messages": []}, {"non_field_errors"}),
])
def test_it_refuses_a_bad_json_conversation_with_the_apis_field_errors(live_hub, make_user, http_as, body, fields):
    response = http_as(make_user("pat")).post("/playground/stream/", json={"task": "generation", **body})

    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == fields


def test_it_refuses_a_body_that_is_not_a_json_object(live_hub, make_user, http_as):
    response = http_as(make_user("pat")).post("/playground/stream/", content=b"[1, 2",
                                              headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"non_field_errors": ["Send a JSON object."]}
