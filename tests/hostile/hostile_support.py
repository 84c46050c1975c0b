"""What the hostile battery shares: a node under the production transport
(``enclaved serve``'s protocol class and limits) and an engine stand-in that
misbehaves on purpose. Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from enclaved.crypto import KeyPair
from enclaved.server.app import create_app
from enclaved.server.config import ServerConfig
from enclaved.server.transport import limited_http_protocol


@dataclasses.dataclass
class Node:
    url: str
    port: int
    server: uvicorn.Server


@contextlib.contextmanager
def limited_node(config: ServerConfig, **app_kwargs: Any) -> Iterator[Node]:
    """``config`` served as ``enclaved serve`` serves it: same protocol class,
    same limits, same graceful shutdown period."""
    app = create_app(config, node_key=KeyPair.generate(), **app_kwargs)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            access_log=False,
            http=limited_http_protocol(config.transport),
            timeout_graceful_shutdown=config.graceful_shutdown_seconds,  # type: ignore[arg-type]
            timeout_keep_alive=config.transport.keep_alive_timeout_seconds,  # type: ignore[arg-type]
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "node did not start"
        time.sleep(0.01)
    try:
        yield Node(url=f"http://127.0.0.1:{port}", port=port, server=server)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import resource

    return pages * resource.getpagesize()


# -- the engine stand-in ----------------------------------------------------------

CHUNK = (
    b'data: {"id":"x","object":"chat.completion.chunk","created":0,"model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},'
    b'"finish_reason":null}]}\n\n'
)
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"

Behaviour = Callable[[asyncio.StreamWriter], Any]


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def silent(writer: asyncio.StreamWriter) -> None:
    """Reads the request, never answers."""
    await asyncio.sleep(3600)


async def head_then_silent(writer: asyncio.StreamWriter) -> None:
    writer.write(HEAD)
    await writer.drain()
    await asyncio.sleep(3600)


async def token_then_hang(writer: asyncio.StreamWriter) -> None:
    writer.write(HEAD + chunked(CHUNK))
    await writer.drain()
    await asyncio.sleep(3600)


class EndlessLine:
    """One token, then an SSE line that never ends (``total`` bytes at most);
    with ``lines``, ``data:`` lines that are never ended by a blank line."""

    def __init__(self, total: int, *, lines: bool = False) -> None:
        self.total = total
        self.sent = 0
        self.lines = lines

    async def __call__(self, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunked(CHUNK) + chunked(b'data: {"x":"'))
        piece = chunked(b"data: " + b"a" * 65530 + b"\n" if self.lines else b"a" * 65536)
        while self.sent < self.total:
            writer.write(piece)
            await writer.drain()
            self.sent += 65536
        await asyncio.sleep(3600)


@contextlib.contextmanager
def engine(behaviour: Behaviour) -> Iterator[str]:
    """An OpenAI-ish engine on 127.0.0.1 that reads each request whole, then
    runs ``behaviour``. Yields its base URL (``.../v1``)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if head.split(b" ", 2)[1].endswith(b"/models"):
                # The node's start-up probe (is the engine up?): a plain answer,
                # so that ``behaviour`` is what the chat request meets.
                body = b'{"object":"list","data":[{"id":"m"}]}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
                return
            await behaviour(writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        box["port"] = server.sockets[0].getsockname()[1]
        box["server"] = server
        started.set()
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=lambda: _run(loop, main()), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{box['port']}/v1"
    finally:

        def stop() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(stop)
        thread.join(10)


def _run(loop: asyncio.AbstractEventLoop, coro: Any) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(coro)


def engine_config(tmp_path: Path, base_url: str, **changes: Any) -> ServerConfig:
    data: dict[str, Any] = {
        "data_dir": str(tmp_path),
        "models": [
            {
                "id": "tee-hostile",
                "backend": "upstream",
                "base_url": base_url,
                "upstream_model": "m",
            }
        ],
    }
    data.update(changes)
    return ServerConfig.from_dict(data)
