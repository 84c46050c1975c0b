"""The SDK's ``aci=``: the service's keyset established, every answer's receipt checked.

A real enclaved node (simulated TEE) on loopback, both revisions; the
client under the development policy with its root trusted. Between them, a
recording inner transport that can also rewrite what the node answers (a
man in the middle at the HTTP layer): a forged receipt, a receipt for other
bytes, another node's report, a changed keyset digest, a missing receipt -
each refused with its own check id, nothing handed on as verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from client_server import E2EE_MODEL, FAKE_ANSWER, TEE_MODEL, RealServer, enclaved_server
from conftest import running_server

import enclaved
from enclaved.attestation import InsecurePolicyWarning, Policy
from enclaved.cli import main
from enclaved.client import last_keyset, last_receipt, last_signature
from enclaved.client.proxy import create_proxy_app
from enclaved.errors import ConfigError, VerificationError

MESSAGES: list[Any] = [{"role": "user", "content": "a receipt for canary-5c2a"}]
#: What a development node states of its source, measured into its simulated compose.
PROVENANCE = {
    "repo_url": "https://example.org/enclaved.git",
    "repo_commit": "0123456789abcdef0123456789abcdef01234567",
}

Rewrite = Callable[[httpx.Request, httpx.Response, bytes], bytes]


@pytest.fixture(autouse=True)
def _quiet_dev_policy() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePolicyWarning)
        yield


@pytest.fixture(scope="module", params=["current", "rev-a"])
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RealServer, str]]:
    revision: str = request.param
    with enclaved_server(
        tmp_path_factory.mktemp("aci-client"), aci={"revision": revision, **PROVENANCE}
    ) as server:
        yield server, revision


@dataclasses.dataclass
class Recorder(httpx.BaseTransport):
    """The real transport, recording each request's path; ``rewrite`` the answers
    whose path contains a key."""

    rewrite: dict[str, Rewrite] = dataclasses.field(default_factory=dict)
    paths: list[str] = dataclasses.field(default_factory=list)
    inner: httpx.HTTPTransport = dataclasses.field(default_factory=httpx.HTTPTransport)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        response = self.inner.handle_request(request)
        for suffix, change in self.rewrite.items():
            if suffix in request.url.path:
                body = change(request, response, response.read())
                response.close()
                headers = [
                    (k, v)
                    for k, v in response.headers.multi_items()
                    if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
                ]
                return httpx.Response(response.status_code, headers=headers, content=body)
        return response

    def count(self, suffix: str) -> int:
        return sum(p.endswith(suffix) for p in self.paths)

    def close(self) -> None:
        self.inner.close()


class AsyncRecorder(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await self.inner.handle_async_request(request)


def _client(
    server: RealServer, revision: str, recorder: Recorder | None = None, **kw: Any
) -> openai.OpenAI:
    return enclaved.OpenAI(
        base_url=server.base_url,
        api_key="unused",
        trust_root=server.dev_root,
        aci=revision,
        transport=recorder or Recorder(),
        max_retries=0,
        **kw,
    )


def _rows(check: Any) -> dict[str, str]:
    return {c.id: c.status.value for c in check.verdict}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", [E2EE_MODEL, TEE_MODEL])
def test_every_answer_has_its_receipt_checked(
    node: tuple[RealServer, str], model: str, stream: bool
) -> None:
    server, revision = node
    recorder = Recorder()
    c = _client(server, revision, recorder)
    for _ in range(2):
        if stream:
            chunks = c.chat.completions.create(model=model, messages=MESSAGES, stream=True)
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        else:
            reply = c.chat.completions.create(model=model, messages=MESSAGES)
            text = reply.choices[0].message.content or ""
        assert text == FAKE_ANSWER
        receipt = last_receipt(c)
        assert receipt is not None and receipt.ok
        rows = _rows(receipt)
        for row in ("signature", "document", "request", "response"):
            assert rows[f"aci.receipt.{row}"] == "pass", receipt.verdict.table()
        # The receipt is the one of this answer, in the node's keyset.
        assert receipt.receipt_id == last_signature(c).request_id
        assert receipt.keyset_digest == last_keyset(c).digest
    keyset = last_keyset(c)
    assert keyset is not None and keyset.revision == revision
    assert {c.id: c.status.value for c in keyset.verdict}["aci.channel"] == "pass"
    assert {c.id: c.status.value for c in keyset.verdict}["aci.report_data"] == "pass"
    assert {c.id: c.status.value for c in keyset.verdict}["aci.provenance"] == "pass"
    # Established once for both answers; the receipts came inside /tee/signature.
    assert recorder.count("/aci/attestation") == 1
    assert recorder.count("/aci/receipts/" + receipt.receipt_id) == 0


def test_async_client_checks_receipts(node: tuple[RealServer, str]) -> None:
    server, revision = node

    async def main() -> None:
        recorder = AsyncRecorder()
        c = enclaved.AsyncOpenAI(
            base_url=server.base_url,
            api_key="unused",
            trust_root=server.dev_root,
            aci=revision,
            transport=recorder,
            max_retries=0,
        )
        chunks = await c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in chunks if ch.choices])
        assert text == FAKE_ANSWER
        receipt = last_receipt(c)
        assert receipt is not None and receipt.ok
        assert sum(p.endswith("/aci/attestation") for p in recorder.paths) == 1
        await c.close()

    asyncio.run(main())


def test_the_revision_is_the_clients_choice(node: tuple[RealServer, str]) -> None:
    """Told the other revision, the client recomputes another statement: refused."""
    server, revision = node
    other = "rev-a" if revision == "current" else "current"
    c = _client(server, other)
    with pytest.raises(VerificationError) as err:
        c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert "aci/1 attestation" in str(err.value)


def _receipt_of(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    doc = json.loads(body)
    return doc, doc["receipt"]


def _forge_response_hash(req: httpx.Request, resp: httpx.Response, body: bytes) -> bytes:
    doc, receipt = _receipt_of(body)
    for event in receipt["event_log"]:
        if event["type"] == "response.returned":
            for field in ("body_hash", "wire_hash"):
                if field in event:
                    event[field] = "sha256:" + "00" * 32
    return json.dumps(doc).encode()


def _drop_receipt(req: httpx.Request, resp: httpx.Response, body: bytes) -> bytes:
    doc = json.loads(body)
    doc.pop("receipt", None)
    return json.dumps(doc).encode()


def _not_found(req: httpx.Request, resp: httpx.Response, body: bytes) -> bytes:
    return b'{"error":{"message":"Receipt not found","type":"not_found","code":"not_found"}}'


def test_a_receipt_over_other_bytes_is_refused(node: tuple[RealServer, str]) -> None:
    """A changed hash breaks the receipt's signature: the answer is not handed on."""
    server, revision = node
    c = _client(server, revision, Recorder(rewrite={"/tee/signature": _forge_response_hash}))
    with pytest.raises(VerificationError) as err:
        c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert "aci.receipt.signature" in str(err.value)
    assert _rows(last_receipt(c))["aci.receipt.signature"] == "fail"
    # After a failure everything is established afresh.
    assert last_keyset(c) is not None
    assert not c._client._transport._core.keysets  # type: ignore[attr-defined]


