"""The upstream backend against a real OpenAI-compatible server process.

The engine is ``bench/fake_upstream.py`` run as a child process on loopback:
real sockets, real chunked SSE, real dropped connections. Its failure modes
are chosen per request with ``X-Fake-*`` headers, which these tests set as
headers the backend is constructed with (``UpstreamBackend(headers=...)``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclaved.errors import ConfigError
from enclaved.server.backends import make_backend
from enclaved.server.backends.base import BackendError, ChatRequest
from enclaved.server.backends.upstream import SSEDecoder, UpstreamBackend

_FAKE_PATH = Path(__file__).resolve().parents[1] / "bench" / "fake_upstream.py"


def _load_fake() -> Any:
    spec = importlib.util.spec_from_file_location("fake_upstream", _FAKE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_upstream"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with _load_fake().FakeUpstreamProcess(tokens=5, model="fake-engine-model") as fake:
        yield fake.base_url


REQUEST = ChatRequest(
    messages=[{"role": "user", "content": "say five words"}],
    params={"temperature": 0.25, "max_tokens": 64},
)


async def _collect(
    backend: UpstreamBackend, request: ChatRequest = REQUEST
) -> list[dict[str, Any]]:
    return [chunk async for chunk in backend.stream(request)]


def _run(
    base_url: str,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    request: ChatRequest = REQUEST,
) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        backend = UpstreamBackend(base_url, "served-model", headers=headers, timeout=timeout)
        await backend.start()
        try:
            return await _collect(backend, request)
        finally:
            await backend.close()

    return asyncio.run(go())


def _contents(chunks: list[dict[str, Any]]) -> list[str]:
    return [
        c["choices"][0]["delta"]["content"]
        for c in chunks
        if c["choices"] and c["choices"][0]["delta"].get("content")
    ]


def test_chunks_pass_through_one_by_one_with_usage(fake_url: str) -> None:
    chunks = _run(fake_url)
    assert _contents(chunks) == [" tok0", " tok1", " tok2", " tok3", " tok4"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "served-model" for c in chunks)  # our model id went upstream
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    # The last chunk is the usage chunk, because we asked for include_usage.
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def test_request_body_sent_upstream(fake_url: str) -> None:
    request = ChatRequest(
        messages=[{"role": "user", "content": "hi"}],
        params={
            "temperature": 0.25,
            "max_tokens": 9,
            "stream": False,
            "model": "evil",
            "stream_options": {"include_usage": False},
        },
    )
    chunks = _run(fake_url, {"X-Fake-Echo": "1"}, request=request)
    sent = json.loads("".join(_contents(chunks)))
    assert sent == {
        "model": "served-model",  # the backend's, never the caller's
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.25,
        "max_tokens": 9,
    }


def test_first_chunk_arrives_before_the_engine_finishes(fake_url: str) -> None:
    async def go() -> list[float]:
        headers = {"X-Fake-Delay-Ms": "150", "X-Fake-Tokens": "4"}
        backend = UpstreamBackend(fake_url, "m", headers=headers)
        await backend.start()
        start = time.monotonic()
        try:
            return [
                time.monotonic() - start async for c in backend.stream(REQUEST) if _contents([c])
            ]
        finally:
            await backend.close()

    arrivals = asyncio.run(go())
    assert len(arrivals) == 4
    # Tokens are 150 ms apart upstream; buffering would bunch them at the end.
    assert arrivals[-1] - arrivals[0] > 0.3


def test_unusual_but_legal_sse_decodes_the_same(fake_url: str) -> None:
    odd = _run(fake_url, {"X-Fake-Sse-Style": "odd"})
    plain = _run(fake_url)
    assert _contents(odd) == _contents(plain)
    assert odd[-1]["usage"] == plain[-1]["usage"]


def test_upstream_down_is_a_502() -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackendError) as info:
        _run(f"http://127.0.0.1:{port}/v1")
    assert info.value.status == 502


@pytest.mark.parametrize(("upstream", "reported"), [(503, 502), (500, 502), (429, 429), (400, 400)])
def test_http_error_status(fake_url: str, upstream: int, reported: int) -> None:
    with pytest.raises(BackendError) as info:
        _run(fake_url, {"X-Fake-Status": str(upstream)})
    assert info.value.status == reported
    assert str(upstream) in info.value.message
    assert "fake failure" not in info.value.message  # the engine's text is not relayed


def test_connection_dropped_mid_stream(fake_url: str) -> None:
    got: list[dict[str, Any]] = []

    async def go() -> None:
        backend = UpstreamBackend(fake_url, "m", headers={"X-Fake-Fail-After": "2"})
        await backend.start()
        try:
            async for chunk in backend.stream(REQUEST):
                got.append(chunk)
        finally:
            await backend.close()

    with pytest.raises(BackendError) as info:
        asyncio.run(go())
    assert info.value.status == 502
    assert _contents(got) == [" tok0", " tok1"]  # what came before the drop was passed on


def test_error_event_mid_stream(fake_url: str) -> None:
    with pytest.raises(BackendError) as info:
        _run(fake_url, {"X-Fake-Error-After": "1"})
    assert "fake engine failure" not in info.value.message
    assert "server_error" in info.value.message


def test_stream_without_done_is_truncated(fake_url: str) -> None:
    with pytest.raises(BackendError) as info:
        _run(fake_url, {"X-Fake-No-Done": "1"})
    assert info.value.code == "upstream_truncated"


def test_read_timeout_is_a_504(fake_url: str) -> None:
    with pytest.raises(BackendError) as info:
        _run(fake_url, {"X-Fake-Delay-Ms": "2000"}, timeout=0.3)
    assert info.value.status == 504


def test_closing_the_stream_early_returns_promptly(fake_url: str) -> None:
    async def go() -> float:
        headers = {"X-Fake-Delay-Ms": "500", "X-Fake-Tokens": "20"}
        backend = UpstreamBackend(fake_url, "m", headers=headers)
        await backend.start()
        stream = backend.stream(REQUEST)
        async for chunk in stream:
            if _contents([chunk]):
                break
        start = time.monotonic()
        await stream.aclose()  # type: ignore[attr-defined]
        elapsed = time.monotonic() - start
        await backend.close()
        return elapsed

    assert asyncio.run(go()) < 0.4  # the remaining 19 tokens would take 9.5 s


def test_list_models(fake_url: str) -> None:
    async def go() -> list[str]:
        backend = UpstreamBackend(fake_url, "m")
        await backend.start()
        try:
            return await backend.list_models()
        finally:
            await backend.close()

    assert asyncio.run(go()) == ["fake-engine-model"]


def test_api_key_and_headers_are_sent_and_never_shown() -> None:
    """What goes on the wire, read by a bare socket server: the request line,
    the key, the caller's headers; and the key is in no repr."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        seen.append(head + await reader.readexactly(length))
        body = b"data: [DONE]\n\n"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def go() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        backend = UpstreamBackend(
            f"http://127.0.0.1:{port}/v1/", "m", api_key="sk-secret", headers={"X-Trace": "t1"}
        )
        assert "sk-secret" not in repr(backend)
        assert "sk-secret" not in repr(backend._http)
        await backend.start()
        try:
            assert await _collect(backend) == []
        finally:
            await backend.close()
            server.close()

    asyncio.run(go())
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    assert fields["authorization"] == "Bearer sk-secret"
    assert fields["x-trace"] == "t1"
    assert fields["accept-encoding"] == "identity"
    assert json.loads(body)["model"] == "m"


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError):
        UpstreamBackend("http://127.0.0.1:1/v1", "m", api_key="sk\r\nX-Evil: 1")


