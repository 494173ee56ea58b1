"""The event loop llmhub is served on: uvloop, taking the connections waiting to be accepted a batch a turn.

libuv (since 1.45) accepts one connection per turn of the event loop and relies on the listening socket staying
readable for the next. Under load a turn takes as long as the work of every request ready in it (tens of
milliseconds when the process is saturated), so a burst of new clients waits one turn each: measured at 128 new
connections against a busy process, the last were answered only after seconds while the keep-alive clients
already connected went on being served. asyncio's own loop accepts up to the backlog at once; this loop takes a
batch at a time on top of uvloop: whenever uvloop accepts a connection, up to ACCEPT_BATCH more of those still
waiting in the listen queue are taken in the next turn (non-blocking `accept` until the queue is empty) and served
like the first. When nothing else waits, which is nearly always, that is one `accept` answering EAGAIN per new
connection, never per request.

Why a batch and not the whole queue: a crowd of clients that connected at once (256 in `make bench`'s 1000 ms
upstream run) would then be read in one turn and served in lockstep, each cycle's last request waiting for the work
of all the others; that cost the run a tenth of its throughput, batches of 16 about 2%, batches of 8 about 1% (the
noise), which still take 128 waiting connections in 15 turns instead of 128.

`make serve` runs uvicorn with `--loop llmhub.serving:uvloop_eager_accept`. Several workers share a listening
socket: an idle worker is woken at once by the kernel and accepts first, so a busy worker's batch only takes
connections that no idle worker took.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

import uvloop

UVICORN_LOOP = "llmhub.serving:uvloop_eager_accept"  # uvicorn --loop
ACCEPT_BATCH = 8  # waiting connections taken per connection uvloop accepts (see the docstring)


class _EagerServer:
    """uvloop's server, plus a duplicate of each listening socket that takes the rest of the listen queue."""

    def __init__(self, server: asyncio.AbstractServer, listeners: list[socket.socket]) -> None:
        self._server = server
        self._listeners = listeners

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)

    def close(self) -> None:
        for listener in self._listeners:  # a duplicate left open would keep the port listening
            listener.close()
        self._listeners.clear()  # the accepting side sees an empty list: nothing more to take
        self._server.close()


class EagerAcceptLoop(uvloop.Loop):
    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any,
                            ssl: Any = None, **kwargs: Any) -> asyncio.AbstractServer:
        if ssl is not None:  # TLS is terminated in front of llmhub; keep uvloop's own path for it
            return await super().create_server(protocol_factory, *args, ssl=ssl, **kwargs)
        listeners: list[socket.socket] = []
        serving: set[asyncio.Task] = set()
        pending = False

        def drain() -> None:
            nonlocal pending
            pending = False
            for listener in listeners:
                for _ in range(ACCEPT_BATCH):
                    try:
                        connection, _ = listener.accept()
                    except OSError:  # none left (EAGAIN), or out of descriptors, which uvloop's own accept reports
                        break
                    connection.setblocking(False)
                    task = self.create_task(self._serve_accepted(protocol_factory, connection))
                    serving.add(task)  # the loop keeps only a weak reference to a task
                    task.add_done_callback(serving.discard)

        def accepted() -> asyncio.BaseProtocol:
            """Called by uvloop for each connection it accepts: a batch of the others waiting follows next turn."""
            nonlocal pending
            if not pending and listeners:
                pending = True
                self.call_soon(drain)
            return protocol_factory()

        server = await super().create_server(accepted, *args, **kwargs)
        for pseudo in server.sockets:
            listener = socket.socket(pseudo.family, pseudo.type, fileno=os.dup(pseudo.fileno()))
            listener.setblocking(False)
            listeners.append(listener)
        return _EagerServer(server, listeners)

    async def _serve_accepted(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                              connection: socket.socket) -> None:
        try:
            await self.connect_accepted_socket(protocol_factory, connection)
        except OSError:  # the client left before its transport was made
            connection.close()


def uvloop_eager_accept() -> EagerAcceptLoop:
    """uvicorn's `--loop` hook (a custom import string names the loop factory itself)."""
    return EagerAcceptLoop()
