"""POST /api/translate/ over real HTTP (ASGI, as in production) against the simulated upstream, which echoes
the user message: "Simulated reply from <model>: <text>"."""

import re
from decimal import Decimal

import httpx2
import pytest

from conftest import usage_rows


@pytest.fixture
def translate(live_hub, api_key_for, free_user):
    key = api_key_for(free_user)

    def post(payload: dict) -> httpx2.Response:
        return httpx2.post(f"{live_hub}/api/translate/", json=payload, headers={"Authorization": f"Bearer {key}"},
                           timeout=20)

    return post


def assert_nothing_forwarded_or_logged(simulated_upstream) -> None:
    from usage.models import UsageLog
    from usage.services import usage_flush

    usage_flush()
    assert sum(simulated_upstream.stats().values()) == 0
    assert not UsageLog.objects.exists()


def numbered_paragraphs(count: int) -> str:
    return "\n\n".join(f"Paragraph {n} tells the story of item number {n} in a few plain words." for n in range(count))


def test_it_translates_a_text(translate, simulated_upstream):
    response = translate({"text": "Good morning, world.", "target_language": "fr"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert "Good morning, world." in body["text"]
    assert (body["model"], body["target_language"], body["source_language"], body["pieces"]) == ("demo", "fr", None, 1)
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    assert simulated_upstream.stats() == {"demo": 1}
    [row] = usage_rows(1)
    assert (row.endpoint, row.answered_model, row.request_id, row.status) == (
        "api.translate", "demo", body["request_id"], "ok")


def test_it_normalises_language_tags(translate):
    body = translate({"text": "Hi.", "target_language": "pt-br", "source_language": "en-us"}).json()

    assert (body["target_language"], body["source_language"]) == ("pt-BR", "en-US")


@pytest.mark.parametrize("field", ["target_language", "source_language"])
@pytest.mark.parametrize("tag", ["xx-!!", "english", "", "xx"])
def test_it_refuses_an_invalid_language_tag_naming_the_field(translate, simulated_upstream, field, tag):
    payload = {"text": "Hi.", "target_language": "fr", field: tag}

    response = translate(payload)

    assert response.status_code == 400, response.text
    assert list(response.json()["error"]["fields"]) == [field]
    assert_nothing_forwarded_or_logged(simulated_upstream)


@pytest.mark.parametrize("payload, field", [
    ({"text": "   ", "target_language": "fr"}, "text"),
    ({"target_language": "fr"}, "text"),
    ({"text": "Hi."}, "target_language"),
    ({"text": "Hi.", "target_language": "fr", "temperature": 1}, "temperature"),
])
def test_it_refuses_missing_blank_and_unknown_fields_naming_them(translate, simulated_upstream, payload, field):
    response = translate(payload)

    assert response.status_code == 400, response.text
    assert list(response.json()["error"]["fields"]) == [field]
    assert_nothing_forwarded_or_logged(simulated_upstream)


def test_it_accepts_the_legacy_parameter_names(translate):
    response = translate({"text": "Hi there.", "target_lang": "de", "source_lang": "en", "provider": "local"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["target_language"], body["source_language"], body["model"]) == ("de", "en", "demo")
    assert "Hi there." in body["text"]
    [row] = usage_rows(1)
    assert row.requested_model == "local"


def test_it_refuses_a_model_above_the_tier(translate, simulated_upstream):
    response = translate({"text": "Hi.", "target_language": "fr", "model": "demo-premium"})

    assert response.status_code == 403
    assert response.json()["error"]["required_tier"] == "premium"
    assert_nothing_forwarded_or_logged(simulated_upstream)


def test_it_splits_a_text_longer_than_the_context_and_keeps_the_order(translate, simulated_upstream):
    from registry.models import LLMModel

    model = LLMModel.objects.get(public_id="demo")
    model.context_window = 200
    model.save()
    text = numbered_paragraphs(30)

    response = translate({"text": text, "target_language": "fr"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pieces"] > 1
    assert simulated_upstream.stats() == {"demo": body["pieces"]}
    assert body["text"].count("Simulated reply from demo:") == body["pieces"]
    assert [int(n) for n in re.findall(r"Paragraph (\d+) ", body["text"])] == list(range(30))
    [row] = usage_rows(1)
    assert (row.attempts, row.status, row.answered_model) == (body["pieces"], "ok", "demo")
    assert row.input_tokens == body["usage"]["input_tokens"] > 0


def test_it_falls_back_for_one_piece_and_still_logs_one_row(translate, simulated_upstream):
    from registry.models import LLMModel

    model = LLMModel.objects.get(public_id="demo")
    model.context_window = 200
    model.save()
    simulated_upstream.set_fault("demo", "status=500")

    response = translate({"text": numbered_paragraphs(12), "target_language": "fr"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pieces"] > 1 and body["model"] == "demo-backup"
    assert [int(n) for n in re.findall(r"Paragraph (\d+) ", body["text"])] == list(range(12))
    assert simulated_upstream.stats()["demo-backup"] == body["pieces"]
    assert len(usage_rows(1)) == 1


def test_it_logs_one_error_row_when_translation_fails(translate, simulated_upstream):
    simulated_upstream.set_fault("demo", "status=500")
    simulated_upstream.set_fault("demo-backup", "status=500")

    response = translate({"text": "Hi.", "target_language": "fr"})

    assert response.status_code == 502
    [row] = usage_rows(1)
    assert (row.status, row.http_status, row.endpoint) == ("error", 502, "api.translate")


def test_it_is_in_the_openapi_schema(live_hub):
    schema = httpx2.get(f"{live_hub}/api/schema/", params={"format": "json"}, timeout=10).json()

    assert schema["paths"]["/api/translate/"]["post"]["operationId"] == "translate"


# --- Chunks billed at their own model's price, failures mid-text (issue 16, items 11 and 12) -----------------

def small_context(public_id: str = "demo", context_window: int = 200) -> None:
    from registry.models import LLMModel

    model = LLMModel.objects.get(public_id=public_id)
    model.context_window = context_window
    model.save()


def expected_bill(text: str, *, target: str = "fr") -> tuple[list[str], int, int, Decimal]:
    """Who answered each piece of a translation of the simulator's echoes, and the exact bill: each piece's tokens
    (the simulator counts words) at the prices of the model that answered it."""
    from registry.selectors import registry_get
    from translation.services import _messages
    from usage.services import usage_cost

    models, input_tokens, output_tokens, cost = [], 0, 0, Decimal(0)
    for reply in text.split("\n\n"):
        model_id, _, piece = reply.removeprefix("Simulated reply from ").partition(": ")
        prompt = sum(len(message["content"].split()) for message in _messages(piece, target=target, source=None))
        completion = len(reply.split())
        model = registry_get().models[model_id]
        models.append(model_id)
        input_tokens, output_tokens = input_tokens + prompt, output_tokens + completion
        cost += usage_cost(input_tokens=prompt, output_tokens=completion,
                           input_price_per_million=model.input_price_per_million,
                           output_price_per_million=model.output_price_per_million)
    return models, input_tokens, output_tokens, cost


def test_it_bills_each_piece_at_the_price_of_the_model_that_answered_it(translate, simulated_upstream):
    small_context()
    text = "\n\n".join(f"Paragraph {n} " + "word " * 40 for n in range(4))
    simulated_upstream.set_fault("demo", "status=500,after=1")  # demo answers the first piece only

    response = translate({"text": text, "target_language": "fr"})

    assert response.status_code == 200, response.text
    body = response.json()
    models, input_tokens, output_tokens, cost = expected_bill(body["text"])
    assert body["pieces"] == 4 and models == ["demo", "demo-backup", "demo-backup", "demo-backup"]
    assert body["answered_by"] == models
    assert body["usage"] == {"input_tokens": input_tokens, "output_tokens": output_tokens, "estimated": False}
    assert Decimal(body["cost"]) == cost
    [row] = usage_rows(1)
    assert (row.answered_model, row.cost, row.input_tokens, row.output_tokens, row.status) == (
        "demo,demo-backup", cost, input_tokens, output_tokens, "ok")


def test_it_returns_and_bills_the_pieces_done_when_a_middle_piece_fails_on_every_model(translate, simulated_upstream):
    small_context()
    text = "\n\n".join(f"Paragraph {n} " + "word " * 40 for n in range(3))
    simulated_upstream.set_fault("demo", "status=500,after=1")
    simulated_upstream.set_fault("demo-backup", "status=500")

    response = translate({"text": text, "target_language": "fr"})

    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_failed"
    assert error["message"] == "Piece 2 of 3 could not be translated: every model failed: demo (unavailable, HTTP " \
                               "500), demo-backup (unavailable, HTTP 500). The 1 piece translated before it is in " \
                               "partial_text (and billed)."
    assert (error["pieces"], error["pieces_translated"]) == (3, 1)
    assert error["partial_text"].startswith("Simulated reply from demo: Paragraph 0 ")
    models, input_tokens, output_tokens, cost = expected_bill(error["partial_text"])
    assert error["answered_by"] == models == ["demo"] and Decimal(error["cost"]) == cost > 0
    [row] = usage_rows(1)
    assert (row.status, row.http_status, row.error_type, row.answered_model) == (
        "partial", 502, "upstream_failed", "demo")
    assert (row.cost, row.input_tokens, row.output_tokens) == (cost, input_tokens, output_tokens)


def test_it_stops_trying_first_a_model_that_just_timed_out(translate, simulated_upstream, settings):
    # With `demo` hanging, every piece used to wait the whole timeout on it again; the deadline then ended the
    # request with "Every model timed out." although demo-backup answered each piece at once.
    from registry.models import Provider

    small_context()
    Provider.objects.filter(slug="local").update(timeout_seconds=1)
    settings.LLMHUB = {**settings.LLMHUB, "GENERATION_DEADLINE_SECONDS": 4}
    simulated_upstream.set_fault("demo", "hang")
    text = "\n\n".join(f"Paragraph {n} " + "word " * 40 for n in range(6))

    response = translate({"text": text, "target_language": "fr"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answered_by"] == ["demo-backup"] * 6
    assert simulated_upstream.stats() == {"demo": 1, "demo-backup": 6}
    assert [(a["model"], a["outcome"]) for a in body["attempts"]][:2] == [("demo", "timeout"), ("demo-backup", "ok")]


def test_it_says_how_far_it_got_when_the_deadline_ends_a_translation(translate, simulated_upstream, settings):
    small_context()
    settings.LLMHUB = {**settings.LLMHUB, "GENERATION_DEADLINE_SECONDS": 2.6}
    simulated_upstream.set_fault("demo", "latency=1000")
    simulated_upstream.set_fault("demo-backup", "latency=1000")
    text = "\n\n".join(f"Paragraph {n} " + "word " * 40 for n in range(6))

    response = translate({"text": text, "target_language": "fr"})

    assert response.status_code == 504, response.text
    error = response.json()["error"]
    done = error["pieces_translated"]
    assert error["code"] == "upstream_timeout" and 1 <= done < 6
    assert error["message"].startswith(f"Piece {done + 1} of 6 could not be translated: ")
    assert "time" in error["message"]
    assert error["partial_text"].count("Simulated reply from demo:") == done
    [row] = usage_rows(1)
    assert (row.status, row.http_status, row.answered_model) == ("partial", 504, "demo")


def test_it_settles_a_cost_quota_at_each_pieces_own_price(translate, simulated_upstream, free_user):
    import asyncio

    from registry.models import QuotaLimit, Tier
    from usage.quotas import COST_UNITS, quota_status

    QuotaLimit.objects.create(tier=Tier.objects.get(slug="free"), metric="cost", period="day", limit=Decimal("100"))
    small_context()
    text = "\n\n".join(f"Paragraph {n} " + "word " * 40 for n in range(4))
    simulated_upstream.set_fault("demo", "status=500,after=1")  # demo answers the first piece only

    response = translate({"text": text, "target_language": "fr"})

    assert response.status_code == 200, response.text
    [row] = usage_rows(1)
    [cost_limit] = asyncio.run(quota_status(user_id=free_user.pk, api_key_id=None, tier_slug="free"))
    assert row.answered_model == "demo,demo-backup"
    assert (Decimal(cost_limit["used"]) / COST_UNITS, cost_limit["held"]) == (row.cost, 0), cost_limit
