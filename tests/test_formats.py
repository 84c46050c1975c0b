"""NEAR AI cloud and Chutes: every attested TD of their captures, and one-byte mutations.

Each capture is verified at its capture time against the Intel collateral
it recorded. Every mutation of a signed region or of a binding must be
refused by the row that names it, in the component it was made in.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from attestation_captures import MRTD, REPORT_DATA, flip
from conftest import FORMAT_CAPTURES

from enclaved.attestation import InsecurePolicyWarning, Policy, Verifier
from enclaved.attestation.formats import DocumentVerdict, detect_format, verify_document
from enclaved.attestation.tdx import DirectoryCollateral
from enclaved.attestation.verifier import recorded_nras
from enclaved.cli import main as cli_main

NEARCLOUD = next(p for p in FORMAT_CAPTURES if p.name.startswith("nearcloud_"))
CHUTES = next(p for p in FORMAT_CAPTURES if p.name.startswith("chutes_"))
_COLLATERAL: dict[Path, DirectoryCollateral] = {}


def manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())  # type: ignore[no-any-return]


def nonce_of(folder: Path) -> bytes:
    return bytes.fromhex(manifest(folder)["nonce_hex"])


def at(folder: Path) -> datetime:
    return datetime.fromisoformat(manifest(folder)["captured_at"])


def body(folder: Path, n: int) -> Path:
    return next((folder / "responses").glob(f"{n:04d}_*.body"))


def doc(folder: Path) -> dict[str, Any]:
    """The document as ``enclaved verify`` reads it (Chutes: evidence + instances)."""
    if folder == CHUTES:
        ev = json.loads(body(folder, 2).read_bytes())
        ev["instances"] = json.loads(body(folder, 1).read_bytes())["instances"]
        return ev  # type: ignore[no-any-return]
    return json.loads(body(folder, 1).read_bytes())  # type: ignore[no-any-return]


def verify(
    folder: Path,
    d: dict[str, Any] | None = None,
    *,
    policy: Policy | None = None,
    nonce: bytes | None | str = "manifest",
    nras: bool = False,
) -> DocumentVerdict:
    if folder not in _COLLATERAL:
        _COLLATERAL[folder] = DirectoryCollateral(folder / "responses")
    when = at(folder)
    v = Verifier(
        policy or Policy.strict(),
        collateral=_COLLATERAL[folder],
        nras=recorded_nras(folder) if nras else None,
        now=lambda: when,
    )
    n = nonce_of(folder) if nonce == "manifest" else nonce
    return verify_document(v, d if d is not None else doc(folder), nonce=n, fetch=False)  # type: ignore[arg-type]


def failed(verdict: DocumentVerdict) -> set[tuple[str, str]]:
    return {(name, str(c.id)) for name, c in verdict.failures}


def failed_in(verdict: DocumentVerdict, component: str) -> set[str]:
    return {str(c.id) for c in verdict.component(component).failures}


NO_LOG = {
    "eventlog.replay",
    "eventlog.rtmr3_digests",
    "measurements.compose_hash",
    "measurements.mrconfigid",
}
COLLATERAL_ROWS = {
    "tdx.collateral.tcb_info.signature",
    "tdx.collateral.qe_identity.signature",
    "tdx.collateral.pck_crl",
    "tdx.collateral.fresh",
    "tdx.fmspc",
    "tdx.tcb.status",
    "tdx.qe_identity.match",
}
#: The Chutes instances whose FMSPC (b0c06f000000) the capture holds no collateral for.
CHUTES_UNCOVERED = {"07e308a1-2dc7-4e93-a652-c59311fb1f05", "1da9c33a-2eea-40c3-a304-a9a0ddf384e0"}


# --- recognition ---------------------------------------------------------------


def test_formats_are_recognised_by_shape() -> None:
    assert detect_format(doc(NEARCLOUD)) == "nearcloud"
    assert detect_format(doc(CHUTES)) == "chutes"
    assert detect_format({"intel_quote": "00", "signing_address": "0x" + "00" * 20}) == "protocol"


# --- NEAR AI cloud --------------------------------------------------------------


def test_nearcloud_components_and_the_one_real_failure() -> None:
    verdict = verify(NEARCLOUD)
    assert [c.name for c in verdict.components] == [
        "gateway",
        "model[0]",
        "model[0].compose_manager",
    ]
    # The gateway's platform is OutOfDate at capture time: a policy failure, named.
    assert failed(verdict) == {("gateway", "tdx.tcb.status")}
    assert verdict.component("gateway").tcb_status == "OutOfDate"
    assert verdict.component("model[0]").gpu_count == 8
    with pytest.warns(InsecurePolicyWarning, match="OutOfDate"):
        relaxed = verify(NEARCLOUD, policy=Policy(allow_tcb_statuses=frozenset({"OutOfDate"})))
    assert relaxed.ok


def test_nearcloud_what_the_gateway_cannot_prove_is_named() -> None:
    verdict = verify(NEARCLOUD)
    gw = verdict.component("gateway")
    row = gw.get("nearcloud.gateway.model_binding")
    assert row is not None and row.status.value == "skipped" and not row.enforced
    assert "unattested" in row.reason
    tls = gw.get("nearcloud.gateway.tls_certificate")
    assert tls is not None and tls.status.value == "pass"
    cm = verdict.component("model[0].compose_manager")
    actions = cm.get("nearcloud.compose_manager.actions")
    assert actions is not None and actions.status.value == "skipped" and not actions.enforced
    same = cm.get("nearcloud.compose_manager.same_td")
    assert same is not None and same.status.value == "pass"


def test_nearcloud_recorded_nras_judges_the_model_gpus() -> None:
    verdict = verify(NEARCLOUD, nras=True)
    row = verdict.component("model[0]").get("nvidia.nras")
    assert row is not None and row.status.value == "pass"


def test_nearcloud_other_nonce_fails_every_component() -> None:
    verdict = verify(NEARCLOUD, nonce=bytes(32))
    for name in ("gateway", "model[0]", "model[0].compose_manager"):
        assert {"report.nonce", "binding.report_data.nonce"} <= failed_in(verdict, name)


def _flip_quote(hex_quote: str, offset: int) -> str:
    return flip(hex_quote, offset)


@pytest.mark.parametrize("offset", [MRTD, REPORT_DATA, REPORT_DATA + 40])
def test_nearcloud_signed_region_flips(offset: int) -> None:
    d = doc(NEARCLOUD)
    d["gateway_attestation"]["intel_quote"] = flip(d["gateway_attestation"]["intel_quote"], offset)
    assert "tdx.quote.signature" in failed_in(verify(NEARCLOUD, d), "gateway")
    d = doc(NEARCLOUD)
    m = d["model_attestations"][0]
    m["intel_quote"] = flip(m["intel_quote"], offset)
    assert "tdx.quote.signature" in failed_in(verify(NEARCLOUD, d), "model[0]")
    d = doc(NEARCLOUD)
    cm = d["model_attestations"][0]["compose_manager_attestation"]
    cm["quote"] = flip(cm["quote"], offset)
    assert "tdx.quote.signature" in failed_in(verify(NEARCLOUD, d), "model[0].compose_manager")


def test_nearcloud_gateway_bindings() -> None:
    d = doc(NEARCLOUD)
    gw = d["gateway_attestation"]
    gw["tls_cert_fingerprint"] = flip(gw["tls_cert_fingerprint"], 0)
    got = failed_in(verify(NEARCLOUD, d), "gateway")
    assert {"binding.report_data.identity", "nearcloud.gateway.tls_certificate"} <= got
    d = doc(NEARCLOUD)
    d["gateway_attestation"]["signing_address"] = flip(
        d["gateway_attestation"]["signing_address"], 3
    )
    assert "binding.report_data.identity" in failed_in(verify(NEARCLOUD, d), "gateway")
    d = doc(NEARCLOUD)
    # Another certificate than the one whose key the gateway bound: its issuer's.
    pems = d["tls_certificate"].split("-----END CERTIFICATE-----")
    d["tls_certificate"] = pems[1].strip() + "\n-----END CERTIFICATE-----\n"
    assert failed_in(verify(NEARCLOUD, d), "gateway") == {
        "tdx.tcb.status",
        "nearcloud.gateway.tls_certificate",
    }


def test_nearcloud_model_bindings() -> None:
    d = doc(NEARCLOUD)
    m = d["model_attestations"][0]
    m["signing_address"] = m["signing_public_key"] = flip(m["signing_address"], 0)
    assert failed_in(verify(NEARCLOUD, d), "model[0]") == {"binding.report_data.identity"}
    d = doc(NEARCLOUD)
    m = d["model_attestations"][0]
    m["tls_cert_fingerprint"] = flip(m["tls_cert_fingerprint"], 31)
    assert failed_in(verify(NEARCLOUD, d), "model[0]") == {"binding.report_data.identity"}
    d = doc(NEARCLOUD)
    m = d["model_attestations"][0]
    payload = json.loads(m["nvidia_payload"])
    payload["nonce"] = "00" * 32
    m["nvidia_payload"] = json.dumps(payload)
    assert "nvidia.payload.nonce" in failed_in(verify(NEARCLOUD, d), "model[0]")


def test_nearcloud_compose_manager_bindings() -> None:
    d = doc(NEARCLOUD)
    cm = d["model_attestations"][0]["compose_manager_attestation"]
    cm["actions_hash"] = flip(cm["actions_hash"], 0)
    assert failed_in(verify(NEARCLOUD, d), "model[0].compose_manager") == {
        "nearcloud.compose_manager.actions_hash"
    }
    d = doc(NEARCLOUD)
    cm = d["model_attestations"][0]["compose_manager_attestation"]
    log = json.loads(cm["event_log"])
    log[0]["digest"] = flip(log[0]["digest"], 0)
    cm["event_log"] = json.dumps(log)
    assert "eventlog.replay" in failed_in(verify(NEARCLOUD, d), "model[0].compose_manager")
    # The gateway's (validly signed) quote as the compose manager's: another TD.
    d = doc(NEARCLOUD)
    cm = d["model_attestations"][0]["compose_manager_attestation"]
    cm["quote"] = d["gateway_attestation"]["intel_quote"]
    got = failed_in(verify(NEARCLOUD, d), "model[0].compose_manager")
    assert {"nearcloud.compose_manager.same_td", "nearcloud.compose_manager.actions_hash"} <= got


# --- Chutes ---------------------------------------------------------------------


def test_chutes_instances_and_what_they_cannot_prove() -> None:
    verdict = verify(CHUTES)
    names = [c.name for c in verdict.components]
    assert len(names) == 4 and all(n.startswith("instance[") for n in names)
    for c in verdict.components:
        iid = c.name[len("instance[") : -1]
        got = {str(f.id) for f in c.verdict.failures}
        want = NO_LOG | (COLLATERAL_ROWS if iid in CHUTES_UNCOVERED else set())
        assert got == want, c.name
        for f in c.verdict.failures:
            if str(f.id) in NO_LOG:
                assert "no event log" in f.reason
            else:
                assert "b0c06f000000" in f.reason
        for cid in ("chutes.report_data.e2e_key_nonce", "chutes.report_data.certificate"):
            row = c.verdict.get(cid)
            assert row is not None and row.status.value == "pass", cid
        assert c.verdict.gpu_count == 8
    with pytest.warns(InsecurePolicyWarning, match="allow_missing_event_log"):
        waived = verify(
            CHUTES,
            policy=Policy(allow_missing_event_log=True, allow_missing_compose_binding=True),
        )
    assert {n for n, _ in failed(waived)} == {f"instance[{i}]" for i in CHUTES_UNCOVERED}


def test_chutes_recorded_nras_does_not_vouch_for_an_instance() -> None:
    verdict = verify(CHUTES, nras=True, policy=Policy(require_nras=True))
    for c in verdict.components:
        row = c.verdict.get("nvidia.nras")
        assert row is not None and row.status.value == "fail"


def _chutes_instance(d: dict[str, Any], i: int) -> str:
    return f"instance[{d['evidence'][i]['instance_id']}]"


@pytest.mark.parametrize("offset", [MRTD, REPORT_DATA, REPORT_DATA + 40])
def test_chutes_signed_region_flips(offset: int) -> None:
    d = doc(CHUTES)
    q = bytearray(base64.b64decode(d["evidence"][0]["quote"]))
    q[offset] ^= 1
    d["evidence"][0]["quote"] = base64.b64encode(bytes(q)).decode()
    assert "tdx.quote.signature" in failed_in(verify(CHUTES, d), _chutes_instance(d, 0))


def test_chutes_bindings() -> None:
    d = doc(CHUTES)
    name = _chutes_instance(d, 0)
    iid = d["evidence"][0]["instance_id"]
    inst = next(x for x in d["instances"] if x["instance_id"] == iid)
    key = bytearray(base64.b64decode(inst["e2e_pubkey"]))
    key[0] ^= 1
    inst["e2e_pubkey"] = base64.b64encode(bytes(key)).decode()
    assert failed_in(verify(CHUTES, d), name) == NO_LOG | {"chutes.report_data.e2e_key_nonce"}
    d = doc(CHUTES)
    d["evidence"][0]["certificate"] = d["evidence"][1]["certificate"]
    assert failed_in(verify(CHUTES, d), name) == NO_LOG | {"chutes.report_data.certificate"}
    verdict = verify(CHUTES, nonce=bytes(32))
    assert "chutes.report_data.e2e_key_nonce" in failed_in(verdict, name)


def test_chutes_gpu_evidence_flip() -> None:
    d = doc(CHUTES)
    gpu = d["evidence"][0]["gpu_evidence"][0]
    raw = bytearray(base64.b64decode(gpu["evidence"]))
    raw[-10] ^= 1
    gpu["evidence"] = base64.b64encode(bytes(raw)).decode()
    got = failed_in(verify(CHUTES, d), _chutes_instance(d, 0))
    assert "nvidia.gpu[0].spdm.signature" in got and "nvidia.gpus" in got


# --- the CLI --------------------------------------------------------------------


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli_main(argv)
    return code, capsys.readouterr().out


def test_cli_verify_nearcloud_one_block_per_component(capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "verify",
        str(body(NEARCLOUD, 1)),
        "--collateral",
        str(NEARCLOUD / "responses"),
        "--at",
        manifest(NEARCLOUD)["captured_at"],
        "--nonce",
        nonce_of(NEARCLOUD).hex(),
    ]
    code, out = _cli(base, capsys)
    assert code == 4
    assert "== gateway: FAIL" in out and "== model[0]: PASS" in out
    assert "POLICY VIOLATION (nearcloud): gateway: tdx.tcb.status" in out
    code, out = _cli([*base, "--json"], capsys)
    result = json.loads(out)
    assert result["format"] == "nearcloud" and result["exit_code"] == 4
    assert [c["component"] for c in result["components"]] == [
        "gateway",
        "model[0]",
        "model[0].compose_manager",
    ]


def test_cli_verify_chutes_with_instances(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = _cli(
        [
            "verify",
            str(body(CHUTES, 2)),
            "--e2e-instances",
            str(body(CHUTES, 1)),
            "--collateral",
            str(CHUTES / "responses"),
            "--at",
            manifest(CHUTES)["captured_at"],
            "--nonce",
            nonce_of(CHUTES).hex(),
            "--json",
        ],
        capsys,
    )
    result = json.loads(out)
    assert code == 2 and result["format"] == "chutes" and len(result["components"]) == 4
    ids = {c["id"] for comp in result["components"] for c in comp["checks"]}
    assert "chutes.report_data.e2e_key_nonce" in ids


def test_cli_attest_nearcloud_fetches_the_report(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from enclaved.cli import verify as cli_verify

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=body(NEARCLOUD, 1).read_bytes())

    monkeypatch.setattr(
        cli_verify,
        "http_client_factory",
        lambda **kw: httpx.Client(transport=httpx.MockTransport(handler), **kw),
    )
    monkeypatch.setattr(cli_verify, "new_nonce", lambda: nonce_of(NEARCLOUD))
    monkeypatch.setattr(cli_verify, "clock", lambda: at(NEARCLOUD))
    code, out = _cli(
        [
            "attest",
            "--provider",
            "nearcloud",
            "--base-url",
            "https://cloud-api.near.ai/v1",
            "--model",
            "Qwen/Qwen3.5-122B-A10B",
            "--collateral",
            str(NEARCLOUD / "responses"),
            "--json",
        ],
        capsys,
    )
    assert seen and seen[0].startswith("https://cloud-api.near.ai/v1/attestation/report?")
    assert f"nonce={nonce_of(NEARCLOUD).hex()}" in seen[0]
    assert code == 4 and json.loads(out)["format"] == "nearcloud"


def test_malformed_documents_are_parse_errors() -> None:
    from enclaved.errors import EvidenceParseError

    d = doc(NEARCLOUD)
    del d["model_attestations"][0]["compose_manager_attestation"]["actions_hash"]
    with pytest.raises(EvidenceParseError):
        verify(NEARCLOUD, d)
    d = doc(CHUTES)
    d["evidence"][0]["quote"] = "not base64!"
    with pytest.raises(EvidenceParseError):
        verify(CHUTES, d)
    with pytest.raises(EvidenceParseError):
        verify(NEARCLOUD, doc(NEARCLOUD) | {"model_attestations": []})


def test_cli_attest_chutes_fetches_instances_and_evidence(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from enclaved.cli import verify as cli_verify

    chute = "e51e818e-fa63-570d-9f68-49d7d1b4d12f"
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        n = 1 if request.url.path.startswith("/e2e/instances/") else 2
        return httpx.Response(200, content=body(CHUTES, n).read_bytes())

    monkeypatch.setattr(
        cli_verify,
        "http_client_factory",
        lambda **kw: httpx.Client(transport=httpx.MockTransport(handler), **kw),
    )
    monkeypatch.setattr(cli_verify, "new_nonce", lambda: nonce_of(CHUTES))
    monkeypatch.setattr(cli_verify, "clock", lambda: at(CHUTES))
    code, out = _cli(
        [
            "attest",
            "--provider",
            "chutes",
            "--base-url",
            "https://api.chutes.ai",
            "--model",
            chute,
            "--collateral",
            str(CHUTES / "responses"),
            "--json",
        ],
        capsys,
    )
    assert seen == [
        f"https://api.chutes.ai/e2e/instances/{chute}",
        f"https://api.chutes.ai/chutes/{chute}/evidence?nonce={nonce_of(CHUTES).hex()}",
    ]
    result = json.loads(out)
    assert code == 2 and result["format"] == "chutes"
    passed = {
        c["id"] for comp in result["components"] for c in comp["checks"] if c["status"] == "pass"
    }
    assert "chutes.report_data.e2e_key_nonce" in passed
