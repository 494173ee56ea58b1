"""The pages in a real browser (Debian's headless Chromium through Playwright) against the whole ASGI app and the
simulated upstream. Each test leaves screenshots in test-results/ (look at them: the pages must stay tidy)."""

import re

import httpx2
import pytest
from playwright.sync_api import expect

from conftest import usage_rows
from health.status import health_note
from pages.tests.conftest import assert_not_reloaded, dot, log_in, mark_page, own_model, screenshot
from registry.models import UserLLMConfig, UserModelPreferences

pytestmark = pytest.mark.browser

RED = "rgb(211, 47, 47)"  # --llmhub-down


def test_it_logs_in_and_picks_a_default_model_that_the_api_uses(page, live_hub, make_user, api_key_for):
    user = make_user("dora", tier="pro")

    log_in(page, user, shot="login")

    expect(page.locator(".site-header")).to_contain_text("dora")
    expect(page.locator(".site-header .tier")).to_have_text("Pro tier")
    page.get_by_label("Default model").select_option("demo-backup")
    page.get_by_label("Code").select_option("qwen3-coder-plus")
    page.get_by_role("button", name="Save defaults").click()
    expect(page.get_by_text("Your defaults are saved.")).to_be_visible()
    expect(page.get_by_label("Default model")).to_have_value("demo-backup")
    expect(page.locator('tr[data-model-ref="registry/demo-backup"] .badge')).to_have_text("default")
    screenshot(page, "models-picker")

    assert UserModelPreferences.objects.get(user=user).default_model == "demo-backup"
    headers = {"Authorization": f"Bearer {api_key_for(user)}"}
    with httpx2.Client(base_url=live_hub, headers=headers, timeout=30) as api:
        assert api.get("/api/models/").json()["default_model"] == "demo-backup"
        assert api.post("/api/generate/", json={"prompt": "hi"}).json()["model"] == "demo-backup"
        completion = api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert completion.headers["x-llmhub-model"] == "demo-backup"
    assert [row.answered_model for row in usage_rows(2)] == ["demo-backup", "demo-backup"]


def test_it_adds_edits_and_deletes_an_own_model_showing_field_errors(page, make_user, allow_simulator):
    user = make_user("olga")
    log_in(page, user)
    page.get_by_role("link", name="My models").click()
    expect(page.get_by_role("heading", name="My models")).to_be_visible()

    page.get_by_label("Model id").fill("mine")
    page.get_by_label("Display name").fill("My model")
    page.get_by_label("Base URL").fill("not a url")
    page.get_by_label("Upstream model name").fill("demo")
    page.get_by_label("API key").fill("sk-browser-key-0001")
    page.get_by_role("button", name="Add model").click()

    base_url = page.get_by_label("Base URL")
    expect(base_url).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#id_base_url_help")).to_have_text(
        "Enter a valid URL. Give the endpoint's full address, e.g. https://api.example.com/v1.")
    expect(page.get_by_label("API key")).to_have_value("")  # never sent back, not even the key just typed
    expect(page.locator("[data-key-retype]")).to_contain_text("type it again")
    expect(page.get_by_label("Model id")).to_have_value("mine")
    screenshot(page, "own-models-field-error")

    base_url.fill(allow_simulator)
    page.get_by_label("API key").fill("sk-browser-key-0001")
    page.get_by_role("button", name="Add model").click()
    expect(page.get_by_text("Added My model.")).to_be_visible()
    expect(page.locator('[id="test-mine/mine"]')).to_contain_text("Test succeeded")  # tested right after adding
    row = page.locator('tr[data-model-ref="mine/mine"]')
    expect(row).to_contain_text("My model")
    expect(row).to_contain_text("set")
    screenshot(page, "own-models")

    row.get_by_role("link", name="Edit My model").click()
    expect(page.get_by_label("Replace API key")).to_have_value("")
    page.get_by_label("Upstream model name").fill("dmeo")
    page.get_by_role("button", name="Fetch models").click()  # with the stored key: the base URL is unchanged
    expect(page.locator("[data-fetch-models-status]")).to_contain_text(re.compile(r'\d+ models: .*demo.*"dmeo" is not'))
    assert "demo-backup" in page.locator("#endpoint-models option").evaluate_all("options => options.map(o => o.value)")
    page.get_by_label("Upstream model name").fill("demo")
    page.get_by_label("Display name").fill("My renamed model")
    page.get_by_label("Context window (tokens)").fill("32000")
    screenshot(page, "own-model-edit")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Saved My renamed model.")).to_be_visible()
    expect(page.locator('tr[data-model-ref="mine/mine"]')).to_contain_text("My renamed model")
    assert UserLLMConfig.objects.get(owner=user).context_window == 32000

    page.get_by_role("link", name="Delete My renamed model").click()
    expect(page.get_by_role("heading", name="Delete My renamed model?")).to_be_visible()
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("Deleted My renamed model.")).to_be_visible()
    expect(page.locator('tr[data-model-ref="mine/mine"]')).to_have_count(0)
    assert not UserLLMConfig.objects.filter(owner=user).exists()


