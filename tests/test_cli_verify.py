"""``enclaved verify`` and ``enclaved attest``: the issue's acceptance tests.

Exit codes: 0 ok, 2 verification failed, 3 network, 4 policy, 5 parse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from attestation_captures import (
    ALL,
    MRTD,
    REPORT_DATA,
    TD_ATTRIBUTES,
    VENICE,
    Capture,
    flip,
    simulated_report,
)

from enclaved.cli import main
from enclaved.cli import verify as cli_verify
from enclaved.crypto import KeyPair


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def verify_args(c: Capture, file: Path | str, *extra: str, nonce: bool = True) -> list[str]:
    args = [
        "verify",
        str(file),
        "--collateral",
        str(c.responses),
        "--at",
        c.manifest["captured_at"],
    ]
    if nonce:
        args += ["--nonce", c.nonce.hex()]
    return args + list(extra)


def write(tmp_path: Path, doc: dict[str, Any] | str) -> Path:
    path = tmp_path / "report.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


# --- the captures pass --------------------------------------------------------------------


@pytest.mark.parametrize("c", ALL, ids=lambda c: c.name)
def test_capture_passes(capsys: pytest.CaptureFixture[str], c: Capture) -> None:
    code, out, err = run(capsys, *verify_args(c, c.report_path), "--nras")
    assert code == 0, out + err
    assert "VERIFIED" in out
    for check in (
        "tdx.quote.signature",
        "tdx.tcb.status",
        "eventlog.replay",
        "nvidia.gpus",
        "nvidia.nras",
    ):
        line = next(row for row in out.splitlines() if row.startswith(check + " "))
        assert " pass " in line
    assert "WARNING" not in err


@pytest.mark.parametrize("c", ALL, ids=lambda c: c.name)
def test_capture_json(capsys: pytest.CaptureFixture[str], c: Capture) -> None:
    code, out, _ = run(capsys, *verify_args(c, c.report_path), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["freshness_checked"] is True
    rows = {r["id"]: r for r in doc["checks"]}
    # Every Intel and NVIDIA row passes (the root CA CRL may only be skipped).
    for cid, row in rows.items():
        if cid.startswith(("tdx.", "nvidia.")) and cid != "tdx.collateral.root_ca_crl":
            assert row["status"] == "pass", row
    assert rows["eventlog.replay"]["status"] == "pass"
    assert rows["binding.report_data.identity"]["status"] == "pass"


def test_without_nonce_says_freshness_not_checked(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *verify_args(VENICE, VENICE.report_path, nonce=False))
    assert code == 0
    assert "Freshness is NOT checked" in err
    assert "freshness NOT checked" in out
    row = next(r for r in out.splitlines() if r.startswith("report.nonce "))
    assert "skipped" in row and " no " in row


def test_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(VENICE.report_path.read_bytes())))
    code, _, _ = run(capsys, *verify_args(VENICE, "-"))
    assert code == 0


# --- exit 2: verification failed, with the right check named -------------------------------


def _failed_rows(out: str) -> set[str]:
    doc = json.loads(out)
    return {r["id"] for r in doc["checks"] if r["status"] != "pass" and r["enforced"]}


def test_wrong_nonce(capsys: pytest.CaptureFixture[str]) -> None:
    args = verify_args(VENICE, VENICE.report_path, nonce=False) + ["--nonce", "00" * 32, "--json"]
    code, out, _ = run(capsys, *args)
    assert code == 2
    assert {"report.nonce", "binding.report_data.nonce", "nvidia.payload.nonce"} <= _failed_rows(
        out
    )


def test_report_data_changed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = VENICE.doc()
    doc["intel_quote"] = flip(doc["intel_quote"], REPORT_DATA)
    code, out, _ = run(capsys, *verify_args(VENICE, write(tmp_path, doc), "--json"))
    assert code == 2
    assert {"tdx.quote.signature", "binding.report_data.identity"} <= _failed_rows(out)


def test_signing_key_changed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = VENICE.doc()
    doc["signing_key"] = doc["signing_public_key"] = KeyPair.generate().public_key_hex
    code, out, _ = run(capsys, *verify_args(VENICE, write(tmp_path, doc), "--json"))
    assert code == 2
    assert _failed_rows(out) == {"binding.signing_key"}


def test_debug_bit_set(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = VENICE.doc()
    doc["intel_quote"] = flip(doc["intel_quote"], TD_ATTRIBUTES, 0x01)
    code, out, _ = run(capsys, *verify_args(VENICE, write(tmp_path, doc)))
    assert code == 2  # a forged quote, not merely a policy matter
    assert "tdx.quote.signature" in out.splitlines()[-1]
    assert "policy.td_attributes.debug" in out.splitlines()[-1]


@pytest.mark.parametrize("offset", [16, 40, MRTD, MRTD + 300, REPORT_DATA + 63])
def test_any_signed_byte_changed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, offset: int
) -> None:
    doc = VENICE.doc()
    doc["intel_quote"] = flip(doc["intel_quote"], offset, 0x80)
    code, out, _ = run(capsys, *verify_args(VENICE, write(tmp_path, doc), "--json"))
    assert code == 2
    assert "tdx.quote.signature" in _failed_rows(out)


# --- the simulated TEE: --trust-root -------------------------------------------------------


@pytest.mark.filterwarnings("ignore::enclaved.attestation.policy.InsecurePolicyWarning")
def test_simulated_tee_with_its_root(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc, nonce, root = simulated_report(tmp_path / "tee")
    (tmp_path / "root.pem").write_text(root)
    report = write(tmp_path, doc)
    code, out, err = run(
        capsys,
        "verify",
        str(report),
        "--nonce",
        nonce.hex(),
        "--trust-root",
        str(tmp_path / "root.pem"),
    )
    assert code == 0, out + err
    assert "proves nothing about hardware" in err  # said loudly
    # Intel's root alone: refused at once with the message chat and the SDK
    # give (exit 2), without asking Intel's servers for anything.
    code, out, err = run(capsys, "verify", str(report), "--nonce", nonce.hex())
    assert code == 2 and "client.simulated_tee" in out.splitlines()[-1]
    assert "SIMULATED TEE" in err and "--trust-root" in err
    # A report that hides that it is simulated still fails, on the chain.
    doc["tee_hardware"] = "intel-tdx"
    report = write(tmp_path, doc)
    code, out, _ = run(
        capsys, "verify", str(report), "--nonce", nonce.hex(), "--collateral", str(VENICE.responses)
    )
    assert code == 2 and "tdx.pck.chain" in out.splitlines()[-1]


@pytest.mark.filterwarnings("ignore::enclaved.attestation.policy.InsecurePolicyWarning")
def test_simulated_debug_td_is_a_policy_violation(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc, nonce, root = simulated_report(tmp_path / "tee", debug=True)
    (tmp_path / "root.pem").write_text(root)
    args = [
        "verify",
        str(write(tmp_path, doc)),
        "--nonce",
        nonce.hex(),
        "--trust-root",
        str(tmp_path / "root.pem"),
    ]
    code, out, _ = run(capsys, *args)
    assert code == 4
    assert out.splitlines()[-1] == "POLICY VIOLATION: policy.td_attributes.debug"


# --- exit 4: policy --------------------------------------------------------------------------


def test_mrtd_allowlist_without_the_capture_mrtd(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(f'mrtd = ["{"00" * 48}"]\n')
    code, out, _ = run(capsys, *verify_args(VENICE, VENICE.report_path, "--policy", str(policy)))
    assert code == 4
    assert "POLICY VIOLATION: policy.mrtd" in out


def test_mrtd_allowlist_with_the_capture_mrtd(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'mrtd = ["{VENICE.doc()["info"]["tcb_info"]["mrtd"]}"]\nnvidia_gpu_count = 8\n'
    )
    code, _, _ = run(capsys, *verify_args(VENICE, VENICE.report_path, "--policy", str(policy)))
    assert code == 0


def test_invalid_policy_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("allow_everything = true\n")
    code, _, err = run(capsys, *verify_args(VENICE, VENICE.report_path, "--policy", str(policy)))
    assert code == 4 and "unknown key" in err


# --- exit 5: parse -----------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", ["", "not json", "[]", '{"intel_quote": "00"}'])
def test_garbage(capsys: pytest.CaptureFixture[str], tmp_path: Path, garbage: str) -> None:
    code, _, err = run(capsys, *verify_args(VENICE, write(tmp_path, garbage)))
    assert code == 5 and "malformed" in err


def test_truncated_quote(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = VENICE.doc()
    doc["intel_quote"] = doc["intel_quote"][:1000]
    code, _, err = run(capsys, *verify_args(VENICE, write(tmp_path, doc)))
    assert code == 5 and "malformed evidence" in err


@pytest.mark.parametrize("bad", ["zz", "00" * 16])
def test_bad_nonce_option(capsys: pytest.CaptureFixture[str], bad: str) -> None:
    args = verify_args(VENICE, VENICE.report_path, nonce=False) + ["--nonce", bad]
    assert run(capsys, *args)[0] == 5


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, *verify_args(VENICE, tmp_path / "nope.json"))[0] == 5


# --- attest --------------------------------------------------------------------------------------


def test_attest_cannot_connect(capsys: pytest.CaptureFixture[str], unused_port: int) -> None:
    code, _, err = run(
        capsys, "attest", "--model", "m", "--base-url", f"http://127.0.0.1:{unused_port}/api/v1",
        "--collateral", str(VENICE.responses), "--timeout", "5",
    )  # fmt: skip
    assert code == 3 and "cannot reach" in err


def _serve(monkeypatch: pytest.MonkeyPatch, handler: Any) -> list[httpx.Request]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)  # type: ignore[no-any-return]

    transport = httpx.MockTransport(record)
    monkeypatch.setattr(
        cli_verify, "http_client_factory", lambda **kw: httpx.Client(transport=transport, **kw)
    )
    return seen


def test_attest_replayed_report_fails_on_the_nonce(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that replays an old (genuine) report is caught: our fresh nonce is not in it."""
    body = VENICE.report_path.read_bytes()
    seen = _serve(monkeypatch, lambda r: httpx.Response(200, content=body))
    monkeypatch.setattr(cli_verify, "clock", lambda: VENICE.at)
    monkeypatch.setenv("ENCLAVED_API_KEY", "sk-test")
    code, out, _ = run(
        capsys, "attest", "--model", "e2ee-qwen3-5-122b-a10b", "--base-url", "https://x.test/api/v1",
        "--collateral", str(VENICE.responses), "--json",
    )  # fmt: skip
    assert code == 2
    assert {"report.nonce", "binding.report_data.nonce"} <= _failed_rows(out)
    (request,) = seen
    assert request.url.path == "/api/v1/tee/attestation"
    assert request.url.params["model"] == "e2ee-qwen3-5-122b-a10b"
    assert len(bytes.fromhex(request.url.params["nonce"])) == 32
    assert request.headers["authorization"] == "Bearer sk-test"


def test_attest_passes_when_the_nonce_is_answered(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = VENICE.report_path.read_bytes()
    _serve(monkeypatch, lambda r: httpx.Response(200, content=body))
    monkeypatch.setattr(cli_verify, "clock", lambda: VENICE.at)
    monkeypatch.setattr(cli_verify, "new_nonce", lambda: VENICE.nonce)
    code, out, _ = run(
        capsys, "attest", "--model", "e2ee-qwen3-5-122b-a10b", "--base-url", "https://x.test/api/v1",
        "--collateral", str(VENICE.responses),
    )  # fmt: skip
    assert code == 0, out


def test_attest_server_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve(
        monkeypatch,
        lambda r: httpx.Response(404, json={"error": {"message": "Model nope not found"}}),
    )
    code, _, err = run(capsys, "attest", "--model", "nope", "--base-url", "https://x.test/api/v1")
    assert code == 3 and "Model nope not found" in err
