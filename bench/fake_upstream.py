#!/usr/bin/env python3
"""A fake OpenAI-compatible inference engine, for tests and benchmarks.

It streams ``N`` tokens per chat completion as fast as it can (or with a delay
between tokens), like vLLM would but without a model, so that a benchmark of
enclaved measures enclaved and not the engine. It is a real HTTP server
process on loopback (uvicorn + starlette).

Run it::

    python bench/fake_upstream.py --port 8001 --tokens 256 --delay-ms 0
    # prints: fake-upstream listening on http://127.0.0.1:8001/v1

``--port 0`` picks a free port; the printed line says which. From Python::

    with FakeUpstreamProcess(tokens=16) as fake:
        httpx.get(f"{fake.base_url}/models")

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream`` true or
false; ``max_tokens`` / ``max_completion_tokens`` lower the token count;
``stream_options.include_usage`` adds the usage chunk, as vLLM does).

Failure modes for tests, chosen per request by header:

=========================  ===================================================
``X-Fake-Status: 503``     answer that HTTP status with an error document
``X-Fake-Fail-After: k``   drop the connection after ``k`` content chunks
``X-Fake-Error-After: k``  send a ``data: {"error": ...}`` event after ``k``
``X-Fake-No-Done: 1``      end the body cleanly but without ``data: [DONE]``
``X-Fake-Tokens: n``       stream ``n`` tokens instead of ``--tokens``
``X-Fake-Delay-Ms: d``     wait ``d`` ms before each token
``X-Fake-Echo: 1``         one content chunk: the request body as JSON text
``X-Fake-Sse-Style: odd``  CRLF line ends, keep-alive comments, and each JSON
                           split over two ``data:`` lines (legal SSE)
=========================  ===================================================

This file imports nothing from enclaved: it stands alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["FakeUpstreamProcess", "create_app", "serve"]


class _DropConnection(Exception):
    """Raised inside the body iterator: uvicorn then aborts the connection
    mid-body (the chunked encoding is never terminated)."""


class _QuietDrop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _DropConnection))


def _count_words(messages: Any) -> int:
    """A stand-in for a tokenizer: words in the string contents."""
    total = 0
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                total += len(content.split())
    return total


def create_app(*, tokens: int = 256, delay_ms: float = 0.0, model: str = "fake-model") -> Starlette:
    """The fake engine as an ASGI app."""
    counter = iter(range(1, 1 << 62))

    async def models(request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "fake"}]}
        )

    async def chat(request: Request) -> Response:
        headers = request.headers
        status = int(headers.get("x-fake-status", "200"))
        if status != 200:
            return JSONResponse(
                {"error": {"message": "fake failure", "type": "fake_error", "code": status}},
                status_code=status,
            )
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"message": "bad json", "type": "invalid_request"}}, 400)

        n = int(headers.get("x-fake-tokens", tokens))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and limit > 0:
            n = min(n, limit)
        texts = [f" tok{i}" for i in range(n)]
        if headers.get("x-fake-echo"):
            texts = [json.dumps(body, sort_keys=True)]
        finish = "length" if limit is not None and n == limit else "stop"
        prompt_tokens = _count_words(body.get("messages"))
        completion_id = f"chatcmpl-fake-{next(counter)}"
        created = int(time.time())
        model_out = str(body.get("model", model))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(texts),
            "total_tokens": prompt_tokens + len(texts),
        }

        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model_out,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(texts)},
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                }
            )

        options = body.get("stream_options") or {}
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        delay = float(headers.get("x-fake-delay-ms", delay_ms)) / 1000.0
        fail_after = int(headers.get("x-fake-fail-after", "-1"))
        error_after = int(headers.get("x-fake-error-after", "-1"))
        no_done = bool(headers.get("x-fake-no-done"))
        odd = headers.get("x-fake-sse-style") == "odd"

        # Pre-encoded halves of a content chunk: only the token text changes.
        head = json.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_out,
            }
        )[:-1]
        content_prefix = (head + ', "choices": [{"index": 0, "delta": {"content": ').encode()
        content_suffix = b'}, "logprobs": null, "finish_reason": null}]}'

        def event(payload: bytes) -> bytes:
            if not odd:
                return b"data: " + payload + b"\n\n"
            # Split at the first ", " (JSON whitespace), so the two data lines
            # joined by "\n" still parse.
            first, sep, rest = payload.partition(b", ")
            lines = (
                b"data: " + first + sep.rstrip() + b"\r\ndata:" + rest
                if sep
                else b"data: " + payload
            )
            return b": keep-alive\r\n" + lines + b"\r\n\r\n"

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
            return event(
                json.dumps(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model_out,
                        "choices": [
                            {
                                "index": 0,
                                "delta": delta,
                                "logprobs": None,
                                "finish_reason": finish_reason,
                            }
                        ],
                    }
                ).encode()
            )

        async def body_iter() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""}, None)
            for i, text in enumerate(texts):
                if i == fail_after:
                    raise _DropConnection()
                if i == error_after:
                    yield event(
                        json.dumps(
                            {
                                "error": {
                                    "message": "fake engine failure",
                                    "type": "server_error",
                                    "code": 500,
                                }
                            }
                        ).encode()
                    )
                    yield event(b"[DONE]")
                    return
                if delay > 0:
                    await asyncio.sleep(delay)
                yield event(content_prefix + json.dumps(text).encode() + content_suffix)
            if fail_after >= len(texts):
                raise _DropConnection()
            yield chunk({}, finish)
            if include_usage:
                yield event(
                    json.dumps(
                        {
                            "id": completion_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model_out,
                            "choices": [],
                            "usage": usage,
                        }
                    ).encode()
                )
            if not no_done:
                yield event(b"[DONE]")

        return StreamingResponse(
            body_iter(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tokens: int = 256,
    delay_ms: float = 0.0,
    model: str = "fake-model",
) -> None:
    """Serve until interrupted. Binds first, then prints the URL (so a parent
    process can read the port, and connections made right away queue up)."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose
    # proto says TCP (a plain socket() has proto 0), and without it Nagle's
    # algorithm holds small SSE writes for a delayed ACK (~40 ms on loopback).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(4096)
    logging.getLogger("uvicorn.error").addFilter(_QuietDrop())
    config = uvicorn.Config(
        create_app(tokens=tokens, delay_ms=delay_ms, model=model),
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    bound_host, bound_port = sock.getsockname()[:2]
    print(f"fake-upstream listening on http://{bound_host}:{bound_port}/v1", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


class FakeUpstreamProcess:
    """Run the fake engine as a child process; ``base_url`` once entered."""

    def __init__(
        self,
        *,
        tokens: int = 256,
        delay_ms: float = 0.0,
        model: str = "fake-model",
        python: str = sys.executable,
        startup_timeout: float = 30.0,
    ) -> None:
        self._args = [
            python,
            os.path.abspath(__file__),
            "--port",
            "0",
            "--tokens",
            str(tokens),
            "--delay-ms",
            str(delay_ms),
            "--model",
            model,
        ]
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        # The first line names the port (readline blocks until it is printed;
        # a crash closes stdout and gives "").
        line = self._proc.stdout.readline()
        match = re.search(r"(http://\S+/v1)", line)
        if not match:
            self.__exit__(None, None, None)
            raise RuntimeError("fake upstream did not start")
        self.base_url = match.group(1)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per completion")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="wait before each token")
    parser.add_argument("--model", default="fake-model")
    args = parser.parse_args(argv)
    serve(args.host, args.port, tokens=args.tokens, delay_ms=args.delay_ms, model=args.model)


if __name__ == "__main__":
    main()
