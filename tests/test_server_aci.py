"""ACI on the node over real sockets: the report, the headers, the receipts.

Every receipt is checked with the shared core's verifier (``enclaved.aci``)
over the bytes this client sent and received - streamed and not, E2EE and
not - under both revisions; the quote's REPORTDATA is the statement's hash;
a receipt is served only to the API key that made its request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aci_node_core import core_digest, core_statement, core_verify_receipt
from server_fakes import E2EE_MODEL, TEE_MODEL, NodeHandle, SeedClient, fake_node

from enclaved.attestation.tdx.parse import parse_quote
from enclaved.server.auth import hash_key

pytestmark = pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning")

KEY = "sk-aci-test-one"
OTHER = "sk-aci-test-two"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module", params=["current", "rev-a"])
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeHandle]:
    with fake_node(
        tmp_path_factory.mktemp("aci"),
        api_key_hashes=[hash_key(KEY), hash_key(OTHER)],
        aci={"revision": request.param},
    ) as handle:
        yield handle


def _aci(node: NodeHandle) -> Any:
    return node.app.state.node.aci


def _report(node: NodeHandle, nonce: str | None) -> dict[str, Any]:
    params = {} if nonce is None else {"nonce": nonce}
    r = httpx.get(node.url + "/v1/aci/attestation", params=params, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["x-aci-version"] == "aci/1"
    doc: dict[str, Any] = r.json()
    return doc


def _post(node: NodeHandle, body: bytes, headers: dict[str, str], stream: bool) -> httpx.Response:
    with httpx.stream(
        "POST",
        node.api + "/chat/completions",
        content=body,
        headers={"Content-Type": "application/json", **_auth(KEY), **headers},
        timeout=10,
    ) as r:
        r.read()
        return r


def _receipt(node: NodeHandle, receipt_id: str, key: str | None = KEY) -> httpx.Response:
    return httpx.get(
        node.url + f"/v1/aci/receipts/{receipt_id}",
        headers=_auth(key) if key else {},
        timeout=10,
    )


@pytest.mark.parametrize("nonce", ["ab" * 32, None])
def test_report_quote_binds_the_statement(node: NodeHandle, nonce: str | None) -> None:
    aci = _aci(node)
    doc = _report(node, nonce)
    keyset = doc["attestation"]["workload_keyset"]
    assert doc["api_version"] == "aci/1"
    assert doc["service_capabilities"]["serving"] == "direct"
    assert doc["workload_keyset_digest"] == core_digest(keyset) == aci.digest
    statement = core_statement(aci.revision, doc, nonce)
    expected = hashlib.sha256(statement).digest()
    assert doc["attestation"]["report_data"] == expected.hex()
    quote = parse_quote(bytes.fromhex(doc["attestation"]["evidence"]["quote"]))
    assert quote.report_data == expected + bytes(32)
    # The keys the node really uses are the ones listed.
    assert keyset["receipt_signing_keys"][0]["public_key"] == aci.receipt_key.public_key_hex
    assert keyset["e2ee_public_keys"][0]["public_key"] == node.key.public_key_hex[2:]


@pytest.mark.parametrize("nonce", ["AB" * 32, "ab" * 31, "zz" * 32, ""])
def test_report_refuses_a_malformed_nonce(node: NodeHandle, nonce: str) -> None:
    r = httpx.get(node.url + "/v1/aci/attestation", params={"nonce": nonce}, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["x-aci-keyset-digest"] == _aci(node).digest


def test_headers_on_every_response(node: NodeHandle) -> None:
    digest = _aci(node).digest
    for r in (
        httpx.get(node.api + "/models", timeout=10),
        httpx.get(node.url + "/nope", timeout=10),
        httpx.post(node.api + "/chat/completions", content=b"{}", timeout=10),  # 401
        httpx.get(node.url + "/health", timeout=10),
    ):
        assert r.headers["x-aci-version"] == "aci/1", r.request.url
        assert r.headers["x-aci-keyset-digest"] == digest, r.request.url


def test_tee_attestation_unchanged_plus_the_aci_block(node: NodeHandle) -> None:
    r = httpx.get(
        node.api + "/tee/attestation", params={"model": TEE_MODEL, "nonce": "cd" * 32}, timeout=30
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["signing_address"] == node.key.address
    assert doc["aci"]["workload_keyset_digest"] == _aci(node).digest


@pytest.mark.parametrize(
    ("model", "stream", "e2ee"),
    [
        (TEE_MODEL, False, False),
        (TEE_MODEL, True, False),
        (E2EE_MODEL, True, True),
    ],
)
def test_every_answer_has_a_receipt_over_the_bytes_received(
    node: NodeHandle, model: str, stream: bool, e2ee: bool
) -> None:
    aci = _aci(node)
    headers: dict[str, str] = {}
    content = "hello receipts"
    if e2ee:
        client = SeedClient()
        content = SeedClient.encrypt(content, node.key.public_key_hex)
        headers = client.headers(node.key.public_key_hex)
    # Odd formatting: the receipt is over these bytes, not a re-serialization.
    body = (
        '{"model": "'
        + model
        + '",  "stream": '
        + json.dumps(stream)
        + ', "messages": [{"role":"user","content":"'
        + content
        + '"}]}'
    ).encode()
    r = _post(node, body, headers, stream)
    assert r.status_code == 200
    receipt_id = r.headers["x-receipt-id"]
    assert r.headers["x-aci-keyset-digest"] == aci.digest
    got = _receipt(node, receipt_id)
    assert got.status_code == 200, got.text
    receipt = got.json()
    keyset = _report(node, "ef" * 32)["attestation"]["workload_keyset"]
    core_verify_receipt(aci.revision, receipt, keyset, aci.digest, body, r.content)
    assert receipt["chat_id"] == receipt_id and receipt["model"] == model
    kinds = [e["type"] for e in receipt["event_log"]]
    if aci.revision == "rev-a":
        # rev-a §8.4: the node runs the parsed request (decrypted under E2EE),
        # not the bytes received, and says so; an E2EE answer is re-encrypted.
        assert [e["seq"] for e in receipt["event_log"]] == list(range(len(kinds)))
        assert kinds[:3] == [
            "request.received",
            "request.forwarded",
            "transparency.request_modified",
        ]
        assert ("transparency.response_modified" in kinds) == e2ee
    else:
        assert kinds == ["request.received", "request.forwarded", "response.returned"]
    # One byte more in the answer, or in the request: refused.
    with pytest.raises(Exception):  # noqa: B017 - the core's own error type
        core_verify_receipt(aci.revision, receipt, keyset, aci.digest, body, r.content + b"\n")
    with pytest.raises(Exception):  # noqa: B017
        core_verify_receipt(aci.revision, receipt, keyset, aci.digest, body + b" ", r.content)
    # The same receipt beside the EIP-191 signature in /tee/signature.
    sig = httpx.get(
        node.api + "/tee/signature",
        params={"model": model, "request_id": receipt_id},
        headers=_auth(KEY),
        timeout=10,
    ).json()
    assert sig["receipt"] == receipt
    assert (
        sig["text"]
        == hashlib.sha256(body).hexdigest() + ":" + hashlib.sha256(r.content).hexdigest()
    )


def test_receipts_are_bound_to_the_api_key(node: NodeHandle) -> None:
    body = json.dumps(
        {"model": TEE_MODEL, "messages": [{"role": "user", "content": "mine"}]}
    ).encode()
    r = _post(node, body, {}, False)
    receipt_id = r.headers["x-receipt-id"]
    assert _receipt(node, receipt_id).status_code == 200
    missing = _receipt(node, receipt_id, key=None)
    assert missing.status_code == 401
    other = _receipt(node, receipt_id, key=OTHER)
    unknown = _receipt(node, "chatcmpl-doesnotexist", key=OTHER)
    # Another key's receipt is exactly an unknown one.
    assert other.status_code == unknown.status_code == 404
    assert other.json() == unknown.json()
    sig = httpx.get(
        node.api + "/tee/signature",
        params={"model": TEE_MODEL, "request_id": receipt_id},
        headers=_auth(OTHER),
        timeout=10,
    ).json()
    assert "receipt" not in sig and sig["request_id"] == receipt_id


def test_restart_makes_a_new_keyset(tmp_path: Path) -> None:
    with fake_node(tmp_path / "a") as a, fake_node(tmp_path / "b") as b:
        assert _aci(a).digest != _aci(b).digest
        assert _aci(a).receipt_key.public_key != _aci(b).receipt_key.public_key


def test_aci_can_be_switched_off(tmp_path: Path) -> None:
    with fake_node(tmp_path, aci={"enabled": False}) as n:
        r = httpx.get(n.api + "/models", timeout=10)
        assert "x-aci-version" not in r.headers
        assert httpx.get(n.url + "/v1/aci/attestation", timeout=10).status_code == 404


PROVENANCE = {
    "repo_url": "https://example.org/enclaved.git",
    "repo_commit": "0123456789abcdef0123456789abcdef01234567",
    "image_digest": "sha256:" + "ab" * 32,
}


def _verify_report(n: NodeHandle, nonce: str, **policy: Any) -> Any:
    from enclaved.attestation import Policy, Verifier
    from enclaved.attestation.formats import verify_document

    root = (n.app.state.node.config.data_dir / "dev-root-ca.pem").read_text()
    verifier = Verifier(dataclasses.replace(Policy.development(root), **policy))
    doc = _report(n, nonce)
    return doc, verify_document(verifier, doc, nonce=bytes.fromhex(nonce), format="aci-current")


def test_stated_provenance_is_measured(tmp_path: Path) -> None:
    """[aci] provenance is stated in the report, and the simulated app compose
    names it (as a dstack compose names its image), so that aci.provenance
    passes: the report carries the app compose whose hash RTMR3 measured."""
    with fake_node(tmp_path, aci=PROVENANCE) as n:
        doc, verdict = _verify_report(n, "12" * 32, allow_missing_provenance=False)
        assert verdict.ok, verdict.table()
        row = verdict.component("gateway").get("aci.provenance")
        assert row.status.value == "pass", row.reason
        att = doc["attestation"]
        assert att["source_provenance"] == {**PROVENANCE, "image_provenance": None}
        compose = json.loads(att["evidence"]["app_compose"])
        assert compose["source_provenance"] == PROVENANCE
        assert json.loads(att["evidence"]["vm_config"])["image"]


def test_without_provenance_the_compose_is_unchanged(tmp_path: Path) -> None:
    """Nothing stated: null provenance, the simulated compose as it always was
    (its documented hash holds), and aci.provenance skipped: waived by the
    development policy, enforced by one that does not waive it."""
    from enclaved.evidence.simulated_deployment import app_compose

    with fake_node(tmp_path) as n:
        doc, verdict = _verify_report(n, "34" * 32)
        assert verdict.ok, verdict.table()
        assert doc["attestation"]["evidence"]["app_compose"] == app_compose(
            [m.id for m in n.app.state.node.config.models]
        )
        assert set(doc["attestation"]["source_provenance"].values()) == {None}
        row = verdict.component("gateway").get("aci.provenance")
        assert row.status.value == "skipped" and not row.enforced
        _, strict = _verify_report(n, "34" * 32, allow_missing_provenance=False)
        assert [c.id for c in strict.component("gateway") if not c.ok] == ["aci.provenance"]


@pytest.mark.parametrize(
    ("aci", "message"),
    [
        ({"repo_url": "https://example.org/x.git"}, "give both or neither"),
        ({"repo_commit": "ab" * 20}, "give both or neither"),
        ({"repo_url": "http://example.org/x", "repo_commit": "ab" * 20}, "https:// URL"),
        ({"repo_url": "https://example.org/x", "repo_commit": "abc123"}, "full git commit"),
        ({"image_digest": "sha256:ABC"}, "64 lowercase hex"),
        ({"image_digest": 7}, "must be a string"),
    ],
)
def test_provenance_settings_are_checked(tmp_path: Path, aci: dict[str, Any], message: str) -> None:
    from enclaved.errors import ConfigError
    from enclaved.server.config import ServerConfig

    with pytest.raises(ConfigError, match=message):
        ServerConfig.from_dict({"data_dir": str(tmp_path), "aci": aci})


def test_a_provenance_no_compose_backs_is_said_at_start(tmp_path: Path) -> None:
    """The operator hears once, at start, that clients will not count a stated
    provenance (no app_compose in the evidence, or one that names neither the
    image nor the commit), instead of from every client's refusal."""
    from enclaved.server.app import provenance_problem

    stated = {"image_digest": PROVENANCE["image_digest"]}
    assert provenance_problem({}, {}) is None
    assert "no app_compose" in (provenance_problem(stated, {"tcb_info": {}}) or "")
    other = {"tcb_info": {"app_compose": '{"image": "registry.example.com/x@sha256:00"}'}}
    assert "names neither" in (provenance_problem(stated, other) or "")
    named = {"tcb_info": {"app_compose": f'{{"image": "x@{stated["image_digest"]}"}}'}}
    assert provenance_problem(stated, named) is None
    # The simulated TEE names what is stated: no warning there.
    with fake_node(tmp_path, aci=PROVENANCE) as n:
        info = n.app.state.node.evidence.info()
        assert provenance_problem(PROVENANCE, info) is None
