-- wrk script for `make bench`: POSTs the JSON body in $BENCH_BODY_FILE with $BENCH_AUTHORIZATION, and
-- prints its summary as one JSON line (prefixed "BENCH_JSON ") for bench/run.py to read.
local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTHORIZATION")

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "rps": %.3f, "p50_ms": %.4f, "p95_ms": %.4f, "p99_ms": %.4f, "errors": %d, ' ..
    '"error_kinds": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests - e.status, (summary.requests - e.status) / seconds,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.status + e.timeout,
    e.connect, e.read, e.write, e.status, e.timeout))
end
