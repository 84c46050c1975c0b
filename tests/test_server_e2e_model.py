"""End to end with the real embedded model (SmolLM2-135M via llama.cpp): no fakes.

A node with the built-in default configuration, over a real socket; a
client written from the seed document (``cryptography`` only) fetches and
verifies the attestation, chats with E2EE, and checks the signature.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import running_server
from server_fakes import SeedClient, sse_events

from enclaved.attestation import AttestationReport, Policy, Verifier
from enclaved.crypto import eip191_recover_address, sha256_hex

pytest.importorskip("llama_cpp", reason="the embedded model needs llama-cpp-python")

pytestmark = [
    pytest.mark.model,
    pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning"),
]

E2EE = "e2ee-smollm2-135m"
TEE = "tee-smollm2-135m"


class Node:
    def __init__(self, url: str, data_dir: Path) -> None:
        self.api = url + "/api/v1"
        self.dev_root = (data_dir / "dev-root-ca.pem").read_text()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    from enclaved.server.app import create_app
    from enclaved.server.config import ServerConfig

    data_dir = tmp_path_factory.mktemp("model-node")
    app = create_app(ServerConfig.default(data_dir=data_dir))
    with running_server(app, startup_timeout=300) as url:
        yield Node(url, data_dir)


def _attest(node: Node, model: str) -> dict[str, Any]:
    nonce = os.urandom(32)
    r = httpx.get(
        node.api + "/tee/attestation", params={"model": model, "nonce": nonce.hex()}, timeout=60
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    # The seed document's checks...
    assert doc["verified"] is True and doc["nonce"] == nonce.hex()
    # ...and the real ones, client side, trusting only the node's development root.
    verdict = Verifier(Policy.development(node.dev_root)).verify(
        AttestationReport.from_json(r.content), nonce=nonce
    )
    assert verdict.ok, verdict.table()
    assert doc["model_name"] == "SmolLM2-135M-Instruct"
    return dict(doc)


def test_models(node: Node) -> None:
    data = httpx.get(node.api + "/models", params={"type": "text"}).json()["data"]
    assert [m["id"] for m in data] == [E2EE, TEE]
    caps = {m["id"]: m["model_spec"]["capabilities"] for m in data}
    assert caps[E2EE]["supportsE2EE"] is True and caps[TEE]["supportsE2EE"] is False


def test_e2ee_chat_signed(node: Node) -> None:
    att = _attest(node, E2EE)
    client = SeedClient()
    key = att["signing_key"]
    body = json.dumps(
        {
            "model": E2EE,
            "stream": True,
            "max_tokens": 24,
            "temperature": 0,
            "messages": [
                {
                    "role": "system",
                    "content": SeedClient.encrypt("Answer in one short sentence.", key),
                },
                {
                    "role": "user",
                    "content": SeedClient.encrypt("What is the capital of France?", key),
                },
            ],
        }
    ).encode()
    with httpx.stream(
        "POST",
        node.api + "/chat/completions",
        content=body,
        headers=client.headers(key),
        timeout=120,
    ) as r:
        assert r.status_code == 200
        assert r.headers["x-venice-tee"] == "true"
        raw = r.read()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-2]
    sealed = [
        c["delta"]["content"] for e in chunks for c in e["choices"] if c["delta"].get("content")
    ]
    assert sealed, "the model produced no content"
    text = "".join(client.decrypt(s) for s in sealed)
    assert text.strip()
    assert b"Paris" not in raw  # whatever it says, it is not in the clear
    usage = events[-2]["usage"]
    assert usage["prompt_tokens"] > 10 and 0 < usage["completion_tokens"] <= 24 + 1
    sig = httpx.get(
        node.api + "/tee/signature",
        params={"model": E2EE, "request_id": events[0]["id"]},
        timeout=10,
    ).json()
    assert sig["text"] == sha256_hex(body) + ":" + sha256_hex(raw)
    assert eip191_recover_address(sig["text"], sig["signature"]) == att["signing_address"]


def test_plain_tee_chat_non_streaming(node: Node) -> None:
    att = _attest(node, TEE)
    body = json.dumps(
        {
            "model": TEE,
            "max_tokens": 8,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}],
        }
    ).encode()
    r = httpx.post(node.api + "/chat/completions", content=body, timeout=120)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"] == TEE and doc["choices"][0]["message"]["content"]
    assert doc["choices"][0]["finish_reason"] in ("stop", "length")
    assert doc["usage"]["completion_tokens"] <= 9
    sig = httpx.get(
        node.api + "/tee/signature", params={"model": TEE, "request_id": doc["id"]}, timeout=10
    ).json()
    assert sig["text"] == sha256_hex(body) + ":" + sha256_hex(r.content)
    assert eip191_recover_address(sig["text"], sig["signature"]) == att["signing_address"]


def test_context_overflow_is_a_clean_400(node: Node) -> None:
    body = {"model": TEE, "stream": True, "messages": [{"role": "user", "content": "word " * 5000}]}
    r = httpx.post(node.api + "/chat/completions", json=body, timeout=120)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
