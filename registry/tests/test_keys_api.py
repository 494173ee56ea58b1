"""Self-service hub API keys through /api/keys/: list, create (the key shown once), revoke; an owner, another user
and an anonymous caller; bad input as 400 JSON with nothing written; limits never above the owner's; expiry refused
at authentication with its own code; a cap on keys in use; `last_used_at` written at most once a minute per key.

Every response these tests receive is scanned: a key's secret appears only in the answer that created it, and its
hash never."""

import hashlib
import os
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import httpx2
import openai
import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from llmhub.testing import ServerProcess, database_url, free_port, production_env, uvicorn_command
from registry import authentication, key_usage
from registry.key_usage import api_key_last_used_flush, api_key_last_used_forget
from registry.models import ApiKey, QuotaLimit, Tier
from registry.services import api_key_create

LIST = "/api/keys/"


def revoke_url(key_id: int) -> str:
    return f"/api/keys/{key_id}/revoke/"


class ScannedClient(APIClient):
    """An APIClient that keeps every response, for the secret scan."""

    def __init__(self, responses: list, **kwargs) -> None:
        super().__init__(**kwargs)
        self._responses = responses

    def request(self, **kwargs):
        response = super().request(**kwargs)
        self._responses.append(response)
        return response


@pytest.fixture
def responses() -> list:
    return []


@pytest.fixture
def session_of(responses):
    def make(user) -> ScannedClient:
        client = ScannedClient(responses)
        client.force_login(user)
        return client

    return make


def bearer(raw_key: str, responses: list | None = None) -> APIClient:
    client = ScannedClient(responses) if responses is not None else APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def assert_secrets_only_where_created(responses: list, created: dict[str, int]) -> None:
    """Each secret in `created` (raw key → index of the response that created it) appears there and nowhere else;
    no response holds any key's hash."""
    hashes = set(ApiKey.objects.values_list("key_hash", flat=True))
    for index, response in enumerate(responses):
        text = response.content.decode(errors="replace") + repr(list(response.items()))
        assert not any(key_hash in text for key_hash in hashes)
        for raw_key, where in created.items():
            assert (raw_key in text) == (index == where), (index, text[:300])


@pytest.fixture
def owner(registry, make_user):
    return make_user("keys-owner", tier="free")


def test_it_creates_lists_and_revokes_a_key_showing_the_secret_once(owner, session_of, responses, make_user):
    client = session_of(owner)

    created = client.post(LIST, {"name": "laptop"}, format="json")

    assert created.status_code == 201, created.content
    body = created.json()
    raw_key = body["key"]
    assert raw_key.startswith("lh-") and len(raw_key) > 40
    assert body["prefix"] == raw_key[:10]
    assert created["Cache-Control"] == "no-store"
    assert body | {"key": "…"} == {
        "id": body["id"], "name": "laptop", "prefix": raw_key[:10], "created_at": body["created_at"],
        "last_used_at": None, "expires_at": None, "revoked_at": None, "state": "active", "limits": [], "key": "…"}
    stored = ApiKey.objects.get(pk=body["id"])
    assert stored.user == owner and stored.key_hash == hashlib.sha256(raw_key.encode()).hexdigest()

    # The key works, and may list its owner's keys.
    by_key = bearer(raw_key, responses)
    assert by_key.get("/api/models/").status_code == 200
    listed = by_key.get(LIST)
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()] == [body["id"]]
    assert "key" not in listed.json()[0]

    second = client.post(LIST, {}, format="json").json()
    assert [item["id"] for item in client.get(LIST).json()] == [second["id"], body["id"]]  # newest first

    revoked = client.post(revoke_url(body["id"]))
    assert revoked.status_code == 200
    assert revoked.json()["state"] == "revoked" and revoked.json()["revoked_at"] is not None
    refused = by_key.get("/api/models/")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "authentication_failed"

    again = client.post(revoke_url(body["id"]))  # idempotent: the first revocation's time stays
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert bearer(second["key"]).get("/api/models/").status_code == 200  # the other key is untouched

    assert_secrets_only_where_created(responses, {raw_key: 0, second["key"]: 3})