def test_unusable_key_or_url_is_a_config_error_that_never_shows_the_key() -> None:
    """An engine key with a line break (it would end the header) or a URL that
    cannot make a request line stops the node at start-up with a ConfigError."""
    spec = {"backend": "upstream", "base_url": "http://127.0.0.1:1/v1", "model": "m"}
    with pytest.raises(ConfigError) as info:
        make_backend({**spec, "api_key_env": "K"}, env={"K": "sk-secret\nX-Evil: 1"})
    assert "sk-secret" not in str(info.value)
    with pytest.raises(ConfigError):
        make_backend({**spec, "base_url": "http://127.0.0.1:1/v 1"}, env={})
    # Credentials in the URL would not be sent (no Basic auth on this hop): refused,
    # and the password is not repeated in the error.
    with pytest.raises(ConfigError) as info:
        make_backend({**spec, "base_url": "http://user:hunter2@127.0.0.1:1/v1"}, env={})
    assert "hunter2" not in str(info.value)
    assert "api_key_env" in str(info.value)


# -- the SSE decoder on its own ------------------------------------------------

SSE = (
    b": keep-alive\r\n"
    b'data: {"a": 1}\r\n\r\n'
    b'event: error\ndata: {"b":\ndata: 2}\n\n'
    b'data:{"c": 3}\r\rid: 7\nretry: 10\ndata: {"d":\r\ndata: 4}\r\n\r\n'
    b"data: [DONE]\n\n"
    b"data: unterminated"
)
EXPECTED = [
    ("", b'{"a": 1}'),
    ("error", b'{"b":\n2}'),
    ("", b'{"c": 3}'),
    ("", b'{"d":\n4}'),
    ("", b"[DONE]"),
]