def test_it_runs_a_connectivity_test_and_shows_its_progress_and_result_without_a_reload(
        page, make_user, allow_simulator, simulated_upstream, celery_worker):
    user = make_user("tess")
    own_model(user, base_url=allow_simulator, slug="mine", display_name="My model")
    simulated_upstream.set_fault("demo", "latency=400")  # a slow upstream: the test takes a few seconds
    log_in(page, user)
    page.goto("/models/mine/")
    expect(dot(page, "mine/mine")).to_have_attribute("data-status", "unknown")
    mark_page(page)

    page.get_by_role("button", name="Test My model").click()

    result = page.locator('[id="test-mine/mine"]')
    expect(result).to_contain_text(re.compile(r"Test (queued|running) checking…"))
    expect(page.get_by_role("button", name="Test My model")).to_be_disabled()
    screenshot(page, "model-test-progress")
    expect(result).to_contain_text("Test succeeded")
    for check in ("Reachable: yes", "Key accepted: yes", "Model found: yes", "chat: yes", "streaming: yes",
                  "json_mode: yes", "tools: yes"):
        expect(result).to_contain_text(check)
    expect(result).to_contain_text(re.compile(r"Latency: \d+ ms"))
    expect(dot(page, "mine/mine")).to_have_attribute("data-status", "healthy")
    expect(page.get_by_role("button", name="Test My model")).to_be_enabled()
    assert_not_reloaded(page)
    screenshot(page, "model-test-result")

    page.get_by_role("link", name="Test history of My model").click()
    expect(page.locator("[data-test-history] tr")).to_have_count(1)
    mark_page(page)
    page.get_by_role("button", name="Test My model").focus()  # a real button: the keyboard starts it too
    page.keyboard.press("Enter")
    expect(page.locator("[data-test-history] tr")).to_have_count(2)
    expect(page.locator("[data-test-history] tr").first).to_contain_text("succeeded")
    assert_not_reloaded(page)
    screenshot(page, "model-test-history")


def test_it_turns_a_status_dot_red_without_a_reload(page, live_hub, make_user, api_key_for, simulated_upstream):
    user = make_user("stan", tier="free")
    log_in(page, user)
    demo = dot(page, "registry/demo")
    expect(demo).to_have_attribute("data-status", "unknown")
    mark_page(page)

    simulated_upstream.set_fault("demo", "status=500")
    with httpx2.Client(base_url=live_hub, headers={"Authorization": f"Bearer {api_key_for(user)}"}, timeout=30) as api:
        for _ in range(3):  # live traffic: each request falls back to demo-backup, demo's failures count
            response = api.post("/v1/chat/completions", json={"model": "demo", "messages": [
                {"role": "user", "content": "hi"}]})
            assert response.headers["x-llmhub-model"] == "demo-backup"

    expect(demo).to_have_attribute("data-status", "down")
    assert demo.locator(".status-dot").evaluate("element => getComputedStyle(element).backgroundColor") == RED
    expect(demo).to_have_attribute("title", re.compile(r"^Down"))
    expect(dot(page, "registry/demo-backup")).not_to_have_attribute("data-status", "down")
    assert_not_reloaded(page)
    screenshot(page, "status-down")
    assert len(usage_rows(3)) == 3