def test_it_answers_another_users_key_as_missing_and_changes_nothing(owner, session_of, make_user):
    other = make_user("keys-other", tier="free")
    api_key, raw_key = api_key_create(user=owner, name="mine")
    outsider = session_of(other)

    assert outsider.get(LIST).json() == []
    refused = outsider.post(revoke_url(api_key.pk))
    missing = outsider.post(revoke_url(10**6))

    assert refused.status_code == missing.status_code == 404
    assert refused.json() == missing.json() == {"error": {"code": "not_found", "message": "No such API key."}}
    assert ApiKey.objects.get(pk=api_key.pk).revoked_at is None
    assert bearer(raw_key).get("/api/models/").status_code == 200


def test_it_refuses_an_anonymous_caller(owner):
    api_key, _ = api_key_create(user=owner)
    anonymous = APIClient()

    answers = [anonymous.get(LIST), anonymous.post(LIST, {}, format="json"), anonymous.post(revoke_url(api_key.pk))]

    assert [answer.status_code for answer in answers] == [401, 401, 401]
    assert all(answer.json()["error"]["code"] == "not_authenticated" for answer in answers)
    assert ApiKey.objects.count() == 1 and ApiKey.objects.get().revoked_at is None


def test_it_lets_an_api_key_list_keys_but_not_create_or_revoke_them(owner):
    api_key, raw_key = api_key_create(user=owner)
    client = bearer(raw_key)

    created = client.post(LIST, {"name": "minted by a key"}, format="json")
    revoked = client.post(revoke_url(api_key.pk))

    for answer in (created, revoked):
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "session_required"
    assert ApiKey.objects.count() == 1 and ApiKey.objects.get().revoked_at is None
    assert client.get(LIST).status_code == 200


BAD_INPUT = [
    ({"name": "x" * 101}, "name"),
    ({"name": 5}, "name"),
    ({"nmae": "typo"}, "nmae"),
    ({"expires_at": "tomorrow"}, "expires_at"),
    ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
    ({"limits": {"metric": "requests"}}, "limits"),
    ({"limits": [{"metric": "requests", "period": "week", "limit": 5}]}, "limits"),
    ({"limits": [{"metric": "bytes", "period": "day", "limit": 5}]}, "limits"),
    ({"limits": [{"metric": "requests", "period": "day", "limit": "1.5"}]}, "limits"),
    ({"limits": [{"metric": "requests", "period": "day", "limit": -1}]}, "limits"),
    ({"limits": [{"metric": "requests", "period": "day", "limit": True}]}, "limits"),
    ({"limits": [{"metric": "cost", "period": "day", "limit": "0.0000001"}]}, "limits"),
    ({"limits": [{"metric": "requests", "period": "day"}]}, "limits"),
    ({"limits": [{"metric": "requests", "period": "day", "limit": 5, "extra": 1}]}, "limits"),
    ({"limits": [{"metric": "tokens", "period": "day", "limit": 5, "model": "no-such-model"}]}, "limits"),
    ({"limits": [{"metric": "requests", "period": "day", "limit": 5},
                 {"metric": "requests", "period": "day", "limit": 6}]}, "limits"),
    ({"limits": [{"metric": "tokens", "period": "day", "limit": 10**14}]}, "limits"),
    ({"limits": [{"metric": "requests", "period": period, "limit": 5, "model": model}
                 for period in ("minute", "hour", "day", "month") for model in ("", "demo", "demo-backup", "demo-pro",
                                                                                 "qwen3-coder-plus", "deepseek-v3.2")]},
     "limits"),
]


def test_it_refuses_bad_input_with_a_400_naming_the_field_and_writes_nothing(owner, session_of):
    client = session_of(owner)
    for body, field in BAD_INPUT:
        answer = client.post(LIST, body, format="json")

        assert answer.status_code == 400, (body, answer.content)
        assert answer["Content-Type"] == "application/json"
        error = answer.json()["error"]
        assert error["code"] == "invalid", body
        assert field in error["fields"], (body, error)
    assert not ApiKey.objects.exists() and not QuotaLimit.objects.filter(api_key__isnull=False).exists()