def test_the_receipt_is_fetched_when_not_embedded(node: tuple[RealServer, str]) -> None:
    server, revision = node
    recorder = Recorder(rewrite={"/tee/signature": _drop_receipt})
    c = _client(server, revision, recorder)
    c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    receipt = last_receipt(c)
    assert receipt is not None and receipt.ok
    assert recorder.count("/aci/receipts/" + receipt.receipt_id) == 1


def test_no_receipt_is_a_failure(node: tuple[RealServer, str]) -> None:
    server, revision = node
    recorder = Recorder(rewrite={"/tee/signature": _drop_receipt})
    recorder.rewrite["/aci/receipts/"] = _not_found  # an error document, not a receipt
    c = _client(server, revision, recorder)
    with pytest.raises(VerificationError) as err:
        c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert "aci.receipt" in str(err.value)


def test_another_nodes_keyset_is_refused(node: tuple[RealServer, str]) -> None:
    """The report of another node - genuinely attested under the same root,
    for our nonce - does not list the key we attested through
    ``/tee/attestation``: aci.channel fails before the prompt is sent."""
    server, revision = node
    with enclaved_server(server.data_dir, aci={"revision": revision, **PROVENANCE}) as other:

        def swap(req: httpx.Request, resp: httpx.Response, body: bytes) -> bytes:
            nonce = req.url.params["nonce"]
            url = other.origin + "/v1/aci/attestation"
            return httpx.get(url, params={"nonce": nonce}, timeout=30).content

        recorder = Recorder(rewrite={"/aci/attestation": swap})
        c = _client(server, revision, recorder)
        with pytest.raises(VerificationError) as err:
            c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert "aci.channel" in str(err.value)
    assert recorder.count("/chat/completions") == 0


def test_an_answer_naming_another_keyset_is_refused(node: tuple[RealServer, str]) -> None:
    """``X-ACI-Keyset-Digest`` changed on the answer: the client re-establishes
    the keyset with a fresh nonce, and the service's verified report names
    another one: refused."""
    server, revision = node

    class Relabel(Recorder):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if request.url.path.endswith("/chat/completions"):
                response.headers["x-aci-keyset-digest"] = "sha256:" + "11" * 32
            return response

    recorder = Relabel()
    c = _client(server, revision, recorder)
    with pytest.raises(VerificationError) as err:
        c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert "names keyset sha256:1111" in str(err.value)
    assert recorder.count("/aci/attestation") == 2


