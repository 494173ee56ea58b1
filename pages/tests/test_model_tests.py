"""Connectivity tests from the pages: a Test button POSTs, the page polls the test until it finishes; the history
lists recent tests. As in the API, anyone tests their own models and only staff test registry models. The tests
run on a real Celery worker in a thread."""

import time

import pytest

from health.models import ModelTest
from pages.tests.conftest import own_model

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("celery_worker")]


def followed(client, started) -> dict:
    """The test's state as the page polls it, once finished."""
    deadline = time.monotonic() + 30
    body = started.json()
    while not body["finished"] and time.monotonic() < deadline:
        time.sleep(0.1)
        body = client.get(body["url"]).json()
    return body


def test_it_starts_a_test_of_an_own_model_and_reports_its_result(registry, make_user, page_client, allow_simulator,
                                                                  simulated_upstream):
    user = make_user("tess")
    model = own_model(user, base_url=allow_simulator, slug="mine")
    client = page_client(user)
    simulated_upstream.set_fault("demo", "latency=300")  # the answer is still on its way when the POST returns

    started = client.post("/models/mine/mine/tests/")

    assert started.status_code == 202
    assert started.json()["state"] in ("queued", "running") and "checking…" in started.json()["html"]
    test = ModelTest.objects.get(user_model=model)
    assert test.requested_by == user
    body = followed(client, started)
    assert (body["id"], body["state"], body["finished"], body["ref"]) == (test.pk, "succeeded", True, "mine/mine")
    for text in ("Test succeeded", 'data-check="reachable" data-value="yes"', 'data-check="key_accepted" data-value="yes"',
                 'data-check="model_found" data-value="yes"', 'data-check="streaming" data-value="yes"', " ms</b>"):
        assert text in body["html"]
    assert f'<tr data-test-id="{test.pk}">' in body["row"]
    history = client.get("/models/mine/mine/tests/").content.decode()
    assert f'<tr data-test-id="{test.pk}">' in history and 'data-test-url="/models/mine/mine/tests/"' in history
    assert client.get("/models/status/").json()["models"]["mine/mine"]["status"] == "healthy"


def test_it_reports_a_rejected_key(registry, make_user, page_client, allow_simulator):
    user = make_user("tess")
    own_model(user, base_url=allow_simulator, slug="mine", key="sk-sim-invalid")
    client = page_client(user)

    body = followed(client, client.post("/models/mine/mine/tests/"))

    assert body["state"] == "failed"
    assert 'data-check="key_accepted" data-value="no"' in body["html"] and "key rejected" in body["html"]
    assert client.get("/models/status/").json()["models"]["mine/mine"]["status"] == "down"


def test_it_lets_only_staff_test_registry_models(registry, make_user, page_client):
    client = page_client(make_user("tess", tier="enterprise"))
    assert client.post("/models/registry/demo/tests/").status_code == 404
    assert client.get("/models/registry/demo/tests/").status_code == 404
    assert b"data-test-url" not in client.get("/models/").content
    assert not ModelTest.objects.exists()

    staff = page_client(make_user("root", tier="free", is_staff=True))
    started = staff.post("/models/registry/demo/tests/")
    assert started.status_code == 202
    assert b'data-test-url="/models/registry/demo/tests/"' in staff.get("/models/").content

    test_url = started.json()["url"]
    assert page_client(make_user("tess2", tier="enterprise")).get(test_url).status_code == 404


def test_it_hides_another_users_test(registry, make_user, page_client, allow_simulator):
    owner = make_user("owner")
    own_model(owner, base_url=allow_simulator, slug="mine")
    test_url = page_client(owner).post("/models/mine/mine/tests/").json()["url"]

    assert page_client(make_user("tess", is_staff=True)).get(test_url).status_code == 404
