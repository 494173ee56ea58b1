"""GET/PUT/PATCH /api/preferences/: a user's default model, task defaults and favourites, checked against the
models they may use, memoised query-free, and used at once by /api/generate/, /api/translate/ and /v1."""

import asyncio

import httpx2
import openai
import pytest

from registry.models import UserLLMConfig, UserModelPreferences
from registry.selectors import apreferences_get, preferences_get
from registry.services import secret_assign, user_tier_set

EMPTY = {"default_model": None, "task_defaults": {"generation": None, "translation": None, "code": None},
         "favourites": []}


@pytest.fixture
def user(make_user):
    return make_user("prefs-user", tier="free")


@pytest.fixture
def client(registry, user, client_for):
    return client_for(user)


def own_model(owner, slug: str, base_url: str = "https://models.example.com/v1") -> UserLLMConfig:
    model = UserLLMConfig(owner=owner, slug=slug, display_name=slug, upstream_model="demo-backup", base_url=base_url)
    secret_assign(model, "sk-own-key-for-preferences")
    model.save()
    return model


def stored(user) -> tuple | None:
    row = UserModelPreferences.objects.filter(user=user).first()
    return None if row is None else (row.default_model, row.task_defaults, row.favourites)


def test_it_round_trips_preferences(client, user):
    assert client.get("/api/preferences/").json() == EMPTY

    put = client.put("/api/preferences/", {"default_model": "demo-backup", "task_defaults": {"translation": "demo"},
                                           "favourites": ["demo", "demo-backup", "demo"]}, format="json")

    expected = {"default_model": "demo-backup",
                "task_defaults": {"generation": None, "translation": "demo", "code": None},
                "favourites": ["demo", "demo-backup"]}
    assert put.status_code == 200, put.content
    assert put.json() == expected
    assert client.get("/api/preferences/").json() == expected

    patched = client.patch("/api/preferences/", {"favourites": []}, format="json")
    assert patched.json() == {**expected, "favourites": []}

    cleared = client.put("/api/preferences/", {}, format="json")
    assert cleared.json() == EMPTY
    assert stored(user) == ("", {}, [])


def test_it_accepts_the_users_own_model_and_marks_it_the_default(client, user):
    own_model(user, "mine")

    response = client.patch("/api/preferences/", {"default_model": "mine", "task_defaults": {"code": "mine"}},
                            format="json")

    assert response.status_code == 200, response.content
    listed = client.get("/api/models/").json()
    assert listed["default_model"] == "mine"
    assert [model["id"] for model in listed["models"] if model["is_default"]] == ["mine"]
    assert client.get("/api/models/mine/").json()["is_default"] is True
    assert client.get("/api/models/demo/").json()["is_default"] is False


@pytest.mark.parametrize(("body", "fields", "status"), [
    ({"default_model": "demo-pro"}, {"default_model": ["The model 'demo-pro' requires the Pro tier or higher; "
                                                       "your tier is Free."]}, 403),
    ({"task_defaults": {"generation": "gpt-5-pro"}},
     {"task_defaults": {"generation": ["The model 'gpt-5-pro' requires the Premium tier or higher; your tier is Free."]}}, 403),
    ({"favourites": ["demo", "demo-premium"]},
     {"favourites": {"1": ["The model 'demo-premium' requires the Premium tier or higher; your tier is Free."]}}, 403),
    ({"default_model": "no-such-model"}, {"default_model": ["The model 'no-such-model' does not exist."]}, 404),
    ({"default_model": "theirs"}, {"default_model": ["The model 'theirs' does not exist."]}, 404),
    ({"task_defaults": {"poetry": "demo"}}, {"task_defaults": {"poetry": ["Unknown field."]}}, 400),
    ({"favorites": ["demo"]}, {"favorites": ["Unknown field."]}, 400),
    ({"default_model": "m" * 101}, None, 400),
    ({"favourites": "demo"}, None, 400),
])
@pytest.mark.parametrize("method", ["put", "patch"])
def test_it_refuses_a_model_the_user_may_not_use_naming_the_field_and_saves_nothing(
    client, user, make_user, method, body, fields, status
):
    own_model(make_user("someone-else", tier="enterprise"), "theirs")
    client.put("/api/preferences/", {"default_model": "demo", "favourites": ["demo-backup"]}, format="json")
    before = stored(user)

    response = getattr(client, method)("/api/preferences/", body, format="json")

    assert response.status_code == status, response.content  # 404/403: what a request naming the model gets
    error = response.json()["error"]
    if fields is None:
        assert set(error["fields"]) == set(body)
    else:
        assert error["fields"] == fields
    assert stored(user) == before
    assert preferences_get(user.pk).default_model == "demo"


def test_it_is_read_without_a_query_once_warm(client, user, django_assert_num_queries):
    client.put("/api/preferences/", {"default_model": "demo-backup"}, format="json")
    client.get("/api/preferences/")

    with django_assert_num_queries(0):
        assert client.get("/api/preferences/").json()["default_model"] == "demo-backup"
        assert preferences_get(user.pk).preferred_order("generation") == ("demo-backup",)
        # The async read of a warm memo does not even wait: the coroutine finishes on its first step.
        step = apreferences_get(user.pk)
        with pytest.raises(StopIteration) as finished:
            step.send(None)
    assert finished.value.value.default_model == "demo-backup"


