"""Real clients other than the Python SDK against /v1 over real HTTP: the official openai Node SDK (run with
Debian's node, installed with npm into var/ for the tests only) and LangChain's OpenAI integrations (pinned in
requirements-dev.txt). Each call leaves one usage row with tokens and cost."""

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from conftest import usage_rows

NODE_SDK_VERSION = "7.59.0"  # the `openai` package on npm
NODE_DIR = Path(settings.BASE_DIR) / "var" / "test-node-sdk"
NODE_SCRIPT = Path(__file__).parent / "clients" / "node_sdk.mjs"


@pytest.fixture(scope="module")
def node_sdk() -> Path:
    """A folder where `import "openai"` resolves to the pinned Node SDK (installed once, kept in var/)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed (Debian's nodejs and npm packages)")
    package = NODE_DIR / "node_modules" / "openai" / "package.json"
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    # CI runs the embedded and the services suites at once: one of them installs, the other waits for it.
    with open(NODE_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _node_sdk_install(npm, package)
    shutil.copy(NODE_SCRIPT, NODE_DIR / NODE_SCRIPT.name)  # next to its node_modules, so the import resolves
    return NODE_DIR / NODE_SCRIPT.name


def _node_sdk_install(npm: str, package: Path) -> None:
    if not package.exists() or json.loads(package.read_text())["version"] != NODE_SDK_VERSION:
        try:
            subprocess.run([npm, "install", f"openai@{NODE_SDK_VERSION}", "--no-audit", "--no-fund", "--silent"],
                           cwd=NODE_DIR, check=True, capture_output=True, text=True, timeout=240)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            output = getattr(error, "stderr", "") or ""
            if any(sign in output for sign in ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "network")) \
                    or isinstance(error, subprocess.TimeoutExpired):
                pytest.skip(f"the npm registry is unreachable, so the Node SDK cannot be installed: {output[-300:]}")
            raise


def test_the_official_node_sdk_chats_streams_embeds_and_completes(live_hub, free_user, api_key_for, node_sdk):
    from registry.models import LLMModel
    from registry.selectors import registry_snapshot

    LLMModel.objects.filter(public_id="demo-backup").update(api="responses")  # served on the upstream's /responses
    registry_snapshot.invalidate()

    run = subprocess.run(["node", str(node_sdk)], capture_output=True, text=True, timeout=60, env={
        **os.environ, "LLMHUB_BASE_URL": f"{live_hub}/v1", "LLMHUB_API_KEY": api_key_for(free_user)})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)

    assert result["chat"] == result["streamed"] == "Simulated reply from demo: hello from node"
    assert result["streamUsage"]["completion_tokens"] == 7
    assert result["embeddingLengths"] == [16, 16] and result["embeddingUsage"]["prompt_tokens"] == 4
    assert (result["completionObject"], result["completion"]) == ("text_completion", result["chat"])
    assert result["refused"]["status"] == 400 and result["refused"]["param"] == "temperature"
    assert result["refused"]["requestId"].startswith("req_")
    assert result["response"] == result["chat"]  # bridged to the chat model and back
    assert result["responseUsage"]["output_tokens"] == 7
    assert result["responseStreamed"] == "Simulated reply from demo-backup: hello from node"  # native Responses
    assert result["responseStreamUsage"]["output_tokens"] > 0
    rows = usage_rows(6)
    assert [row.endpoint for row in rows] == ["v1.chat_completions", "v1.chat_completions", "v1.embeddings",
                                              "v1.completions", "v1.responses", "v1.responses"]
    assert [row.answered_model for row in rows[-2:]] == ["demo", "demo-backup"]
    assert all(row.status == "ok" and row.input_tokens > 0 and row.cost > 0 for row in rows)


def test_langchains_openai_integrations_chat_stream_embed_and_complete(live_hub, free_user, api_key_for):
    from langchain_openai import ChatOpenAI, OpenAI, OpenAIEmbeddings

    options = {"base_url": f"{live_hub}/v1", "api_key": api_key_for(free_user), "max_retries": 0, "timeout": 10}
    chat = ChatOpenAI(model="demo", **options)

    answer = chat.invoke("hello from langchain")
    streamed = "".join(chunk.content for chunk in chat.stream("hello from langchain"))
    structured = chat.bind(response_format={"type": "json_object"}).invoke("hello")
    tool_call = chat.bind_tools([{"type": "function", "function": {
        "name": "lookup", "parameters": {"type": "object", "properties": {}}}}]).invoke("use the tool")
    # No local tokenizer pass (it would need tiktoken's cl100k file, which cannot be downloaded here).
    vectors = OpenAIEmbeddings(model="demo-embed", check_embedding_ctx_length=False, **options).embed_documents(
        ["hello", "langchain"])
    completion = OpenAI(model="demo", **options).invoke("hello from langchain")
    via_responses = ChatOpenAI(model="demo", use_responses_api=True, **options).invoke("hello from langchain")

    assert answer.content == streamed == "Simulated reply from demo: hello from langchain"
    assert answer.usage_metadata["input_tokens"] == 3
    assert json.loads(structured.content) == {"reply": "Simulated reply from demo: hello"}
    assert tool_call.tool_calls[0]["name"] == "lookup"
    assert [len(vector) for vector in vectors] == [16, 16]
    assert completion == answer.content
    assert via_responses.text == answer.content  # LangChain on /v1/responses, bridged to the chat model
    rows = usage_rows(7)
    assert [row.endpoint for row in rows].count("v1.responses") == 1
    assert [row.endpoint for row in rows].count("v1.embeddings") == 1
    assert [row.endpoint for row in rows].count("v1.completions") == 1
    assert all(row.status == "ok" and row.input_tokens > 0 and row.cost > 0 for row in rows)
