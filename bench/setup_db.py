"""Prepares the throwaway benchmark database: migrate, load the registry fixture, add `bench-slow`
(the simulated upstream with 1000 ms of latency) and `bench-responses` (the simulated upstream on its Responses
API), and create a top-tier user with an API key, and a user of the tier `bench-limited` (as high as the top tier,
with limits on requests, tokens and cost per minute and per day, too high to refuse anything: every request pays for
the quota step) with a key of its own.

Run as `python -m bench.setup_db` with LLMHUB_SQLITE_PATH (or DATABASE_URL) and LLMHUB_SIMULATOR_URL set;
prints the raw API keys as JSON on the last line (`api_key`, `limited_api_key`). Running it again on the same
database changes nothing but adds keys.
"""

import json
import os

import django

SLOW_MODEL_ID = "bench-slow"
SLOW_UPSTREAM_MODEL = "demo@latency=1000"
RESPONSES_MODEL_ID = "bench-responses"  # `demo` served on the simulator's /v1/responses: the chat → responses bridge
TOP_TIER = "enterprise"
LIMITED_TIER = "bench-limited"
# Six counters per request, every one far from its limit.
LIMITS = [(metric, period, limit) for period in ("minute", "day")
          for metric, limit in (("requests", 10**9), ("tokens", 10**12), ("cost", 10**5))]


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmhub.settings")
    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from registry.models import LLMModel, Provider, QuotaLimit, Tier
    from registry.services import api_key_create, user_tier_set

    call_command("migrate", interactive=False, verbosity=0)
    call_command("load_models", verbosity=0)
    # The hub sends the registry's upstream name, so the slow upstream is a model of its own.
    slow, _ = LLMModel.objects.update_or_create(public_id=SLOW_MODEL_ID, defaults={
        "display_name": "Benchmark: simulated upstream, 1000 ms", "upstream_model": SLOW_UPSTREAM_MODEL,
        "provider": Provider.objects.get(slug="local"),
    })
    slow.allowed_tiers.set(Tier.objects.all())
    bridged, _ = LLMModel.objects.update_or_create(public_id=RESPONSES_MODEL_ID, defaults={
        "display_name": "Benchmark: simulated upstream on the Responses API", "upstream_model": "demo",
        "provider": Provider.objects.get(slug="local"), "api": LLMModel.Api.RESPONSES, "supports_streaming": True,
    })
    bridged.allowed_tiers.set(Tier.objects.all())
    # A database kept between runs (`make soak`'s PostgreSQL) already has the user.
    user, _ = get_user_model().objects.get_or_create(username="bench")
    user_tier_set(user=user, tier_slug=TOP_TIER)
    _, raw_key = api_key_create(user=user, name="bench")

    top = Tier.objects.get(slug=TOP_TIER)
    limited, _ = Tier.objects.get_or_create(slug=LIMITED_TIER, defaults={
        "name": "Benchmark: limited", "rank": top.rank + 1, "description": "make bench: quotas on every request"})
    for metric, period, limit in LIMITS:
        QuotaLimit.objects.update_or_create(tier=limited, metric=metric, period=period, model="",
                                            defaults={"limit": limit})
    limited_user, _ = get_user_model().objects.get_or_create(username="bench-limited")
    user_tier_set(user=limited_user, tier_slug=LIMITED_TIER)
    _, limited_key = api_key_create(user=limited_user, name="bench-limited")
    print(json.dumps({"api_key": raw_key, "limited_api_key": limited_key}))


if __name__ == "__main__":
    main()
