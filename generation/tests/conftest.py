import openai
import pytest


@pytest.fixture
def sdk(live_hub, free_user, api_key_for) -> openai.OpenAI:
    """The official sync SDK pointed at the live hub's /v1 as a free-tier user (test_streaming has its own)."""
    return openai.OpenAI(base_url=f"{live_hub}/v1", api_key=api_key_for(free_user), max_retries=0, timeout=10)
