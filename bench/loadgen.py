"""A closed-loop HTTP/1.1 load generator that timestamps the first SSE event: the streaming half of
`make bench` (wrk drives the non-streaming runs; this is the fallback for them when wrk is missing).

Each of `--connections` keep-alive connections sends the same pre-built POST again as soon as the
previous answer is complete, until `--duration` seconds have passed. Raw asyncio protocols on uvloop
with httptools' C parser keep the cost per request to tens of microseconds, and the report includes the
generator's own CPU use so a run where it could have been the bottleneck shows itself.

Prints one JSON object: requests, errors, req/s, latency and time-to-first-event percentiles (ms).
"""

import argparse
import asyncio
import json
import resource
import sys
import time
from urllib.parse import urlsplit

import httptools
import uvloop


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.first_events: list[float] = []
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Connection(asyncio.Protocol):
    """One keep-alive connection that sends the request again whenever an answer completes."""

    def __init__(self, request: bytes, stats: Stats, deadline: float, done: asyncio.Future) -> None:
        self.request, self.stats, self.deadline, self.done = request, stats, deadline, done
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sent_at = self.first_event_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.first_event_at = 0.0
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.stats.error("parse")
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        if not self.first_event_at and b"data:" in body:
            self.first_event_at = time.perf_counter()

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        status = self.parser.get_status_code()
        if 200 <= status < 300:
            self.stats.latencies.append(now - self.sent_at)
            if self.first_event_at:
                self.stats.first_events.append(self.first_event_at - self.sent_at)
        else:
            self.stats.error(f"http_{status}")
        if now < self.deadline:
            self._send()
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sent_at and time.perf_counter() < self.deadline:
            self.stats.error("connection_lost")
        if not self.done.done():
            self.done.set_result(None)


async def drive(url: str, body: bytes, headers: dict[str, str], connections: int, duration: float) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in headers.items())]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    stats = Stats()
    started = time.perf_counter()
    deadline = started + duration
    finished = []
    for _ in range(connections):
        done = loop.create_future()
        try:
            await loop.create_connection(lambda done=done: Connection(request, stats, deadline, done), host, port)
        except OSError:
            stats.error("connect")
            continue
        finished.append(done)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.wait_for(asyncio.gather(*finished), timeout=duration + 60)
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    latencies, first_events = sorted(stats.latencies), sorted(stats.first_events)
    ms = 1000.0
    return {
        "requests": len(latencies),
        "errors": sum(stats.errors.values()),
        "error_kinds": stats.errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": (percentile(latencies, 0.5) or 0) * ms,
        "p95_ms": (percentile(latencies, 0.95) or 0) * ms,
        "p99_ms": (percentile(latencies, 0.99) or 0) * ms,
        "max_ms": (latencies[-1] if latencies else 0) * ms,
        "ttft_p50_ms": (percentile(first_events, 0.5) or 0) * ms if first_events else None,
        "ttft_p99_ms": (percentile(first_events, 0.99) or 0) * ms if first_events else None,
        "client_cpu": cpu / elapsed,
    }


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("url")
    cli.add_argument("--body-file", required=True)
    cli.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    cli.add_argument("--connections", type=int, default=1)
    cli.add_argument("--duration", type=float, default=3.0)
    arguments = cli.parse_args()
    with open(arguments.body_file, "rb") as file:
        body = file.read()
    headers = dict(header.split(": ", 1) for header in arguments.header)
    result = uvloop.run(drive(arguments.url, body, headers, arguments.connections, arguments.duration))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
