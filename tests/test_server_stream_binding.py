"""The node's binding of its response key to the request (docs/server.md,
"Authenticated E2EE streams"), checked the way a client that knows the
extension checks it - and ignored, unharmed, by one that does not (the
seed document's client, which only decrypts).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_fakes import E2EE_MODEL, TEE_MODEL, NodeHandle, SeedClient, fake_node, sse_events

from enclaved.crypto import binding_text, eip191_recover_address
from enclaved.protocol.headers import BINDING_SIGNATURE, RESPONSE_KEY

pytestmark = pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeHandle]:
    with fake_node(tmp_path_factory.mktemp("binding")) as handle:
        yield handle


def _e2ee_body(node_key_hex: str, text: str = "bind me") -> bytes:
    # Spaces and key order of our own: the hash is over these bytes.
    envelope = SeedClient.encrypt(text, node_key_hex)
    return (
        '{"messages": [{"role": "user", "content": "' + envelope + '"}], '
        '"stream": true, "model": "' + E2EE_MODEL + '"}'
    ).encode()


def _post(node: NodeHandle, body: bytes, headers: dict[str, str]) -> httpx.Response:
    r = httpx.post(
        node.api + "/chat/completions",
        content=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )
    return r


def _contents(raw: bytes) -> list[str]:
    return [
        c["delta"]["content"]
        for e in sse_events(raw)[:-1]
        for c in e["choices"]
        if c["delta"].get("content")
    ]


def test_an_e2ee_answer_binds_its_response_key_to_the_request(node: NodeHandle) -> None:
    client = SeedClient()
    k = node.key.public_key_hex
    body = _e2ee_body(k)
    r = _post(node, body, client.headers(k))
    assert r.status_code == 200
    response_key = r.headers[RESPONSE_KEY]
    signature = r.headers[BINDING_SIGNATURE]
    assert len(response_key) == 130 and response_key.startswith("04")
    assert response_key == response_key.lower()
    assert signature.startswith("0x") and len(signature) == 132
    # The text, written out byte for byte as docs/server.md specifies it.
    text = (
        "enclaved-e2ee-binding/1:"
        + hashlib.sha256(body).hexdigest()
        + ":"
        + client.public_key_hex
        + ":"
        + response_key
    )
    assert len(text) == 350
    assert binding_text(hashlib.sha256(body).hexdigest(), client.public_key_hex, response_key) == (
        text
    )
    assert eip191_recover_address(text, signature) == node.key.address.lower()
    # Every envelope of the answer is under that key; the seed client still reads it.
    envs = _contents(r.content)
    assert envs and {e[:130] for e in envs} == {response_key}
    assert "".join(client.decrypt(e) for e in envs) == "".join(node.backend.pieces)


def test_each_answer_has_its_own_response_key(node: NodeHandle) -> None:
    k = node.key.public_key_hex
    keys = set()
    for _ in range(3):
        client = SeedClient()
        r = _post(node, _e2ee_body(k), client.headers(k))
        keys.add(r.headers[RESPONSE_KEY])
    assert len(keys) == 3


def test_the_client_key_in_the_text_is_lowercase_whatever_case_was_sent(node: NodeHandle) -> None:
    client = SeedClient()
    k = node.key.public_key_hex
    headers = client.headers(k)
    headers["X-Venice-TEE-Client-Pub-Key"] = client.public_key_hex.upper()
    body = _e2ee_body(k)
    r = _post(node, body, headers)
    assert r.status_code == 200
    text = binding_text(
        hashlib.sha256(body).hexdigest(), client.public_key_hex, r.headers[RESPONSE_KEY]
    )
    assert eip191_recover_address(text, r.headers[BINDING_SIGNATURE]) == node.key.address.lower()


def test_no_binding_without_e2ee_nor_on_errors(node: NodeHandle) -> None:
    body = json.dumps(
        {"model": TEE_MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    r = _post(node, body, {})
    assert r.status_code == 200
    assert RESPONSE_KEY not in r.headers and BINDING_SIGNATURE not in r.headers
    # A refused E2EE request: no response key exists.
    client = SeedClient()
    r = _post(node, b'{"model": "' + E2EE_MODEL.encode() + b'"}', client.headers("04" + "00" * 64))
    assert r.status_code >= 400
    assert RESPONSE_KEY not in r.headers and BINDING_SIGNATURE not in r.headers


def test_no_binding_with_a_key_per_chunk(tmp_path: Path) -> None:
    """``e2ee_key_per_chunk``: no one response key to bind; the stream is authenticated
    by its signature at the end, as without the extension."""
    with fake_node(tmp_path, e2ee_key_per_chunk=True) as n:
        client = SeedClient()
        k = n.key.public_key_hex
        r = _post(n, _e2ee_body(k), client.headers(k))
        assert r.status_code == 200
        assert RESPONSE_KEY not in r.headers and BINDING_SIGNATURE not in r.headers
        assert "".join(client.decrypt(e) for e in _contents(r.content)) == "".join(n.backend.pieces)