def test_it_forgets_the_memo_on_any_change(client, user):
    assert preferences_get(user.pk).default_model == ""
    client.patch("/api/preferences/", {"default_model": "demo-backup"}, format="json")
    assert preferences_get(user.pk).default_model == "demo-backup"
    assert asyncio.run(apreferences_get(user.pk)).default_model == "demo-backup"


def test_it_forgets_a_deleted_own_model(client, user):
    own_model(user, "mine")
    client.put("/api/preferences/", {"default_model": "mine", "task_defaults": {"generation": "mine",
                                     "translation": "demo"}, "favourites": ["mine", "demo"]}, format="json")

    assert client.delete("/api/models/mine/").status_code == 204

    assert client.get("/api/preferences/").json() == {
        "default_model": None, "task_defaults": {"generation": None, "translation": "demo", "code": None},
        "favourites": ["demo"]}


# --- Used by generation at once --------------------------------------------------------------------------

@pytest.fixture
def live_user(live_hub, make_user, api_key_for):
    user = make_user("live-prefs", tier="free")
    return user, {"Authorization": f"Bearer {api_key_for(user)}"}


def set_preferences(live_hub: str, headers: dict, method: str = "put", **body) -> None:
    response = httpx2.request(method.upper(), f"{live_hub}/api/preferences/", json=body, headers=headers)
    assert response.status_code == 200, response.text


def answered_by(live_hub: str, headers: dict) -> dict[str, str]:
    """Which model answered a request naming none, on each endpoint."""
    messages = [{"role": "user", "content": "hello"}]
    chat = httpx2.post(f"{live_hub}/v1/chat/completions", json={"messages": messages}, headers=headers, timeout=10)
    with httpx2.stream("POST", f"{live_hub}/v1/chat/completions", json={"messages": messages, "stream": True},
                       headers=headers, timeout=10) as stream:
        stream.read()
    generated = httpx2.post(f"{live_hub}/api/generate/", json={"prompt": "hello"}, headers=headers, timeout=10)
    translated = httpx2.post(f"{live_hub}/api/translate/", json={"text": "hello", "target_language": "fr"},
                             headers=headers, timeout=20)
    for response in (chat, stream, generated, translated):
        assert response.status_code == 200, response.text
    return {"v1": chat.headers["x-llmhub-model"], "v1_stream": stream.headers["x-llmhub-model"],
            "generate": generated.json()["model"], "translate": translated.json()["model"]}


def test_it_uses_the_preferences_at_once_when_no_model_is_given(live_hub, live_user, api_key_for):
    user, headers = live_user
    assert set(answered_by(live_hub, headers).values()) == {"demo"}  # the free tier's default

    set_preferences(live_hub, headers, default_model="demo-backup")
    assert set(answered_by(live_hub, headers).values()) == {"demo-backup"}

    set_preferences(live_hub, headers, "patch", task_defaults={"generation": "demo", "translation": "demo-backup"})
    assert answered_by(live_hub, headers) == {"v1": "demo", "v1_stream": "demo", "generate": "demo",
                                              "translate": "demo-backup"}

    sdk = openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(user), max_retries=0, timeout=10)
    explicit = sdk.chat.completions.with_raw_response.create(model="demo-backup",
                                                             messages=[{"role": "user", "content": "hi"}])
    assert explicit.headers["x-llmhub-model"] == "demo-backup"  # a named model beats any preference


def test_it_falls_back_to_the_tier_default_when_a_preference_is_no_longer_allowed(live_hub, make_user, api_key_for):
    user = make_user("downgraded", tier="pro")
    headers = {"Authorization": f"Bearer {api_key_for(user)}"}
    set_preferences(live_hub, headers, default_model="demo-pro")
    assert answered_by(live_hub, headers)["v1"] == "demo-pro"

    user_tier_set(user=user, tier_slug="free")

    assert set(answered_by(live_hub, headers).values()) == {"demo"}


def test_it_uses_the_users_default_when_the_task_default_cannot_be_used(live_hub, live_user, settings,
                                                                         simulated_upstream):
    # "Task default, else your default, else the tier's" (issue 16, item 13): a disabled task default falls to the
    # user's own default, not past it to the tier's.
    settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": [f"127.0.0.1:{simulated_upstream.port}"]}
    user, headers = live_user
    for slug in ("px", "py"):
        own_model(user, slug, base_url=simulated_upstream.base_url)
    set_preferences(live_hub, headers, default_model="py", task_defaults={"generation": "px", "translation": "px"})
    assert set(answered_by(live_hub, headers).values()) == {"px"}

    disabled = httpx2.patch(f"{live_hub}/api/models/px/", json={"enabled": False}, headers=headers)
    assert disabled.status_code == 200, disabled.text

    assert set(answered_by(live_hub, headers).values()) == {"py"}
