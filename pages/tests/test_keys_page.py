"""The /keys/ page without a browser: login required, the secret in the creating answer only (never stored, never
shown again), the API's refusals beside their fields with nothing written, another user's key as 404."""

import hashlib
from decimal import Decimal

import pytest

from registry.models import ApiKey, QuotaLimit, Tier
from registry.services import api_key_create


@pytest.fixture
def user(registry, make_user):
    return make_user("page-keys", tier="free")


def test_it_requires_a_login(client, registry):
    for path in ("/keys/", "/keys/1/revoke/"):
        answer = client.get(path)
        assert answer.status_code == 302 and answer["Location"].startswith("/accounts/login/")
    assert client.post("/keys/", {"name": "x"}).status_code == 302
    assert not ApiKey.objects.exists()


def test_it_creates_a_key_showing_its_secret_once(page_client, user):
    client = page_client(user)

    created = client.post("/keys/", {"name": "ci", "expires_in": "30", "limits-0-limit": "100",
                                     "limits-0-metric": "requests", "limits-0-period": "day"})

    assert created.status_code == 200
    assert created["Cache-Control"] == "no-store"
    api_key = ApiKey.objects.get(user=user)
    text = created.content.decode()
    secret = text.split('id="new-key" value="', 1)[1].split('"', 1)[0]
    assert hashlib.sha256(secret.encode()).hexdigest() == api_key.key_hash  # the shown value is the key
    assert api_key.expires_at is not None and api_key.name == "ci"
    assert [(row.metric, row.period, row.limit) for row in api_key.limits.all()] == [("requests", "day", 100)]
    assert "Copy it now" in text

    listed = client.get("/keys/").content.decode()
    assert secret not in listed and api_key.key_hash not in listed
    assert api_key.prefix in listed and "100 requests per day" in listed
    assert client.session.items() and secret not in repr(dict(client.session.items()))


def test_it_shows_the_apis_refusals_beside_the_fields_and_writes_nothing(page_client, user):
    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="cost", period="month", limit=Decimal(5))
    client = page_client(user)

    above = client.post("/keys/", {"name": "big", "limits-2-limit": "9", "limits-2-metric": "cost",
                                   "limits-2-period": "month"})
    fractional = client.post("/keys/", {"limits-0-limit": "1.5", "limits-0-metric": "requests",
                                        "limits-0-period": "day"})
    bad_expiry = client.post("/keys/", {"expires_in": "3"})

    assert above.status_code == fractional.status_code == bad_expiry.status_code == 400
    assert "Limit 1: cost per month: 9 is above the owner&#x27;s limit of 5." in above.content.decode()
    assert 'value="9"' in above.content.decode() and 'value="big"' in above.content.decode()  # kept to fix
    assert "Limit 1: limit: a requests limit must be a whole number" in fractional.content.decode()
    assert "Choose one of the offered expiries." in bad_expiry.content.decode()
    assert not ApiKey.objects.exists()


def test_it_revokes_after_confirmation_and_hides_other_users_keys(page_client, user, make_user):
    mine, _ = api_key_create(user=user, name="mine")
    theirs, _ = api_key_create(user=make_user("page-keys-other"), name="theirs")
    client = page_client(user)

    assert client.get(f"/keys/{theirs.pk}/revoke/").status_code == 404
    assert client.post(f"/keys/{theirs.pk}/revoke/").status_code == 404
    assert "theirs" not in client.get("/keys/").content.decode()
    confirm = client.get(f"/keys/{mine.pk}/revoke/")
    assert confirm.status_code == 200 and "Revoke mine?" in confirm.content.decode()
    assert ApiKey.objects.get(pk=mine.pk).revoked_at is None  # asking is not revoking

    done = client.post(f"/keys/{mine.pk}/revoke/", follow=True)

    assert "Revoked mine" in done.content.decode()
    assert ApiKey.objects.get(pk=mine.pk).revoked_at is not None
    assert ApiKey.objects.get(pk=theirs.pk).revoked_at is None
