"""
A WebSocket server in a process of its own (the ``websockets`` library's,
on asyncio), for Gourmet's tunnels to reach::

    python -m tests.websocket_peer PORT NAME

It listens on 127.0.0.1:PORT (0: a port the system picks), prints ``upstream NAME
listening on 127.0.0.1:PORT`` and echoes every message, text or binary,
except these text commands:

- ``who``: answers NAME;
- ``close CODE REASON``: closes with that code and reason;
- ``flood MIB``: sends MIB binary messages of 1 MiB each, then ``done``;
- ``path``: answers the request's path.

Each connection's end is printed: ``closed CODE REASON`` with what the
client's close frame said (1006 when there was none).  A handshake for
``/refuse`` is answered with 403.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, List

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

#: Large enough for the tests' 16 MiB messages.
MAX_MESSAGE = 32 * 1024 * 1024
MIB = 1024 * 1024


async def answer(connection: ServerConnection, name: str) -> None:
    try:
        async for message in connection:
            if isinstance(message, str):
                command, _, rest = message.partition(" ")
                if command == "who":
                    await connection.send(name)
                    continue
                if command == "path":
                    await connection.send(connection.request.path)  # type: ignore[union-attr]
                    continue
                if command == "close":
                    code, _, reason = rest.partition(" ")
                    await connection.close(int(code), reason)
                    break
                if command == "flood":
                    block = b"x" * MIB
                    for _ in range(int(rest)):
                        await connection.send(block)
                    await connection.send("done")
                    continue
            await connection.send(message)
    except ConnectionClosed:
        pass
    received = connection.protocol.close_rcvd
    if received is None:
        print("closed 1006 -", flush=True)
    else:
        print(f"closed {received.code} {received.reason or '-'}", flush=True)


def refuse(connection: ServerConnection, request: Request) -> Any:
    if request.path == "/refuse":
        return connection.respond(403, "refused by the upstream\n")
    return None


async def main(port: int, name: str) -> None:
    async def handler(connection: ServerConnection) -> None:
        await answer(connection, name)

    async with serve(
        handler,
        "127.0.0.1",
        port,
        max_size=MAX_MESSAGE,
        process_request=refuse,
        # The tests' pings are the client's; the server's own would be
        # noise in a test of idle tunnels.
        ping_interval=None,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"upstream {name} listening on 127.0.0.1:{port}", flush=True)
        await asyncio.Future()


def run(argv: List[str]) -> None:
    if len(argv) != 2 or not argv[0].isdigit():
        raise SystemExit("usage: python -m tests.websocket_peer PORT NAME")
    asyncio.run(main(int(argv[0]), argv[1]))


if __name__ == "__main__":
    run(sys.argv[1:])