def test_sse_decoder_whole() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(SSE) + decoder.flush() == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_sse_decoder_any_split(size: int) -> None:
    # Every way the network may cut the bytes, including between CR and LF.
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(SSE), size):
        events += decoder.feed(SSE[i : i + size])
    assert events + decoder.flush() == EXPECTED


def test_sse_decoder_crlf_split_does_not_end_the_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\ndata: y\r") == []
    assert decoder.feed(b"\n\r\n") == [("", b"x\ny")]


# -- enclaved in front of another enclaved ------------------------------------------


@pytest.mark.model
def test_enclaved_over_a_second_enclaved_serving_the_embedded_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Node A's model is an upstream: node B, a separate ``enclaved serve``
    process running the embedded SmolLM2. A client talks E2EE to A, which
    decrypts, streams from B over HTTP, re-encrypts and signs."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    import os
    import re
    import subprocess
    import warnings

    from conftest import running_server

    import enclaved
    from enclaved.attestation import InsecurePolicyWarning
    from enclaved.client import last_signature
    from enclaved.server.app import create_app
    from enclaved.server.config import ServerConfig

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    b_dir = tmp_path_factory.mktemp("node-b")
    b_log = b_dir / "stderr.log"
    node_b = subprocess.Popen(
        [sys.executable, "-m", "enclaved", "serve", "--port", "0", "--data-dir", str(b_dir)],
        stdout=subprocess.PIPE,
        stderr=b_log.open("wb"),
        text=True,
        env=env,
    )
    try:
        assert node_b.stdout is not None
        b_url = ""
        deadline = time.monotonic() + 120
        while not b_url and time.monotonic() < deadline:
            line = node_b.stdout.readline()
            if not line:
                break  # exited
            match = re.search(r"serving on (http://\S+/v1)", line)
            b_url = match.group(1) if match else ""
        assert b_url, f"node B did not start: {b_log.read_text()[-2000:]}"

        a_dir = tmp_path_factory.mktemp("node-a")
        upstream = {"backend": "upstream", "base_url": b_url, "upstream_model": "tee-smollm2-135m"}
        config = ServerConfig.from_dict(
            {
                "data_dir": str(a_dir),
                "models": [{"id": "e2ee-chained", "name": "Chained", **upstream}],
            }
        )
        with running_server(create_app(config)) as a_url, warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecurePolicyWarning)
            client = enclaved.OpenAI(
                base_url=a_url + "/v1",
                api_key="unused",
                trust_root=a_dir / "dev-root-ca.pem",
                max_retries=0,
            )
            stream = client.chat.completions.create(
                model="e2ee-chained",
                messages=[{"role": "user", "content": "Name three colors."}],
                max_tokens=16,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text.strip()
            contents = [c for c in chunks if c.choices and c.choices[0].delta.content]
            assert len(contents) >= 2  # token by token, through both nodes
            usage = chunks[-1].usage
            assert usage is not None and 0 < usage.completion_tokens <= 16
            assert usage.prompt_tokens > 3  # counted by node B's tokenizer
            signature = last_signature(client)
            assert signature is not None and signature.ok
    finally:
        node_b.terminate()
        try:
            node_b.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node_b.kill()
            node_b.wait()
        if node_b.stdout is not None:
            node_b.stdout.close()
