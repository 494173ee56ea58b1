"""What the chat → responses bridge costs: chat completions to a model served on the Responses API against the
same requests to a chat model, through one llmhub worker, on the simulated upstream.

    .venv/bin/python -m bench.bridge

Both targets are the same hub and the same simulated replies: `demo` (Chat Completions, passed through) and
`bench-responses` (`demo` on the simulator's /v1/responses, so every request and answer is translated, streamed
events included). Runs are interleaved, BENCH_REPS (3) of BENCH_SECONDS (3) seconds each, plain and streaming at
concurrency 1 and 16; prints the median p50 of each, the bridge's added p50 (the goal: at most 0.5 ms) and the app's
CPU time a request (at concurrency 16 one worker's queue multiplies any added CPU time into the p50, and the
simulator's Responses stream is larger than its chat stream, so that p50 counts the upstream's extra work too).
"""

import signal
import sys

from bench.run import (
    REPS,
    SECONDS,
    VAR,
    Load,
    Processes,
    Target,
    _app_env,
    _database_setup,
    _fmt,
    _hub_start,
    _median,
    _pinning,
    _simulator_start,
)
from bench.setup_db import RESPONSES_MODEL_ID

CONFIGS = [(stream, connections) for stream in (False, True) for connections in (1, 16)]
GOAL_MS = 0.5


def main() -> None:
    pinning = _pinning()
    processes = Processes()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sim_url = _simulator_start(processes, pinning, _app_env(""), VAR / "bench-sim.log")
        env = _app_env(sim_url)
        api_key = _database_setup(env)
        native = _hub_start(processes, pinning, env, api_key, VAR / "bench-app.log")
        bridged = Target("bridged", native.url, api_key, RESPONSES_MODEL_ID, RESPONSES_MODEL_ID, process=native.process)
        native.name = "native"
        load = Load(pinning)
        for target in (native, bridged):  # warm-up
            for stream in (False, True):
                load.run(target, stream=stream, connections=16, seconds=1)
        print("| run | native chat p50 (ms) | bridged to responses p50 (ms) | added p50 (ms) | app CPU a request, "
              "native → bridged (ms) |")
        print("|---|---|---|---|---|")
        for stream, connections in CONFIGS:
            runs: dict[str, list[dict]] = {"native": [], "bridged": []}
            for _ in range(REPS):
                for target in (native, bridged):
                    result = load.run(target, stream=stream, connections=connections, seconds=SECONDS)
                    if result.get("errors"):
                        raise RuntimeError(f"{target.name}: errors {result['errors']}")
                    runs[target.name].append(result)
            native_p50, bridged_p50 = _median(runs["native"], "p50_ms"), _median(runs["bridged"], "p50_ms")
            added = bridged_p50 - native_p50
            verdict = "ok" if added <= GOAL_MS else "over the goal"
            cpu = [_median(runs[name], "app_cpu_ms_per_request") for name in ("native", "bridged")]
            print(f"| {'stream' if stream else 'plain'}-c{connections} | {_fmt(native_p50)} | {_fmt(bridged_p50)} | "
                  f"{_fmt(added)} ({verdict}) | {_fmt(cpu[0])} → {_fmt(cpu[1])} |", flush=True)
    finally:
        processes.stop_all()


if __name__ == "__main__":
    main()