def test_it_refuses_limits_above_the_owners_naming_the_limit(owner, session_of):
    free = Tier.objects.get(slug="free")
    QuotaLimit.objects.create(tier=free, metric="requests", period="day", limit=50)
    QuotaLimit.objects.create(tier=free, metric="cost", period="month", limit=Decimal("5"))
    client = session_of(owner)

    above = client.post(LIST, {"limits": [{"metric": "requests", "period": "minute", "limit": 5},
                                          {"metric": "requests", "period": "day", "limit": 100},
                                          {"metric": "cost", "period": "month", "limit": "5.50"}]}, format="json")

    assert above.status_code == 400
    error = above.json()["error"]
    assert error["code"] == "limit_above_owner"
    assert error["fields"] == {"limits": [
        "limits[1]: requests per day: 100 is above the owner's limit of 50.",
        "limits[2]: cost per month: 5.5 is above the owner's limit of 5."]}
    assert not ApiKey.objects.exists()

    within = client.post(LIST, {"name": "capped", "limits": [
        {"metric": "requests", "period": "day", "limit": 50},
        {"metric": "cost", "period": "month", "limit": "0.25"},
        {"metric": "tokens", "period": "hour", "limit": 1000, "model": "demo"}]}, format="json")

    assert within.status_code == 201, within.content
    assert within.json()["limits"] == [
        {"metric": "requests", "period": "day", "limit": 50, "model": None},
        {"metric": "cost", "period": "month", "limit": "0.25", "model": None},
        {"metric": "tokens", "period": "hour", "limit": 1000, "model": "demo"}]
    assert client.get(LIST).json()[0]["limits"] == within.json()["limits"]


def test_it_caps_the_keys_in_use_per_user(owner, session_of, settings, make_user):
    settings.LLMHUB = {**settings.LLMHUB, "MAX_API_KEYS_PER_USER": 2}
    client = session_of(owner)
    api_key_create(user=owner, expires_at=timezone.now() - timedelta(seconds=1))  # expired: not in use
    first = client.post(LIST, {}, format="json").json()
    assert client.post(LIST, {}, format="json").status_code == 201

    refused = client.post(LIST, {"name": "third"}, format="json")

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "max_api_keys_reached"
    assert refused.json()["error"]["max_api_keys"] == 2
    assert ApiKey.objects.filter(user=owner).count() == 3
    assert session_of(make_user("keys-peer")).post(LIST, {}, format="json").status_code == 201  # per user
    client = session_of(owner)
    client.post(revoke_url(first["id"]))
    assert client.post(LIST, {"name": "third"}, format="json").status_code == 201


def test_it_refuses_an_expired_key_with_its_own_code(owner, session_of, live_hub, monkeypatch):
    past, expired_key = api_key_create(user=owner, expires_at=timezone.now() - timedelta(minutes=1))
    soon = timezone.now() + timedelta(hours=1)
    created = session_of(owner).post(LIST, {"expires_at": soon.isoformat()}, format="json").json()
    assert created["expires_at"] is not None and created["state"] == "active"

    answer = bearer(expired_key).get("/api/models/")
    assert answer.status_code == 401
    assert answer.json()["error"] == {"code": "api_key_expired", "message": "This API key has expired: create a new one."}
    assert "Bearer" in answer["WWW-Authenticate"]
    sdk = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=expired_key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk.models.list()
    assert refused.value.code == "api_key_expired"
    assert expired_key not in str(refused.value.body)

    # A key that expires while this process remembers it is refused too: its expiry is checked on every request.
    live = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=created["key"], max_retries=0)
    assert live.models.list().data
    assert bearer(created["key"]).get("/api/models/").status_code == 200
    later = soon.timestamp() + 1
    monkeypatch.setattr(authentication, "time", SimpleNamespace(time=lambda: later))
    assert bearer(created["key"]).get("/api/models/").json()["error"]["code"] == "api_key_expired"
    with pytest.raises(openai.AuthenticationError) as refused_later:
        live.models.list()
    assert refused_later.value.code == "api_key_expired"
    listed = {item["id"]: item["state"] for item in session_of(owner).get(LIST).json()}
    assert listed == {created["id"]: "active", past.pk: "expired"}  # the listing reads the real clock


def test_it_counts_requests_against_a_new_keys_own_limit_at_once(owner, session_of, live_hub):
    raw_key = session_of(owner).post(LIST, {"limits": [{"metric": "requests", "period": "minute", "limit": 1}]},
                                     format="json").json()["key"]
    sdk = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=raw_key, max_retries=0)
    messages = [{"role": "user", "content": "hi"}]

    assert sdk.chat.completions.create(model="demo", messages=messages).choices[0].message.content
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="demo", messages=messages)

    assert refused.value.code == "requests_per_minute"
    assert "this API key" in refused.value.message


