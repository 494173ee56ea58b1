"""Micro-benchmark of a prompt template on the hot path, in CPU microseconds per request (issue 12: ≤ 0.1 ms).

    flock /work/wt/bench.lock .venv/bin/python -m bench.prompts

No server and no database: the snapshot holds the templates (as it does once warm), built from the definitions
below instead of the database. Timed in-process in CPU time of the thread, the best of 60 runs of 2,000 calls:

- parse: `prompt_request_parse` of `metadata` naming a template and its variables as a JSON string (as /v1 sends).
- resolve + render: the snapshot read (warm), the label, the model's variant, the variables bound and substituted.
- apply: `generation.prompting.prompt_apply`, everything a request with a template pays on top of one without:
  resolve, render, the template's defaults, the messages assembled and checked against the context window.
`make bench` adds the last figure as a row of its table.

What every request pays so that a template or experiment changed by any process is served from the next request on
(llmhub.snapshot's epoch), apart from templates:
- epoch (file): embedded, reading the epoch's file and comparing it (CPU µs).
- with BENCH_REDIS_URL: the circuit breakers' read alone (HGETALL) and with the epoch (one script), wall and CPU µs a
  call, awaited one after another on one connection.
"""

import contextlib
import json
import os
import sys
import tempfile
import time
import timeit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmhub.settings")
os.environ.setdefault("LLMHUB_SNAPSHOT_VERSIONS_DIR", tempfile.mkdtemp(prefix="bench-prompts-"))
# Warm for the whole run: the once-a-second version check is every request's, with or without a template.
os.environ["LLMHUB_REGISTRY_CACHE_CHECK_SECONDS"] = "3600"

RUNS, CALLS = 60, 2_000
TARGET_US = 100.0
DEFINITION = {
    "system": "You support {{ product }} customers in a {{ tone }} tone. Answer in at most {{ limit }} sentences; "
              "say so when you do not know.",
    "user": "Customer question: {{ question }}",
    "variables": {"product": {"type": "str", "default": "llmhub"}, "question": {"type": "str"},
                  "limit": {"type": "int", "default": 3},
                  "tone": {"type": "enum", "values": ["warm", "dry"], "default": "warm"}},
    "params": {"temperature": 0.3, "max_tokens": 200},
    "variants": [{"provider": "openai", "system": "You answer for {{ product }}."}],
}


def _microseconds(function) -> float:
    return min(timeit.repeat(function, number=CALLS, repeat=RUNS, timer=time.thread_time)) / CALLS * 1e6


def _run(coroutine):
    """Runs a coroutine that never suspends (a warm snapshot) to its end, without an event loop's overhead."""
    with contextlib.suppress(StopIteration):
        coroutine.send(None)
    coroutine.close()


def measure() -> dict[str, float]:
    import django

    django.setup()
    from generation.prompting import prompt_apply
    from prompts.rendering import version_compile
    from prompts.selectors import TemplateSpec, prompt_snapshot
    from prompts.services import prompt_render, prompt_request_parse, prompt_resolve
    from registry.selectors import ModelSpec

    templates = {"support": TemplateSpec("support", {
        number: version_compile(name="support", version=number, **DEFINITION) for number in (1, 2)},
        {"production": 2})}
    prompt_snapshot._build = lambda: templates  # the database's rows, as the snapshot holds them once built
    prompt_snapshot.get()
    model = ModelSpec(id="demo", pk=1, display_name="Demo", upstream_model="demo", provider="local",
                      provider_name="Local", base_url="http://x", api_key="", timeout=1, connect_timeout=1, headers={},
                      allowed_tiers=(), required_tier=None, enabled=True, capabilities=frozenset(),
                      context_window=8192, input_price_per_million=0, output_price_per_million=0, fallbacks=())
    metadata = {"prompt": "support", "variables": '{"question": "Why is my invoice higher this month?"}'}
    request = prompt_request_parse(metadata=metadata)
    messages = [{"role": "user", "content": "hello from the benchmark"}]

    def resolve_render() -> None:
        coroutine = prompt_resolve(request, model=model)
        try:
            coroutine.send(None)
        except StopIteration as done:
            prompt_render(done.value, variables=request.variables, model=model)

    figures = {
        "parse": _microseconds(lambda: prompt_request_parse(metadata=metadata)),
        "resolve + render": _microseconds(resolve_render),
        "apply": _microseconds(lambda: _run(prompt_apply({"messages": list(messages), "metadata": dict(metadata)},
                                                         request, model=model, user_id=1))),
    }
    assert prompt_snapshot._warm() is not None  # the figures are the hot path's: no rebuild was timed
    return figures


def measure_epoch() -> dict[str, float]:
    import django

    django.setup()
    from llmhub.snapshot import snapshots_epoch_seen
    from llmhub.versions import epoch_get

    figures = {"epoch (file)": _microseconds(lambda: snapshots_epoch_seen(epoch_get()))}
    if os.environ.get("BENCH_REDIS_URL"):
        figures |= _redis_figures(os.environ["BENCH_REDIS_URL"])
    return figures


def _redis_figures(url: str, calls: int = 5_000) -> dict[str, float]:
    """Wall and CPU µs of one breakers read without and with the epoch, on the hot path's Redis client."""
    import asyncio

    from health.breakers import _READ_WITH, HEALTH_KEY
    from llmhub.redis_client import RedisClient, Script, bulk

    client, script = RedisClient(url, timeout=1.0), Script(_READ_WITH)
    body = b"".join(map(bulk, (2, HEALTH_KEY, "llmhub:bench:epoch")))

    async def timed(call) -> tuple[float, float]:
        for _ in range(200):
            await call()
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(calls):
            await call()
        return (time.perf_counter() - wall) / calls * 1e6, (time.thread_time() - cpu) / calls * 1e6

    async def both() -> dict[str, float]:
        figures = {}
        for _ in range(3):  # alternated, the best of three each
            for name, call in (("breakers (HGETALL)", lambda: client.call("HGETALL", HEALTH_KEY)),
                               ("breakers + epoch (script)", lambda: client.run(script, body, 3))):
                wall, cpu = await timed(call)
                best = figures.get(f"{name} wall", float("inf"))
                if wall < best:
                    figures[f"{name} wall"], figures[f"{name} cpu"] = wall, cpu
        return figures

    return asyncio.run(both())


def main() -> None:
    if "--epoch" in sys.argv:
        for piece, value in measure_epoch().items():
            print(f"{piece:<32} {value:7.2f} µs")
        return
    figures = measure()
    if "--json" in sys.argv:
        print(json.dumps(figures))
        return
    print(f"{'piece':<20} µs/request (CPU)")
    for piece, value in figures.items():
        print(f"{piece:<20} {value:6.2f}")
    total = figures["parse"] + figures["apply"]
    print(f"{'parse + apply':<20} {total:6.2f}  ({'within' if total <= TARGET_US else 'ABOVE'} the {TARGET_US:.0f} µs target)")


if __name__ == "__main__":
    main()
