"""POST /api/translate/ over real HTTP (ASGI, as in production) against the simulated upstream, which echoes
the user message: "Simulated reply from <model>: <text>"."""

import re

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