def answer_of(page, number: int = -1):
    """The text of an answer in the playground's conversation (the last one by default)."""
    return page.locator('.pg-turn[data-role="assistant"] .pg-text').nth(number)


def test_it_streams_an_answer_in_the_playground_and_names_a_fallback(page, make_user, simulated_upstream):
    user = make_user("pat", tier="free")
    log_in(page, user)
    page.get_by_role("link", name="Playground").click()
    expect(page.locator("#id_model option[value=demo-premium]")).to_have_count(0)  # only allowed models
    expect(page.locator("#id_model option").first).to_have_text("Your default: Demo (simulated)")  # resolved

    simulated_upstream.set_fault("demo", "chunk_delay=150")
    page.get_by_label("Model").select_option("demo")
    page.get_by_role("textbox", name="Message").fill("tell me about streaming answers")
    page.get_by_role("button", name="Send").click()

    # Part of the answer is on the page while the rest is still on its way.
    page.wait_for_function("() => { const text = document.querySelector('[data-answer]')?.textContent || '';"
                           " return text.length > 0 && !text.endsWith('answers'); }")
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    expect(answer_of(page)).to_have_text("Simulated reply from demo: tell me about streaming answers")
    expect(page.locator('[data-stat="model"]')).to_have_text("Demo (simulated) · demo")
    expect(page.locator('[data-stat="tokens"]')).to_have_text(re.compile(r"^\d+ / 9$"))
    expect(page.locator('[data-stat="cost"]')).to_have_text(re.compile(r"^\$0\.0+\d+$"))
    expect(page.locator('[data-stat="latency"]')).to_have_text(re.compile(r"^\d+ ms \(first token \d+ ms\)$"))
    expect(page.locator("[data-fallback]")).to_be_hidden()
    expect(page.locator('[data-stat="route"]')).to_have_text("explicit: explicit")
    page.get_by_text("Why this model").click()
    expect(page.locator("[data-route-list]")).to_contain_text("demo-backup: fallback (fallback 1)")
    expect(page.locator("[data-route-list]")).to_contain_text("demo-pro: skipped (tier: needs pro)")
    screenshot(page, "playground")

    simulated_upstream.set_fault("demo", "status=500")
    page.get_by_role("textbox", name="Message").fill("hi")
    page.get_by_role("button", name="Send").click()
    expect(answer_of(page)).to_have_text("Simulated reply from demo-backup: hi")
    fallback = page.locator("[data-fallback]")
    expect(fallback).to_be_visible()
    expect(fallback).to_contain_text("demo failed; demo-backup answered instead.")
    expect(fallback).to_contain_text(re.compile(r"demo failed \(HTTP 500, \w+"))
    expect(page.locator('[data-stat="model"]')).to_have_text("Demo backup (simulated) · demo-backup")
    screenshot(page, "playground-fallback")

    page.get_by_role("radio", name="Translate").check()
    expect(page.locator("#id_model option").first).to_have_text("Your default: Demo (simulated)")
    page.get_by_label("Text to translate").fill("Good morning")
    page.get_by_label("Target language").fill("fr")
    page.get_by_role("button", name="Send").click()
    expect(answer_of(page)).to_contain_text("Good morning")
    expect(page.locator('[data-stat="tokens"]')).not_to_have_text("–")
    assert [row.endpoint for row in usage_rows(3)] == ["pages.playground", "pages.playground", "pages.playground"]


