"""Response signatures, checked the way a client checks them.

The client recomputes both hashes from the bytes it sent and the bytes it
received (every SSE byte, ciphertext included), recovers the EIP-191 signer,
and compares it with the attestation's ``signing_address``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fakes import (
    E2EE_MODEL,
    TEE_MODEL,
    FakeBackend,
    NodeHandle,
    SeedClient,
    fake_node,
    sse_events,
)

from enclaved.crypto import KeyPair, eip191_recover_address
from enclaved.server.store import SqliteStore

# The node verifies its own simulated evidence under the development policy, which warns by design.
pytestmark = pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _attested_address(node: NodeHandle, model: str) -> str:
    r = httpx.get(
        node.api + "/tee/attestation", params={"model": model, "nonce": "ab" * 32}, timeout=30
    )
    assert r.status_code == 200, r.text
    return str(r.json()["signing_address"])


def _signature(node: NodeHandle, model: str, request_id: str) -> httpx.Response:
    return httpx.get(
        node.api + "/tee/signature", params={"model": model, "request_id": request_id}, timeout=10
    )


def _check_signature(
    node: NodeHandle, model: str, request_id: str, sent: bytes, received: bytes
) -> dict[str, Any]:
    r = _signature(node, model, request_id)
    assert r.status_code == 200, r.text
    assert r.headers["x-venice-tee"] == "true"
    doc = r.json()
    # PROTOCOL.md's fields in its order; then the ACI receipt (tests/test_server_aci.py).
    assert [k for k in doc if k != "receipt"] == [
        "text",
        "signature",
        "signing_address",
        "signing_algo",
        "request_id",
        "model",
    ]
    assert doc["text"] == _sha(sent) + ":" + _sha(received)
    assert doc["request_id"] == request_id
    assert doc["model"] == model
    assert doc["signing_algo"] == "ecdsa"
    sig = bytes.fromhex(doc["signature"][2:])
    assert len(sig) == 65 and sig[64] in (27, 28)
    attested = _attested_address(node, model)
    assert eip191_recover_address(doc["text"], doc["signature"]) == attested.lower()
    assert doc["signing_address"] == attested
    return dict(doc)


def _stream(
    node: NodeHandle, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    with httpx.stream(
        "POST",
        node.api + "/chat/completions",
        content=body,
        headers={"Content-Type": "application/json", **(headers or {})},
        timeout=10,
    ) as r:
        return r.status_code, r.read()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeHandle]:
    with fake_node(tmp_path_factory.mktemp("sig")) as handle:
        yield handle


def test_streamed_e2ee_completion(node: NodeHandle) -> None:
    client = SeedClient()
    k = node.key.public_key_hex
    # Unusual but valid JSON formatting: the hash is over these bytes, not a re-serialization.
    envelope = SeedClient.encrypt("hash me exactly", k)
    body = (
        '{ "stream" : true,\n  "messages": [ {"role":"user","content":"' + envelope + '"} ],\n'
        ' "model":"' + E2EE_MODEL + '" }  '
    ).encode()
    status, raw = _stream(node, body, client.headers(k))
    assert status == 200
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == [] and "usage" in events[-2]
    ids = {e["id"] for e in events[:-1]}
    assert len(ids) == 1
    (request_id,) = ids
    assert request_id.startswith("chatcmpl-")
    # Ciphertext went over the wire; the signature covers exactly it.
    contents = [
        c["delta"]["content"]
        for e in events[:-1]
        for c in e["choices"]
        if c["delta"].get("content")
    ]
    assert contents and all(len(c) >= 186 for c in contents)
    assert "".join(client.decrypt(c) for c in contents) == "".join(node.backend.pieces)
    _check_signature(node, E2EE_MODEL, request_id, body, raw)


def test_streamed_plain_completion(node: NodeHandle) -> None:
    body = json.dumps(
        {"model": TEE_MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    status, raw = _stream(node, body)
    assert status == 200
    request_id = sse_events(raw)[0]["id"]
    _check_signature(node, TEE_MODEL, request_id, body, raw)


def test_e2ee_model_used_without_e2ee(node: NodeHandle) -> None:
    body = json.dumps(
        {
            "model": E2EE_MODEL,
            "stream": True,
            "messages": [{"role": "user", "content": "plain"}],
            "venice_parameters": {"enable_e2ee": False},
        }
    ).encode()
    status, raw = _stream(node, body)
    assert status == 200
    events = sse_events(raw)
    text = "".join(c["delta"].get("content") or "" for e in events[:-1] for c in e["choices"])
    assert text == "".join(node.backend.pieces)
    _check_signature(node, E2EE_MODEL, events[0]["id"], body, raw)


def test_non_streaming_completion(node: NodeHandle) -> None:
    body = json.dumps(
        {"model": TEE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    r = httpx.post(node.api + "/chat/completions", content=body, timeout=10)
    assert r.status_code == 200
    doc = r.json()
    assert doc["object"] == "chat.completion"
    assert doc["choices"][0]["message"]["content"] == "".join(node.backend.pieces)
    _check_signature(node, TEE_MODEL, doc["id"], body, r.content)


def test_request_hash_covers_the_bytes_as_received(node: NodeHandle) -> None:
    body = json.dumps(
        {"model": TEE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    r = httpx.post(node.api + "/chat/completions", content=body, timeout=10)
    other = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}], "model": TEE_MODEL}
    ).encode()
    doc = _signature(node, TEE_MODEL, r.json()["id"]).json()
    assert doc["text"].split(":")[0] == _sha(body) != _sha(other)


def test_unknown_and_missing_ids(node: NodeHandle) -> None:
    r = _signature(node, TEE_MODEL, "chatcmpl-" + "0" * 32)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "signature_not_found"
    r = _signature(node, TEE_MODEL, "../../etc/passwd")
    assert r.status_code == 404
    r = httpx.get(node.api + "/tee/signature", params={"model": TEE_MODEL}, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "missing_required_parameter"
    r = _signature(node, "tee-nope", "chatcmpl-x")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "Model tee-nope not found"


def test_model_must_match_the_record(node: NodeHandle) -> None:
    body = json.dumps(
        {"model": TEE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    request_id = httpx.post(node.api + "/chat/completions", content=body, timeout=10).json()["id"]
    assert _signature(node, E2EE_MODEL, request_id).status_code == 404
    # Without ``model`` the id alone finds it (docs/server.md).
    r = httpx.get(node.api + "/tee/signature", params={"request_id": request_id}, timeout=10)
    assert r.status_code == 200


def test_one_ephemeral_key_per_response_by_default(node: NodeHandle) -> None:
    client = SeedClient()
    k = node.key.public_key_hex
    body = json.dumps(
        {
            "model": E2EE_MODEL,
            "stream": True,
            "messages": [{"role": "user", "content": SeedClient.encrypt("x", k)}],
        }
    ).encode()
    _, raw = _stream(node, body, client.headers(k))
    envs = [
        c["delta"]["content"]
        for e in sse_events(raw)[:-1]
        for c in e["choices"]
        if c["delta"].get("content")
    ]
    # The first token goes out alone; the pieces that arrive together after it
    # may be merged into one envelope (server/chat/batching.py).
    assert len(envs) >= 2
    assert "".join(client.decrypt(e) for e in envs) == "".join(node.backend.pieces)
    assert len({e[:130] for e in envs}) == 1  # one ephemeral public key
    assert len({e[130:154] for e in envs}) == len(envs)  # a fresh IV per chunk


def test_key_per_chunk_option(tmp_path: Path) -> None:
    with fake_node(tmp_path, e2ee_key_per_chunk=True) as n:
        client = SeedClient()
        k = n.key.public_key_hex
        body = json.dumps(
            {
                "model": E2EE_MODEL,
                "stream": True,
                "messages": [{"role": "user", "content": SeedClient.encrypt("x", k)}],
            }
        ).encode()
        _, raw = _stream(n, body, client.headers(k))
        envs = [
            c["delta"]["content"]
            for e in sse_events(raw)[:-1]
            for c in e["choices"]
            if c["delta"].get("content")
        ]
        assert len({e[:130] for e in envs}) == len(envs) >= 2
        assert "".join(client.decrypt(e) for e in envs) == "".join(n.backend.pieces)


def test_reasoning_is_sealed_too(tmp_path: Path) -> None:
    backend = FakeBackend(reasoning=["think", "ing"])
    with fake_node(tmp_path, backend=backend) as n:
        client = SeedClient()
        k = n.key.public_key_hex
        body = json.dumps(
            {
                "model": E2EE_MODEL,
                "stream": True,
                "messages": [{"role": "user", "content": SeedClient.encrypt("x", k)}],
            }
        ).encode()
        _, raw = _stream(n, body, client.headers(k))
        events = sse_events(raw)[:-1]
        sealed = [
            c["delta"]["reasoning_content"]
            for e in events
            for c in e["choices"]
            if c["delta"].get("reasoning_content")
        ]
        assert [client.decrypt(s) for s in sealed] == ["think", "ing"]
        assert b"think" not in raw
        _check_signature(n, E2EE_MODEL, events[0]["id"], body, raw)


def test_survives_restart_with_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "sigs.db"
    key = KeyPair.generate()
    body = json.dumps(
        {"model": TEE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    store = SqliteStore(db)
    with fake_node(tmp_path, store=store, key=key) as first:
        r = httpx.post(first.api + "/chat/completions", content=body, timeout=10)
        request_id = r.json()["id"]
        signed = _check_signature(first, TEE_MODEL, request_id, body, r.content)
    import asyncio

    asyncio.run(store.close())
    # A new process would make a new key; the old record still verifies against the old address.
    store2 = SqliteStore(db)
    try:
        with fake_node(tmp_path, store=store2) as second:
            doc = _signature(second, TEE_MODEL, request_id).json()
            assert doc == signed
            assert eip191_recover_address(doc["text"], doc["signature"]) == key.address
    finally:
        asyncio.run(store2.close())


@pytest.mark.parametrize(
    ("backend", "code"),
    [
        (FakeBackend(fail_after=2), "upstream_error"),
        (FakeBackend(crash_after=1), "internal_error"),
    ],
)
def test_mid_stream_failure_has_no_signature(
    tmp_path: Path, backend: FakeBackend, code: str
) -> None:
    with fake_node(tmp_path, backend=backend) as n:
        body = json.dumps(
            {"model": TEE_MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        ).encode()
        status, raw = _stream(n, body)
        assert status == 200  # the status line was already sent
        events = sse_events(raw)
        assert events[-1] == "[DONE]"
        error = events[-2]
        assert set(error) == {"error"}
        assert error["error"]["type"] == "server_error"
        assert error["error"]["code"] == code
        assert set(error["error"]) == {"message", "type", "code"}
        assert "secret prompt" not in raw.decode()  # exception text never reaches the client
        time.sleep(0.1)
        assert _signature(n, TEE_MODEL, events[0]["id"]).status_code == 404


def test_client_disconnect_stops_generation_and_signs_nothing(tmp_path: Path) -> None:
    backend = FakeBackend(pieces=["a", "b", "c", "d"], hang_after=2)
    with fake_node(tmp_path, backend=backend) as n:
        body = json.dumps(
            {"model": TEE_MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        ).encode()
        with httpx.stream("POST", n.api + "/chat/completions", content=body, timeout=10) as r:
            first = next(r.iter_lines())
        request_id = json.loads(first[len("data: ") :])["id"]
        deadline = time.monotonic() + 5
        while backend.cancellations == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert backend.cancellations == 1
        assert _signature(n, TEE_MODEL, request_id).status_code == 404


@pytest.mark.redis
@pytest.mark.skipif(
    not __import__("os").environ.get("ENCLAVED_TEST_REDIS_URL"),
    reason="set ENCLAVED_TEST_REDIS_URL to a Redis server to run the replica test",
)
def test_replicas_share_signatures_through_redis(tmp_path: Path) -> None:
    """A completion served by one replica can be checked through another."""
    import os

    url = os.environ["ENCLAVED_TEST_REDIS_URL"]
    redis = {"kind": "redis", "url": url, "ttl_seconds": 60}
    with (
        fake_node(tmp_path / "a", signatures=redis) as a,
        fake_node(tmp_path / "b", signatures=redis) as b,
    ):
        assert type(a.store).__name__ == "RedisStore"
        body = json.dumps(
            {"model": TEE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        r = httpx.post(a.api + "/chat/completions", content=body, timeout=10)
        doc = _signature(b, TEE_MODEL, r.json()["id"]).json()
        assert doc["text"] == _sha(body) + ":" + _sha(r.content)
        assert (
            eip191_recover_address(doc["text"], doc["signature"]) == a.key.address != b.key.address
        )