def test_settings_are_checked(node: tuple[RealServer, str]) -> None:
    server, _ = node
    with pytest.raises(ConfigError, match="name the revision"):
        enclaved.OpenAI(base_url=server.base_url, trust_root=server.dev_root, aci="rev-b")
    with pytest.raises(ConfigError, match="verify_signatures=True"):
        enclaved.OpenAI(
            base_url=server.base_url,
            trust_root=server.dev_root,
            aci="current",
            verify_signatures="address",
        )


def test_a_node_that_names_no_source(tmp_path: Path) -> None:
    """A node that states no source provenance: the development policy waives
    aci.provenance (a development node runs whatever is checked out) and the
    row says so; a policy that does not waive it refuses the keyset before
    the prompt is sent."""
    with enclaved_server(tmp_path) as server:
        c = _client(server, "current")
        c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
        row = last_keyset(c).verdict.get("aci.provenance")
        assert row.status.value == "skipped" and not row.enforced
        assert last_receipt(c).ok
        strict = dataclasses.replace(
            Policy.development(server.dev_root.read_text()), allow_missing_provenance=False
        )
        recorder = Recorder()
        c = enclaved.OpenAI(
            base_url=server.base_url,
            api_key="unused",
            policy=strict,
            aci="current",
            transport=recorder,
            max_retries=0,
        )
        with pytest.raises(VerificationError) as err:
            c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
        assert "aci.provenance" in str(err.value)
        assert recorder.count("/chat/completions") == 0


def _run_cli(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(argv)
    return code, buf.getvalue()


def test_chat_aci_prints_the_receipt(node: tuple[RealServer, str]) -> None:
    server, revision = node
    base = ["chat", "hi", "--model", E2EE_MODEL, "--base-url", server.base_url]
    base += ["--trust-root", str(server.dev_root)]
    code, out = _run_cli([*base, "--aci", revision])
    assert code == 0, out
    assert FAKE_ANSWER in out and "signature: ok" in out
    assert re.search(r"receipt: ok, chatcmpl-\w+ in aci/1 keyset sha256:[0-9a-f]{64}", out), out
    # Two verifications (the attestation, the aci/1 report), one warning line.
    assert out.count("INSECURE attestation policy") == 1, out
    other = "rev-a" if revision == "current" else "current"
    code, out = _run_cli([*base, "--aci", other])
    # The other revision's statement (rev-a: and workload id) is not what the quote binds.
    assert code == 2 and "verification failed: aci/1 attestation: check aci." in out, out
    assert FAKE_ANSWER not in out


def test_attest_fetches_the_aci_report(node: tuple[RealServer, str]) -> None:
    server, revision = node
    argv = ["attest", "--provider", f"aci-{revision}", "--base-url", server.base_url]
    argv += ["--trust-root", str(server.dev_root), "--json"]
    code, out = _run_cli(argv)
    assert code == 0, out
    [gateway] = json.loads(out[out.index("{") :])["components"]
    rows = {c["id"]: c["status"] for c in gateway["checks"]}
    assert rows["aci.report_data"] == rows["aci.keyset_digest"] == "pass"
    assert rows["aci.provenance"] == "pass"
    other = "rev-a" if revision == "current" else "current"
    code, out = _run_cli([*argv[:2], f"aci-{other}", *argv[3:]])
    assert code == 2, out


def test_proxy_checks_receipts(node: tuple[RealServer, str]) -> None:
    server, revision = node
    app = create_proxy_app(server.base_url, trust_root=server.dev_root, aci=revision)
    with running_server(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="local", max_retries=0)
        reply = c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
        assert reply.choices[0].message.content == FAKE_ANSWER
        chunks = c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == (
            FAKE_ANSWER
        )


def _certificate(directory: Path, name: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (PEM paths: certificate, key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.mark.parametrize("same_key", [True, False], ids=["listed-tls-key", "other-tls-key"])
def test_the_tls_key_we_saw_must_be_the_listed_one(tmp_path: Path, same_key: bool) -> None:
    """Over HTTPS the TLS key the service presented is checked too (§9.1 step 6):
    a TLS endpoint that is not the attested one - here, the node's listed
    certificate replaced by another - fails aci.channel even though the E2EE
    key matches; nothing is sent."""
    import ssl

    listed = _certificate(tmp_path, "listed")
    served = listed if same_key else _certificate(tmp_path, "other")
    aci = {"revision": "current", "tls_certificate": listed[0], "tls_domain": "127.0.0.1"}
    with enclaved_server(tmp_path / "data", tls=served, aci=aci) as server:
        context = ssl.create_default_context(cafile=served[0])
        recorder = Recorder(inner=httpx.HTTPTransport(verify=context))
        c = _client(server, "current", recorder)
        if same_key:
            c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
            row = last_keyset(c).verdict.get("aci.channel")
            assert row.status.value == "pass" and "TLS key we saw" in row.reason, row.reason
            assert last_receipt(c).ok
        else:
            with pytest.raises(VerificationError) as err:
                c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
            assert "aci.channel" in str(err.value) and "TLS key" in str(err.value)
            assert recorder.count("/chat/completions") == 0
        c.close()
