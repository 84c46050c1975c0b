"""A client that leaves mid-stream stops the stream even when the engine never pauses.

An engine whose output is already buffered (a fast upstream read ahead by
the HTTP client, many events per socket read) hands the server chunk after
chunk without the stream ever suspending. The server must still notice a
client that went away - it is told so by the event loop, which only gets to
run when the stream yields - and stop: otherwise it seals, hashes and writes
the rest of the answer into a closed socket (asyncio logs a warning for
every such write), and no other stream on the node is served meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from server_fakes import E2EE_MODEL, TEE_MODEL, FakeBackend, SeedClient, fake_node

from enclaved.server.backends.base import ChatRequest

PIECES = 100_000


class BurstBackend(FakeBackend):
    """Yields its chunks back to back, never awaiting anything: all of them ready at once."""

    def __init__(self) -> None:
        super().__init__(pieces=["x"] * PIECES)
        self.yielded = 0
        self.closed_at: float | None = None

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in super().stream(request):
                self.yielded += 1
                yield chunk
        finally:
            self.closed_at = time.monotonic()


def test_stream_stops_soon_after_the_client_leaves(tmp_path: Path) -> None:
    backend = BurstBackend()
    with fake_node(tmp_path, backend=backend) as node:
        url = urlsplit(node.api)
        body = json.dumps(
            {"model": TEE_MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        ).encode()
        request = (
            f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(request)
            assert sock.recv(12) == b"HTTP/1.1 200"
            # Leave abruptly (RST), as a killed client does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        left = time.monotonic()
        deadline = left + 20
        while backend.closed_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.closed_at is not None, "the engine stream was never closed"
        assert backend.cancellations == 1
        # Without yielding, the server would have run the engine to its end.
        assert backend.yielded < PIECES // 2, backend.yielded


class SlowStartBackend(FakeBackend):
    """Thinks for an hour before its first chunk (a long prefill)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = 0
        self.closed_at: float | None = None

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        self.entered += 1
        try:
            await asyncio.sleep(3600)
            yield {}
        except asyncio.CancelledError:
            self.cancellations += 1
            raise
        finally:
            self.closed_at = time.monotonic()


@pytest.mark.parametrize("model", [TEE_MODEL, E2EE_MODEL])
def test_a_client_that_leaves_during_the_prefill_stops_the_engine(
    tmp_path: Path, model: str
) -> None:
    """The engine is still working on the prompt (no chunk yet, nothing written)
    when the client leaves: the engine's stream is cancelled at once, for plain
    and E2EE requests alike, and the node keeps serving."""
    backend = SlowStartBackend()
    with fake_node(tmp_path, backend=backend) as node:
        url = urlsplit(node.api)
        content = "x"
        headers = ""
        if model == E2EE_MODEL:
            client = SeedClient()
            content = client.encrypt("x", node.key.public_key_hex)
            headers = "".join(
                f"{k}: {v}\r\n" for k, v in client.headers(node.key.public_key_hex).items()
            )
        body = json.dumps(
            {"model": model, "stream": True, "messages": [{"role": "user", "content": content}]}
        ).encode()
        request = (
            f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n{headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(request)
            deadline = time.monotonic() + 10
            while not backend.entered and time.monotonic() < deadline:
                time.sleep(0.01)
            assert backend.entered == 1
        deadline = time.monotonic() + 10
        while backend.closed_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.closed_at is not None, "the engine stream was never closed"
        assert backend.cancellations == 1
        assert httpx.get(node.url + "/health", timeout=10).status_code == 200
