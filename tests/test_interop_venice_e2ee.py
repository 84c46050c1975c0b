"""Interoperability: ``venice-e2ee`` from npm, written for the production
service, chats with the README's node with its default verification.

The package (pinned at 0.5.3 in ``tests/interop/node/package-lock.json``)
fetches the attestation with its own nonce, runs its default "binding"
policy (nonce and signing address in REPORTDATA, debug off, and the
server's own ``server_verification`` cross-checked), encrypts the prompt,
and decrypts the stream. The node is the real ``scripts/serve``
(``conftest.user_node``): embedded model, simulated TEE, no GPUs. A node
without GPUs must not report a failed GPU verification, which this client
refuses (``server_verification.nvidia`` is ``null`` there). The answer's
signature is then checked here over the exact bytes the package sent and
received.
"""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

import httpx
import pytest
from real_node import UserNode
from test_interop_seed_client import NODE_DIR, _node_env, _sse_events, node

from enclaved.crypto import eip191_recover_address, sha256_hex

__all__ = ["node"]

pytestmark = [pytest.mark.model]

PROMPT = "What is 2+2? Answer briefly."


def _run(node: str, user_node: UserNode, model: str) -> dict[str, Any]:
    origin = user_node.base_url.removesuffix("/v1")
    done = subprocess.run(
        [node, "venice_e2ee_client.mjs", origin, model, PROMPT],
        cwd=NODE_DIR,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=_node_env(API_KEY="unused"),
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_venice_e2ee_accepts_the_node_and_chats_end_to_end(node: str, user_node: UserNode) -> None:
    run = _run(node, user_node, "e2ee-smollm2-135m")
    assert "error" not in run, run.get("error")
    att = run["attestation"]
    assert att["errors"] == [] and att["verificationLevel"] == "binding"
    assert att["nonceVerified"] and att["signingKeyBound"] and not att["debugMode"]
    assert run["status"] == 200 and run["text"].strip()

    request, response = run["request_body"].encode(), base64.b64decode(run["response_b64"])
    assert PROMPT.encode() not in request
    events = _sse_events(response)
    assert events[-1] == "[DONE]"
    completion_id = events[0]["id"]
    doc = httpx.get(
        f"{user_node.base_url}/tee/signature",
        params={"model": "e2ee-smollm2-135m", "request_id": completion_id},
        timeout=10,
    ).json()
    assert doc["text"] == sha256_hex(request) + ":" + sha256_hex(response)
    attested = httpx.get(
        f"{user_node.base_url}/tee/attestation", params={"model": "e2ee-smollm2-135m"}, timeout=30
    ).json()["signing_address"]
    assert eip191_recover_address(doc["text"], doc["signature"]) == attested.lower()