@pytest.fixture
def slow_to_check_process(live_hub, simulated_upstream, tmp_path) -> Iterator[str]:
    """Another app process on the test's database (and Redis, in the services run) that checks for changes made
    elsewhere only every 30 s: what it must know at once, it cannot learn from a version check."""
    port = free_port()
    env = production_env(database_url=database_url(), redis_url=os.environ.get("REDIS_URL") or None,
                         LLMHUB_SIMULATOR_URL=simulated_upstream.base_url, LLMHUB_REGISTRY_CACHE_CHECK_SECONDS="30")
    with ServerProcess(uvicorn_command("llmhub.asgi:application", port=port), env=env, log=tmp_path / "app.log") as app:
        app.wait_output(lambda text: "Application startup complete" in text)
        yield f"http://127.0.0.1:{port}"


def test_it_counts_a_new_keys_limit_from_its_first_request_in_another_process(owner, session_of,
                                                                               slow_to_check_process):
    def chat(raw_key: str) -> str:
        sdk = openai.OpenAI(base_url=f"{slow_to_check_process}/v1", api_key=raw_key, max_retries=0)
        return sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}]).id

    assert chat(api_key_create(user=owner)[1])  # the other process has built its snapshots, limits included
    raw_key = session_of(owner).post(LIST, {"limits": [{"metric": "requests", "period": "minute", "limit": 1}]},
                                     format="json").json()["key"]

    assert chat(raw_key)
    with pytest.raises(openai.RateLimitError) as refused:
        chat(raw_key)
    assert refused.value.code == "requests_per_minute" and "this API key" in refused.value.message


def test_it_records_last_use_at_most_once_an_interval_off_the_request_path(owner, live_hub, settings, monkeypatch):
    api_key_last_used_forget()
    api_key, raw_key = api_key_create(user=owner)
    updates = []  # the writer thread's UPDATEs (observed, then run as they are)
    write = key_usage._write
    monkeypatch.setattr(key_usage, "_write", lambda pending: (updates.append(dict(pending)), write(pending)))
    with httpx2.Client(base_url=live_hub, headers={"Authorization": f"Bearer {raw_key}"}, timeout=30) as http:
        assert http.get("/v1/models").status_code == 200
        assert api_key_last_used_flush()
        first = ApiKey.objects.get(pk=api_key.pk).last_used_at
        assert first is not None and timezone.now() - first < timedelta(seconds=30)
        assert len(updates) == 1

        # Within the interval this process sends no UPDATE, and another process's (the same key noted there) changes
        # nothing.
        marked = timezone.now() - timedelta(seconds=10)
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=marked)
        for path in ("/v1/models", "/api/models/", "/v1/models"):
            assert http.get(path).status_code == 200
        assert api_key_last_used_flush()
        assert len(updates) == 1
        assert ApiKey.objects.get(pk=api_key.pk).last_used_at == marked
        api_key_last_used_forget()  # as another process would: it notes the key, its UPDATE changes nothing
        assert http.get("/v1/models").status_code == 200
        assert api_key_last_used_flush()
        assert len(updates) == 2
        assert ApiKey.objects.get(pk=api_key.pk).last_used_at == marked

        # Past the interval the next use is written.
        settings.LLMHUB = {**settings.LLMHUB, "API_KEY_LAST_USED_SECONDS": 5.0}
        api_key_last_used_forget()
        assert http.get("/api/models/").status_code == 200
        assert api_key_last_used_flush()
        assert ApiKey.objects.get(pk=api_key.pk).last_used_at > marked


def test_it_documents_the_keys_endpoints_in_the_schema(owner, session_of):
    schema = session_of(owner).get("/api/schema/?format=json").json()

    listing, revoke = schema["paths"]["/api/keys/"], schema["paths"]["/api/keys/{key_id}/revoke/"]
    assert set(listing) == {"get", "post"} and set(revoke) == {"post"}
    assert {"200", "401", "403", "503"} <= set(listing["get"]["responses"])
    assert {"201", "400", "401", "403", "413", "415", "503"} <= set(listing["post"]["responses"])
    assert {"200", "401", "403", "404", "503"} <= set(revoke["post"]["responses"])
    created = schema["components"]["schemas"]["ApiKeyCreatedOutput"]
    assert "key" in created["properties"]
    assert "key" not in schema["components"]["schemas"]["ApiKeyOutput"]["properties"]
    request = schema["components"]["schemas"]["ApiKeyInputRequest"]
    assert request["additionalProperties"] is False