def test_it_chats_over_several_turns_with_a_system_prompt_and_settings_and_shows_the_code(
        sized_page, make_user, simulated_upstream):
    page = sized_page
    user = make_user("cleo", tier="free")
    log_in(page, user)
    page.goto("/playground/")
    page.get_by_label("System prompt").fill("Be brief.")
    page.get_by_label("Max tokens").fill("6")
    page.get_by_label("Temperature").fill("0.2")
    message = page.get_by_role("textbox", name="Message")
    message.fill("one two")
    message.press("Control+Enter")  # the keyboard sends
    expect(answer_of(page)).to_have_text("Simulated reply from demo: one two")
    message.fill("three four five six")
    message.press("Control+Enter")
    # The second turn carries the first: the simulator echoes the last user message, cut at max tokens (6 words).
    expect(answer_of(page)).to_have_text("Simulated reply from demo: three four")
    expect(page.locator(".pg-turn")).to_have_count(4)
    first, second = usage_rows(2)
    # Input tokens are the words of every message sent: the system prompt, then the whole conversation.
    assert first.input_tokens == 4 and second.input_tokens == 4 + 6 + 4
    assert second.output_tokens == 6

    page.get_by_text("View code").click()
    code = page.locator("[data-code-text]")
    expect(code).to_contain_text("curl http://")
    expect(code).to_contain_text("/v1/chat/completions")
    expect(code).to_contain_text('"model": "demo"')
    expect(code).to_contain_text("Bearer lh-YOUR-API-KEY")
    page.get_by_role("button", name="Python (openai)").click()
    expect(code).to_contain_text('client = OpenAI(base_url="http://')
    expect(code).to_contain_text("max_tokens=6,")
    expect(code).to_contain_text("temperature=0.2,")
    expect(code).to_contain_text('"content": "Be brief."')
    page.get_by_role("button", name="JavaScript").click()
    expect(code).to_contain_text('import OpenAI from "openai";')
    screenshot(page, f"playground-chat-{page.size}")

    page.get_by_role("button", name="New chat").click()
    expect(page.locator(".pg-turn")).to_have_count(0)


def test_it_stops_a_stream_and_the_usage_log_records_it(page, make_user, simulated_upstream):
    user = make_user("stef", tier="free")
    log_in(page, user)
    page.goto("/playground/")
    simulated_upstream.set_fault("demo", "chunk_delay=250")
    page.get_by_role("textbox", name="Message").fill(" ".join(f"word{n}" for n in range(40)))
    page.get_by_role("button", name="Send").click()
    page.wait_for_function("() => (document.querySelector('[data-answer]')?.textContent || '').includes('word1')")
    page.get_by_role("button", name="Stop").click()

    turn = page.locator('.pg-turn[data-role="assistant"]')
    expect(turn).to_contain_text("Stopped")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    shown = answer_of(page).text_content()
    assert "word39" not in shown
    [row] = usage_rows(1)
    assert (row.status, row.error_type, row.streamed) == ("partial", "client_disconnected", True)
    assert 0 < row.output_tokens < 44
    screenshot(page, "playground-stopped")


def test_it_explains_errors_in_plain_words(page, make_user, simulated_upstream):
    user = make_user("emil", tier="free")
    log_in(page, user)
    page.goto("/playground/")
    error = page.locator("[data-answer-error]")

    page.get_by_role("button", name="Send").click()  # nothing typed
    expect(error).to_have_text("Type a message first.")

    page.get_by_label("Temperature").fill("7")
    page.get_by_role("textbox", name="Message").fill("hi")
    page.get_by_role("button", name="Send").click()
    expect(error).to_have_text("Temperature: Ensure this value is less than or equal to 2.")
    expect(page.get_by_role("textbox", name="Message")).to_have_value("hi")  # kept to retry
    expect(page.locator(".pg-turn")).to_have_count(0)
    page.get_by_label("Temperature").fill("")

    simulated_upstream.set_fault("demo-backup", "status=500")
    page.get_by_label("Model").select_option("demo-backup")
    page.get_by_role("button", name="Send").click()
    expect(error).to_have_text("No model could answer. See below what was tried.")
    expect(page.locator("[data-log-empty]")).to_be_visible()  # the failed turn is taken back, the log is as it was
    fallback = page.locator("[data-fallback]")
    expect(fallback).to_contain_text("one model was tried, demo-backup, and it failed; no other model could take over.")
    expect(fallback).not_to_contain_text("Every model failed")
    screenshot(page, "playground-error")


