"""The loop `make serve` runs llmhub on (llmhub/serving.py): a busy process takes the connections waiting in its
listen queue a batch a turn, where uvloop alone takes one a turn; closing the server closes the port; uvicorn serves
HTTP on it through both ways a connection is accepted."""

import asyncio
import socket
import threading
import time

import uvicorn
import uvloop

from llmhub.serving import ACCEPT_BATCH, EagerAcceptLoop, uvloop_eager_accept

WAITING = 64
TURN_SECONDS = 0.005


class _Count(asyncio.Protocol):
    accepted = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).accepted += 1


def _accepted_in_busy_turns(loop: asyncio.AbstractEventLoop, turns: int) -> list[int]:
    """How many connections the server on `loop` has taken at the end of each of `turns` turns of TURN_SECONDS of
    work each, with WAITING of them queued (connected by the kernel) before the first turn."""

    async def scenario() -> list[int]:
        _Count.accepted = 0
        server = await loop.create_server(_Count, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        clients = []
        for _ in range(WAITING):  # the kernel completes each handshake; they wait in the listen queue
            client = socket.create_connection(("127.0.0.1", port))
            clients.append(client)
        done = loop.create_future()
        counts: list[int] = []

        def busy_turn() -> None:  # a saturated process: every turn is long
            started = time.perf_counter()
            while time.perf_counter() - started < TURN_SECONDS:
                pass
            counts.append(_Count.accepted)
            if len(counts) < turns:
                loop.call_soon(busy_turn)
            else:
                done.set_result(counts)

        loop.call_soon(busy_turn)
        accepted = await done
        server.close()
        await server.wait_closed()
        for client in clients:
            client.close()
        return accepted

    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()


def _most_in_one_turn(counts: list[int]) -> int:
    return max(after - before for before, after in zip([0, *counts[:-1]], counts, strict=True))


def test_a_busy_loop_takes_the_waiting_connections_a_batch_a_turn():
    counts = _accepted_in_busy_turns(uvloop_eager_accept(), turns=16)
    assert counts[-1] == WAITING
    # A batch, not the whole queue: a crowd of clients that connected at once would otherwise be served in lockstep
    # (the 1000 ms upstream row of `make bench` lost a tenth of its throughput with no bound).
    assert _most_in_one_turn(counts) == ACCEPT_BATCH + 1
    # The reason for it all: uvloop alone takes one connection a turn (libuv >= 1.45), so a burst of new clients
    # waits one long turn each behind the requests already being served.
    plain = _accepted_in_busy_turns(uvloop.new_event_loop(), turns=16)
    assert _most_in_one_turn(plain) == 1 and plain[-1] <= 16


def test_closing_the_server_closes_its_port():
    loop = EagerAcceptLoop()

    async def scenario() -> int:
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port))

    try:
        assert loop.run_until_complete(scenario()) != 0  # refused: the duplicate listener is closed too
    finally:
        loop.close()


async def _slow_app(scope, receive, send):
    if scope["type"] != "http":
        return
    started = time.perf_counter()
    while time.perf_counter() - started < 0.003:  # keeps the loop busy, as a saturated process is
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_uvicorn_serves_a_burst_of_new_connections_on_it():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(_slow_app, host="127.0.0.1", port=port, loop="llmhub.serving:uvloop_eager_accept",
                            http="httptools", lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(WAITING)]
        for client in clients:
            client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answers = []
        for client in clients:
            data = b""
            while not data.endswith(b"ok"):
                chunk = client.recv(4096)
                if not chunk:
                    break
                data += chunk
            answers.append(data.split(b"\r\n", 1)[0])
            client.close()
        assert answers == [b"HTTP/1.1 200 OK"] * WAITING
    finally:
        server.should_exit = True
        thread.join(timeout=10)
