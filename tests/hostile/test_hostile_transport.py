"""Raw-socket attacks on the node's transport (issue 14, items 1 and 2).

The node runs as ``enclaved serve`` runs it (``server/transport.py``), with
its limits lowered so that each deadline is a fraction of a second.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_support import Node, limited_node, rss_bytes
from server_fakes import fake_backends, fake_config

LIMITS = {
    "max_request_line_bytes": 4096,
    "max_header_bytes": 16384,
    "first_request_timeout_seconds": 0.5,
    "header_timeout_seconds": 0.5,
    "max_connections": 4,
}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with limited_node(fake_config(tmp_path, transport=LIMITS), backends=fake_backends()) as n:
        yield n


def _connect(node: Node) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=5)
    return sock


def _read_to_eof(sock: socket.socket, limit: float = 5.0) -> bytes:
    """Everything the node sends until it closes (fails after ``limit`` s)."""
    sock.settimeout(limit)
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data


def _read_response(sock: socket.socket) -> bytes:
    """One response with a ``content-length``, on a connection kept open."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _status_and_code(answer: bytes) -> tuple[int, str | None]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    code = json.loads(body)["error"]["code"] if body.startswith(b"{") else None
    return status, code


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the node may refuse half-way (it stops reading: EPIPE)."""
    try:
        for i in range(0, len(data), 65536):
            sock.sendall(data[i : i + 65536])
    except OSError:
        pass


GET = b"GET /api/v1/models HTTP/1.1\r\nhost: x\r\n"


def test_an_8_mib_header_line_is_431_and_closed_and_costs_no_memory(node: Node) -> None:
    big = GET + b"x-big: " + b"a" * (8 * 1024 * 1024) + b"\r\n\r\n"
    before = rss_bytes()
    with _connect(node) as sock:
        _send_quietly(sock, big)
        answer = _read_to_eof(sock)
    assert _status_and_code(answer) == (431, "request_header_fields_too_large")
    assert rss_bytes() - before < 4 * 1024 * 1024  # not the 8 MiB, nor twice it


def test_a_long_request_line_is_400(node: Node) -> None:
    with _connect(node) as sock:
        _send_quietly(sock, b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = _read_to_eof(sock)
    assert _status_and_code(answer) == (400, "request_line_too_long")


def test_an_unfinished_head_is_cut_at_the_header_deadline(node: Node) -> None:
    with _connect(node) as sock:
        start = time.monotonic()
        sock.sendall(GET)
        answer = b""
        sock.settimeout(0.1)
        for i in range(40):  # one header line every 0.1 s: slowloris
            try:
                sock.sendall(b"x-%d: y\r\n" % i)
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        answer += _read_to_eof(sock)
        took = time.monotonic() - start
    assert _status_and_code(answer) == (408, "request_timeout")
    assert took < 3.0


def test_a_silent_connection_is_closed_at_the_first_request_deadline(node: Node) -> None:
    with _connect(node) as sock:
        start = time.monotonic()
        assert _read_to_eof(sock) == b""
        assert 0.3 < time.monotonic() - start < 3.0


def test_connections_past_the_cap_are_refused_with_503(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    held = [_connect(node) for _ in range(4)]
    try:
        time.sleep(0.1)
        with _connect(node) as extra:
            answer = _read_to_eof(extra)
        assert _status_and_code(answer) == (503, "too_many_connections")
        assert any("max_connections" in r.getMessage() for r in caplog.records)
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    with _connect(node) as sock:  # room again
        sock.sendall(GET + b"connection: close\r\n\r\n")
        assert _read_to_eof(sock).startswith(b"HTTP/1.1 200")


def test_ordinary_requests_pass_keep_alive_and_a_large_body_is_not_a_header(
    node: Node,
) -> None:
    with _connect(node) as sock:
        for _ in range(3):  # the head is watched again for each request of a connection
            sock.sendall(GET + b"\r\n")
            assert _read_response(sock).startswith(b"HTTP/1.1 200")
            time.sleep(0.3)  # under the header deadline each time, over it in total
    body = json.dumps({"model": "tee-nope", "messages": [], "pad": "a" * 100_000}).encode()
    with _connect(node) as sock:
        sock.sendall(
            b"POST /api/v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )
        status, _ = _status_and_code(_read_to_eof(sock))
    assert status not in (400, 408, 431)
