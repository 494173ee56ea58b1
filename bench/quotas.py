"""Micro-benchmark of the quota step: reserve + settle of one request at concurrency 1, with one limit and with the
six of `make bench` (requests, tokens and cost per minute and per day: bench/setup_db.py).

    .venv/bin/python -m bench.quotas            # embedded (SQLite) and Redis (a private redis-server on a spare port)

The settle is sent as requests send it (`quota_settle_nowait`: not waited for), so "settle" is what it costs the
request path. Runs on a throwaway SQLite database under var/; for Redis it starts its own redis-server (never a shared one) and
points LLMHUB_QUOTA_REDIS_URL at it. Prints p50 / p90 / p99 in milliseconds of reserve + settle, and of a request
no limit applies to (the cost of looking the limits up in the snapshot).
"""

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = int(os.environ.get("BENCH_QUOTA_ITERATIONS", "3000"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _measure(label: str) -> dict[str, float]:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    from django.contrib.auth import get_user_model

    from bench.setup_db import LIMITS
    from registry.models import QuotaLimit, Tier
    from registry.selectors import registry_get
    from registry.services import registry_load, user_tier_set
    from usage.quotas import quota_reserve, quota_settle_nowait

    registry_load(path=ROOT / "fixtures" / "llm_models.json")
    user = get_user_model().objects.create_user("bench-quota")
    user_tier_set(user=user, tier_slug="free")
    free = Tier.objects.get(slug="free")
    model = registry_get().models["demo"]

    async def one(index: int) -> tuple[float, float]:
        started = time.perf_counter()
        reservation = await quota_reserve(request_id=f"bench-{label}-{index}", user_id=user.pk, api_key_id=None,
                                          tier_slug="free", model=model, candidates=[model], prompt_tokens=10,
                                          max_tokens=100)
        reserved = time.perf_counter()
        quota_settle_nowait(reservation=reservation, model=model, input_tokens=10, output_tokens=20)  # as requests do
        settled = time.perf_counter()
        await asyncio.sleep(0.001)  # the rest of a request: the settle reaches the back end meanwhile
        return (reserved - started) * 1000, (settled - reserved) * 1000

    async def run(count: int) -> list[tuple[float, float]]:
        for index in range(200):  # warm: connections, the snapshot, the script cache
            await one(-index - 1)
        return [await one(index) for index in range(count)]

    def timed(count: int) -> tuple[list[tuple[float, float]], float]:
        cpu = time.process_time()  # every thread of this process: the loop's and the quota thread's
        samples = uvloop.run(run(count))  # the loop `make serve` runs
        return samples, (time.process_time() - cpu) * 1000 / (count + 200)

    unlimited, unlimited_cpu = timed(ITERATIONS)
    QuotaLimit.objects.create(tier=free, metric="requests", period="day", limit=10**9)
    limited, limited_cpu = timed(ITERATIONS)
    for metric, period, limit in LIMITS:
        QuotaLimit.objects.update_or_create(tier=free, metric=metric, period=period, model="", defaults={"limit": limit})
    six, six_cpu = timed(ITERATIONS)

    def figures(samples: list[tuple[float, float]], cpu: float) -> str:
        both = [reserve + settle for reserve, settle in samples]
        quantiles = statistics.quantiles(both, n=100)
        return f"reserve+settle p50 {statistics.median(both):.3f} ms (reserve {statistics.median(s[0] for s in samples):.3f}, " \
               f"settle {statistics.median(s[1] for s in samples):.3f}), p90 {quantiles[89]:.3f}, p99 {quantiles[98]:.3f}; " \
               f"CPU {cpu:.3f} ms a request"

    print(f"{label:9} six limits: {figures(six, six_cpu)}")
    print(f"{label:9} one limit:  {figures(limited, limited_cpu)}")
    print(f"{label:9} no limit:   {figures(unlimited, unlimited_cpu)}")
    return {"p50": statistics.median(reserve + settle for reserve, settle in limited)}


def main() -> None:
    if len(sys.argv) > 1:
        _measure(sys.argv[1])
        return
    base = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL")}
    with tempfile.TemporaryDirectory() as directory:
        env = base | {"LLMHUB_SQLITE_PATH": f"{directory}/embedded.sqlite3", "LLMHUB_QUOTA_REDIS_URL": "",
                      "DJANGO_SETTINGS_MODULE": "llmhub.settings", "LLMHUB_LOG_LEVEL": "WARNING"}
        subprocess.run([sys.executable, "-m", "bench.quotas", "embedded"], cwd=ROOT, env=env, check=True)
        port = _free_port()
        redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "",
                                  "--appendonly", "no", "--dir", directory],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            env |= {"LLMHUB_SQLITE_PATH": f"{directory}/redis.sqlite3",
                    "LLMHUB_QUOTA_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
            subprocess.run([sys.executable, "-m", "bench.quotas", "redis"], cwd=ROOT, env=env, check=True)
        finally:
            redis.terminate()
            redis.wait()


if __name__ == "__main__":
    main()