def test_it_greys_models_above_the_tier_and_refuses_them_server_side(page, make_user):
    user = make_user("fred", tier="free")
    log_in(page, user)

    premium = page.locator('tr[data-model-ref="registry/demo-premium"]')
    expect(premium).to_have_class("locked")
    expect(premium).to_contain_text("Requires Premium")
    assert premium.locator("td").first.evaluate("element => getComputedStyle(element).color") != \
        page.locator('tr[data-model-ref="registry/demo"] td').first.evaluate("element => getComputedStyle(element).color")
    option = page.locator('#id_default_model option[value="demo-premium"]')
    expect(option).to_be_disabled()
    expect(option).to_have_text("Demo Premium (simulated) · requires Premium")
    screenshot(page, "models-picker-free-tier")

    # A hand-made request (the option enabled behind the page's back) is refused by the server.
    option.evaluate("element => { element.disabled = false; }")
    page.get_by_label("Default model").select_option("demo-premium")
    page.get_by_role("button", name="Save defaults").click()
    expect(page.locator("#id_default_model_errors")).to_have_text(
        "The model 'demo-premium' requires the Premium tier or higher; your tier is Free.")
    expect(page.get_by_label("Default model")).to_have_attribute("aria-invalid", "true")
    assert not UserModelPreferences.objects.filter(user=user).exists()
    screenshot(page, "models-picker-refused")


def test_it_filters_the_models_and_asks_before_saving_a_down_default(sized_page, make_user, registry):
    page = sized_page
    user = make_user("dina", tier="free")
    log_in(page, user)
    rows = page.locator("tr[data-model-ref]")
    expect(rows.first).to_be_visible()
    total = rows.count()

    page.get_by_label("Search").fill("backup")
    expect(page.locator("tr[data-model-ref]:visible")).to_have_count(1)
    expect(page.locator('tr[data-model-ref="registry/demo-backup"]')).to_be_visible()
    expect(page.locator("[data-filter-count]")).to_have_text(f"1 of {total} models shown")
    page.get_by_label("Search").fill("")
    page.get_by_label("Only models I can use").check()
    expect(page.locator('tr[data-model-ref="registry/demo-premium"]')).to_be_hidden()
    page.get_by_label("Provider").select_option("DeepSeek")
    expect(page.locator("tr[data-model-ref]:visible")).to_have_count(1)
    expect(page.get_by_role("cell", name="Simulated upstream (local)")).to_be_hidden()  # its whole group
    page.get_by_label("Capability").select_option("vision")
    expect(page.locator("[data-filter-empty]")).to_be_visible()
    screenshot(page, f"models-filtered-{page.size}")
    page.get_by_label("Provider").select_option("")
    page.get_by_label("Capability").select_option("")
    page.get_by_label("Only models I can use").uncheck()
    expect(rows.locator("visible=true")).to_have_count(total)

    for _ in range(3):  # three failures in a row: demo-backup is Down, and the page shows it without a reload
        health_note(registry.models["demo-backup"], ok=False)
    backup_option = page.locator('#id_default_model option[value="demo-backup"]')
    expect(backup_option).to_have_text("Demo backup (simulated) · down · $0.25 / $0.75")
    page.get_by_label("Status").select_option("down")
    expect(page.locator("tr[data-model-ref]:visible")).to_have_count(1)

    page.get_by_label("Default model").select_option("demo-backup")
    page.get_by_role("button", name="Save defaults").click()
    warning = page.locator("[data-down-warning]")
    expect(warning).to_contain_text("Demo backup (simulated) is down")
    expect(page.get_by_label("Default model")).to_have_value("demo-backup")
    assert not UserModelPreferences.objects.filter(user=user).exists()
    screenshot(page, f"models-down-warning-{page.size}")
    page.get_by_role("button", name="Save anyway").click()
    expect(page.get_by_text("Your defaults are saved.")).to_be_visible()
    assert UserModelPreferences.objects.get(user=user).default_model == "demo-backup"
