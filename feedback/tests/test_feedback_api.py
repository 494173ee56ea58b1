"""POST/GET /api/feedback/ over real HTTP against the live hub and the simulated upstream: votes on the caller's own
requests (answered through the official openai SDK), 404 for anyone else's, 400 for bad bodies, idempotence."""

import httpx2
import openai
import pytest
from django.test import Client

from conftest import usage_rows
from feedback.models import Feedback

MESSAGES = [{"role": "user", "content": "hello hub"}]


@pytest.fixture
def owner(make_user):
    return make_user("feedback-owner", tier="free")


@pytest.fixture
def outsider(make_user):
    return make_user("feedback-outsider", tier="pro")


def sdk(live_hub: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_hub}/v1", api_key=key, max_retries=0, timeout=10)


def ask(live_hub: str, key: str, messages=MESSAGES) -> str:
    """One chat completion; returns its request id once its usage row is written."""
    raw = sdk(live_hub, key).chat.completions.with_raw_response.create(model="demo", messages=messages)
    request_id = raw.headers["x-request-id"]
    usage_rows(0)  # flushes the writer
    return request_id


def vote(live_hub: str, key: str, body) -> httpx2.Response:
    return httpx2.post(f"{live_hub}/api/feedback/", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def state(live_hub: str, key: str, request_id: str | None) -> httpx2.Response:
    params = {} if request_id is None else {"request_id": request_id}
    return httpx2.get(f"{live_hub}/api/feedback/", params=params, headers={"Authorization": f"Bearer {key}"},
                      timeout=10)


def test_it_records_a_vote_on_the_callers_request_and_a_second_vote_replaces_the_first(live_hub, owner, api_key_for):
    key = api_key_for(owner)
    request_id = ask(live_hub, key)
    assert state(live_hub, key, request_id).json() == {
        "request_id": request_id, "score": None, "source": None, "comment": "", "model": "demo", "task": "generation",
        "updated_at": None}

    first = vote(live_hub, key, {"request_id": request_id, "score": 1})
    assert first.status_code == 200, first.text
    assert {name: first.json()[name] for name in ("request_id", "score", "source", "model", "task", "comment")} == {
        "request_id": request_id, "score": 1, "source": "explicit", "model": "demo", "task": "generation",
        "comment": ""}

    second = vote(live_hub, key, {"request_id": request_id, "score": -1, "comment": "wrong answer"})
    assert second.status_code == 200, second.text
    again = vote(live_hub, key, {"request_id": request_id, "score": -1, "comment": "wrong answer"})
    assert again.status_code == 200
    assert Feedback.objects.count() == 1
    stored = Feedback.objects.get()
    assert (stored.request_id, stored.user_id, stored.score, stored.comment, stored.model_id) == (
        request_id, owner.pk, -1, "wrong answer", "demo")
    shown = state(live_hub, key, request_id).json()
    assert (shown["score"], shown["source"], shown["comment"]) == (-1, "explicit", "wrong answer")


def test_it_answers_404_for_another_users_request_and_an_unknown_one(live_hub, owner, outsider, api_key_for):
    owner_key, outsider_key = api_key_for(owner), api_key_for(outsider)
    request_id = ask(live_hub, owner_key)

    for key, target in ((outsider_key, request_id), (owner_key, "req_" + "0" * 32)):
        refused = vote(live_hub, key, {"request_id": target, "score": -1})
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "request_not_found"
        assert state(live_hub, key, target).status_code == 404
    assert not Feedback.objects.exists()
    # The owner's own vote still works, and the outsider never sees it.
    assert vote(live_hub, owner_key, {"request_id": request_id, "score": 1}).status_code == 200
    assert state(live_hub, outsider_key, request_id).status_code == 404


@pytest.mark.parametrize("body", [
    {"request_id": "x"},
    {"score": 1},
    {"request_id": "x", "score": 0},
    {"request_id": "x", "score": 2},
    {"request_id": "x", "score": "1"},
    {"request_id": "x", "score": True},
    {"request_id": "x", "score": 1.5},
    {"request_id": "x", "score": None},
    {"request_id": 5, "score": 1},
    {"request_id": "x" * 65, "score": 1},
    {"request_id": "x", "score": 1, "comment": "c" * 501},
    {"request_id": "x", "score": 1, "comment": 7},
    {"request_id": "x", "score": 1, "extra": True},
    [],
    "thumbs",
])
def test_it_refuses_a_bad_body_with_400_in_the_error_shape_and_writes_nothing(live_hub, owner, api_key_for, body):
    key = api_key_for(owner)
    if isinstance(body, dict) and body.get("request_id") == "x":
        body = {**body, "request_id": ask(live_hub, key)}  # a real request: only the body is wrong
    response = vote(live_hub, key, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in ("invalid", "parse_error")
    assert not Feedback.objects.exists()


def test_it_refuses_a_get_without_a_request_id_and_a_caller_without_credentials(live_hub, owner, api_key_for):
    key = api_key_for(owner)
    response = state(live_hub, key, None)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    anonymous = httpx2.post(f"{live_hub}/api/feedback/", json={"request_id": "x", "score": 1}, timeout=10)
    assert anonymous.status_code in (401, 403)
    assert "error" in anonymous.json()


def test_it_works_with_a_session_and_its_csrf_token(live_hub, owner, api_key_for):
    request_id = ask(live_hub, api_key_for(owner))
    login = Client()
    login.force_login(owner)
    token = "feedbacktestcsrftoken0123456789a"  # any 32 letters are a CSRF secret: sent as cookie and header
    cookies = {"sessionid": login.cookies["sessionid"].value, "csrftoken": token}
    with httpx2.Client(base_url=live_hub, timeout=10, cookies=cookies) as browser:
        without_token = browser.post("/api/feedback/", json={"request_id": request_id, "score": 1})
        assert without_token.status_code == 403
        assert not Feedback.objects.exists()
        with_token = browser.post("/api/feedback/", json={"request_id": request_id, "score": 1},
                                  headers={"X-CSRFToken": token})
        assert with_token.status_code == 200, with_token.text
        assert browser.get("/api/feedback/", params={"request_id": request_id}).json()["score"] == 1
    assert Feedback.objects.get().score == 1


def test_it_is_in_the_openapi_schema(live_hub):
    schema = httpx2.get(f"{live_hub}/api/schema/", params={"format": "json"}, timeout=10).json()
    operations = schema["paths"]["/api/feedback/"]
    assert operations["post"]["operationId"] == "feedback_submit"
    assert operations["get"]["operationId"] == "feedback_retrieve"
    body = schema["components"]["schemas"]["FeedbackInputRequest"]
    score = body["properties"]["score"]["allOf"][0]["$ref"].rsplit("/", 1)[1]
    assert schema["components"]["schemas"][score]["enum"] == [1, -1]
    assert body["additionalProperties"] is False
    assert {"200", "400", "404"} <= set(operations["post"]["responses"])
