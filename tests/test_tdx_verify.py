"""TDX quote verification against real production quotes and Intel's recorded collateral.

The ground truth: both captures verify, every check passing, at their capture
time; one byte changed in any signed region fails the check that covers it;
and our TCB verdicts agree with an independent verifier (Phala's dcap-qvl) on
its public samples, on the captures, and on a matrix of TCB situations
signed under the development root.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import REPORT_CAPTURES, SHARED
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from enclaved.attestation.checks import Status
from enclaved.attestation.tdx import (
    CHECK_IDS,
    Collateral,
    DirectoryCollateral,
    collateral_for,
    decode_quote_text,
    intel_sgx_root_ca,
    parse_quote,
    tcb_status,
    verify_quote,
)
from enclaved.attestation.tdx.roots import INTEL_SGX_ROOT_CA_DER, INTEL_SGX_ROOT_CA_SHA256
from enclaved.evidence.simulated import SimulatedTdx

CAPTURES = SHARED / "testdata" / "captures"
DCAP_QVL = Path(__file__).resolve().parent / "data" / "dcap_qvl"
CAPTURE_NAMES = [p.name for p in REPORT_CAPTURES]
needs_captures = pytest.mark.skipif(not CAPTURE_NAMES, reason="shared/testdata/captures missing")


@dataclasses.dataclass(frozen=True)
class Capture:
    raw: bytes
    collateral: Collateral
    now: dt.datetime


_CAPTURES: dict[str, Capture] = {}


def capture(name: str) -> Capture:
    """The quote, its recorded collateral, and the capture time (Date of the first response)."""
    if name not in _CAPTURES:
        responses = CAPTURES / name / "responses"
        doc = json.loads(next(responses.glob("0001_*.body")).read_bytes())
        meta = json.loads(next(responses.glob("0001_*.json")).read_text())
        raw = decode_quote_text(doc["intel_quote"])
        now = parsedate_to_datetime(meta["headers"]["Date"][0])
        c = collateral_for(parse_quote(raw), DirectoryCollateral(CAPTURES / name))
        _CAPTURES[name] = Capture(raw, c, now)
    return _CAPTURES[name]


def failing(checks: list[Any]) -> set[str]:
    return {c.id for c in checks if c.status is not Status.PASS}


# --- the captures verify --------------------------------------------------------------


@needs_captures
@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_capture_verifies_at_capture_time(name: str) -> None:
    cap = capture(name)
    checks = verify_quote(cap.raw, collateral=cap.collateral, now=cap.now)
    assert [c.id for c in checks] == list(CHECK_IDS)
    assert failing(checks) == set(), [c for c in checks if c.status is not Status.PASS]
    tcb = {c.id: c for c in checks}["tdx.tcb.status"]
    assert "UpToDate" in tcb.reason


@needs_captures
@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_capture_tcb_status(name: str) -> None:
    cap = capture(name)
    result = tcb_status(parse_quote(cap.raw), cap.collateral)
    assert result.status == "UpToDate" and result.up_to_date
    assert result.advisory_ids == ()
    assert result.tdx_module_status == result.qe_status == "UpToDate"
    assert result.tcb_date == "2024-11-13T00:00:00Z"


@needs_captures
def test_root_ca_crl_missing_is_skipped_never_passed() -> None:
    cap = capture(CAPTURE_NAMES[0])
    c = dataclasses.replace(cap.collateral, root_ca_crl=None)
    checks = {c.id: c for c in verify_quote(cap.raw, collateral=c, now=cap.now)}
    row = checks["tdx.collateral.root_ca_crl"]
    assert row.status is Status.SKIPPED
    assert "root CA CRL not provided" in row.reason
    assert failing(list(checks.values())) == {"tdx.collateral.root_ca_crl"}


@needs_captures
def test_without_collateral_the_collateral_checks_are_skipped() -> None:
    cap = capture(CAPTURE_NAMES[0])
    checks = verify_quote(cap.raw, collateral=None, now=cap.now)
    skipped = {c.id for c in checks if c.status is Status.SKIPPED}
    assert skipped == set(CHECK_IDS[5:])
    assert all(c.reason == "no collateral" for c in checks if c.status is Status.SKIPPED)
    assert failing(checks) == skipped


# --- the pinned root ----------------------------------------------------------------


def test_pinned_root_is_intels() -> None:
    assert hashlib.sha256(INTEL_SGX_ROOT_CA_DER).hexdigest() == INTEL_SGX_ROOT_CA_SHA256
    assert (
        INTEL_SGX_ROOT_CA_SHA256
        == "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
    )
    root = intel_sgx_root_ca()
    assert root.subject == root.issuer
    assert root.subject.rfc4514_string().endswith("CN=Intel SGX Root CA")


@needs_captures
@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_pinned_root_ends_every_recorded_chain(name: str) -> None:
    cap = capture(name)
    q = parse_quote(cap.raw)
    c = cap.collateral
    for chain in (q.pck_chain, c.tcb_info_issuer_chain, c.qe_identity_issuer_chain,
                  c.pck_crl_issuer_chain):  # fmt: skip
        assert chain[-1].public_bytes(Encoding.DER) == INTEL_SGX_ROOT_CA_DER
    # What the capture fetched from the root's CRL distribution point
    # (".../IntelSGXRootCA.der") is the root's CRL, signed by the pinned root.
    body = next((CAPTURES / name / "responses").glob("0005_*.body")).read_bytes()
    crl = x509.load_der_x509_crl(body)
    root_key = intel_sgx_root_ca().public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(root_key)
    assert c.root_ca_crl == body


@needs_captures
def test_untrusted_root_fails_the_chain_and_the_collateral() -> None:
    cap = capture(CAPTURE_NAMES[0])
    with_dev = SimulatedTdx.load_or_create(Path(__import__("tempfile").mkdtemp()), now=cap.now)
    checks = verify_quote(
        cap.raw, trust_roots=[with_dev.root_cert], collateral=cap.collateral, now=cap.now
    )
    assert failing(checks) == {
        "tdx.pck.chain",
        "tdx.collateral.tcb_info.signature",
        "tdx.collateral.qe_identity.signature",
        "tdx.collateral.pck_crl",
        "tdx.collateral.root_ca_crl",
    }
    assert "not a trusted root" in {c.id: c for c in checks}["tdx.pck.chain"].reason


# --- one byte changed in a signed region fails the check that covers it ---------------

# v4 layout offsets (see enclaved.attestation.tdx.parse)
SIG = 632 + 4  # signature data
QE_REPORT = SIG + 64 + 64 + 6
QE_SIG = QE_REPORT + 384
AUTH = QE_SIG + 64 + 2


def _flip(raw: bytes, offset: int) -> bytes:
    b = bytearray(raw)
    b[offset] ^= 0x01
    return bytes(b)


def _flip_cert(raw: bytes, index: int) -> bytes:
    """Flip the last byte of certificate ``index`` of the PCK chain (inside its
    signature value), re-encode it as PEM of the same length, splice it back."""
    q = parse_quote(raw)
    pem = q.signature_data.certification_data.pck_certs_pem[index]
    cert = x509.load_pem_x509_certificate(pem)
    der = bytearray(cert.public_bytes(Encoding.DER))
    der[-1] ^= 0x01
    new_pem = x509.load_der_x509_certificate(bytes(der)).public_bytes(Encoding.PEM)
    start = raw.index(pem[:-1])
    assert len(new_pem) == len(pem)
    return raw[:start] + new_pem[:-1] + raw[start + len(pem) - 1 :]


def _replace(body: bytes, old: bytes, new: bytes) -> bytes:
    assert body.count(old) == 1 and len(old) == len(new)
    return body.replace(old, new)


def _flip_signature_hex(body: bytes) -> bytes:
    i = body.rindex(b'"signature":"') + len(b'"signature":"') + 5
    b = bytearray(body)
    b[i] = ord("0") if b[i] != ord("0") else ord("1")
    return bytes(b)


def _flip_last(der: bytes) -> bytes:
    return der[:-1] + bytes([der[-1] ^ 0x01])


QuoteMutation = Callable[[bytes], bytes]
CollateralMutation = Callable[[Collateral], Collateral]

MUTATIONS: list[tuple[str, QuoteMutation | None, CollateralMutation | None, set[str]]] = [
    ("header.user_data", lambda r: _flip(r, 28 + 5), None, {"tdx.quote.signature"}),
    ("body.mrtd", lambda r: _flip(r, 48 + 136 + 3), None, {"tdx.quote.signature"}),
    ("body.report_data", lambda r: _flip(r, 48 + 520 + 40), None, {"tdx.quote.signature"}),
    ("qe_report.reserved", lambda r: _flip(r, QE_REPORT + 20 + 3), None,
     {"tdx.qe_report.signature"}),
    ("qe_report.mrsigner", lambda r: _flip(r, QE_REPORT + 128), None,
     {"tdx.qe_report.signature", "tdx.qe_identity.match", "tdx.tcb.status"}),
    ("qe_report.report_data", lambda r: _flip(r, QE_REPORT + 320 + 7), None,
     {"tdx.qe_report.signature", "tdx.qe_report.binding"}),
    ("qe_report_signature", lambda r: _flip(r, QE_SIG + 10), None, {"tdx.qe_report.signature"}),
    ("quote_signature", lambda r: _flip(r, SIG + 10), None, {"tdx.quote.signature"}),
    ("attestation_key", lambda r: _flip(r, SIG + 64 + 10), None,
     {"tdx.quote.signature", "tdx.qe_report.binding"}),
    ("qe_auth_data", lambda r: _flip(r, AUTH + 5), None, {"tdx.qe_report.binding"}),
    ("pck_leaf_cert", lambda r: _flip_cert(r, 0), None, {"tdx.pck.chain"}),
    ("intermediate_cert", lambda r: _flip_cert(r, 1), None, {"tdx.pck.chain"}),
    ("tcb_info.body", None,
     lambda c: dataclasses.replace(c, tcb_info=_replace(
         c.tcb_info, b'"tcbEvaluationDataNumber":18,"tdxModule"',
         b'"tcbEvaluationDataNumber":19,"tdxModule"')),
     {"tdx.collateral.tcb_info.signature"}),
    ("tcb_info.signature", None,
     lambda c: dataclasses.replace(c, tcb_info=_flip_signature_hex(c.tcb_info)),
     {"tdx.collateral.tcb_info.signature"}),
    ("qe_identity.body", None,
     lambda c: dataclasses.replace(c, qe_identity=_replace(
         c.qe_identity, b'"tcbEvaluationDataNumber":18', b'"tcbEvaluationDataNumber":17')),
     {"tdx.collateral.qe_identity.signature"}),
    ("qe_identity.signature", None,
     lambda c: dataclasses.replace(c, qe_identity=_flip_signature_hex(c.qe_identity)),
     {"tdx.collateral.qe_identity.signature"}),
    ("pck_crl", None, lambda c: dataclasses.replace(c, pck_crl=_flip_last(c.pck_crl)),
     {"tdx.collateral.pck_crl"}),
    ("root_ca_crl", None,
     lambda c: dataclasses.replace(c, root_ca_crl=_flip_last(c.root_ca_crl or b"")),
     {"tdx.collateral.root_ca_crl"}),
]  # fmt: skip


@needs_captures
@pytest.mark.parametrize("name", CAPTURE_NAMES)
@pytest.mark.parametrize(
    ("region", "mutate_quote", "mutate_collateral", "expected"),
    MUTATIONS,
    ids=[m[0] for m in MUTATIONS],
)
def test_single_byte_change_fails_the_covering_check(
    name: str,
    region: str,
    mutate_quote: QuoteMutation | None,
    mutate_collateral: CollateralMutation | None,
    expected: set[str],
) -> None:
    cap = capture(name)
    raw = mutate_quote(cap.raw) if mutate_quote else cap.raw
    c = mutate_collateral(cap.collateral) if mutate_collateral else cap.collateral
    assert raw != cap.raw or c != cap.collateral
    checks = verify_quote(raw, collateral=c, now=cap.now)
    assert failing(checks) == expected, [
        (x.id, x.reason) for x in checks if x.id in failing(checks)
    ]
    assert all(x.kind == "verification" for x in checks if x.status is Status.FAIL)


@needs_captures
def test_every_byte_of_header_and_body_is_signed() -> None:
    cap = capture(CAPTURE_NAMES[0])
    for offset in range(632):
        if offset < 8:
            continue  # version / key type / TEE type: a changed value no longer parses or is refused
        checks = verify_quote(_flip(cap.raw, offset), collateral=None, now=cap.now)
        assert "tdx.quote.signature" in failing(checks), offset


@needs_captures
def test_every_byte_of_the_qe_report_is_signed() -> None:
    cap = capture(CAPTURE_NAMES[0])
    for offset in range(QE_REPORT, QE_REPORT + 384, 3):
        checks = verify_quote(_flip(cap.raw, offset), collateral=None, now=cap.now)
        assert "tdx.qe_report.signature" in failing(checks), offset


@needs_captures
def test_structure_rejects_unsupported_key_type_and_vendor() -> None:
    cap = capture(CAPTURE_NAMES[0])
    for offset in (2, 12):  # attestation key type, QE vendor id
        checks = verify_quote(_flip(cap.raw, offset), collateral=None, now=cap.now)
        assert {"tdx.quote.structure", "tdx.quote.signature"} <= failing(checks)


# --- time -------------------------------------------------------------------------------


@needs_captures
def test_stale_collateral_fails_freshness_only() -> None:
    cap = capture(CAPTURE_NAMES[0])
    later = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)  # past every nextUpdate (May 2026)
    checks = verify_quote(cap.raw, collateral=cap.collateral, now=later)
    assert failing(checks) == {"tdx.collateral.fresh"}
    assert "stale since" in {c.id: c for c in checks}["tdx.collateral.fresh"].reason


@needs_captures
def test_expired_certificates_fail_the_chains() -> None:
    cap = capture(CAPTURE_NAMES[0])
    much_later = dt.datetime(2034, 1, 1, tzinfo=dt.UTC)  # PCK CA expired May 2033
    checks = verify_quote(cap.raw, collateral=cap.collateral, now=much_later)
    assert {"tdx.pck.chain", "tdx.collateral.fresh", "tdx.collateral.tcb_info.signature",
            "tdx.collateral.pck_crl"} <= failing(checks)  # fmt: skip
    assert "expired" in {c.id: c for c in checks}["tdx.pck.chain"].reason


@needs_captures
def test_collateral_from_the_future_is_not_fresh() -> None:
    cap = capture(CAPTURE_NAMES[0])
    earlier = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    checks = verify_quote(cap.raw, collateral=cap.collateral, now=earlier)
    assert failing(checks) == {"tdx.collateral.fresh"}


def test_naive_now_is_refused() -> None:
    raw = (DCAP_QVL / "tdx_quote").read_bytes()
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_quote(raw, collateral=None, now=dt.datetime(2025, 7, 1))


# --- collateral mismatches ----------------------------------------------------------------


def qvl_collateral(name: str) -> tuple[Collateral, dt.datetime]:
    """A dcap-qvl sample's collateral, and the last second before its earliest nextUpdate
    (the instant dcap-qvl's own tests verify at)."""
    d = json.loads((DCAP_QVL / f"{name}_collateral.json").read_text())
    c = Collateral.from_pcs(
        tcb_info='{"tcbInfo":' + d["tcb_info"] + ',"signature":"' + d["tcb_info_signature"] + '"}',
        tcb_info_issuer_chain=d["tcb_info_issuer_chain"],
        qe_identity='{"enclaveIdentity":'
        + d["qe_identity"]
        + ',"signature":"'
        + d["qe_identity_signature"]
        + '"}',
        qe_identity_issuer_chain=d["qe_identity_issuer_chain"],
        pck_crl=d["pck_crl"],
        pck_crl_issuer_chain=d["pck_crl_issuer_chain"],
        root_ca_crl=d["root_ca_crl"],
    )
    return c, c.next_update() - dt.timedelta(seconds=1)


@needs_captures
def test_tcb_info_for_another_platform_fails_fmspc() -> None:
    cap = capture(CAPTURE_NAMES[0])
    other, _ = qvl_collateral("tdx_quote_td15ex")  # FMSPC b0c06f000000, current in 2026-10
    now = dt.datetime(2026, 10, 20, tzinfo=dt.UTC)
    checks = verify_quote(cap.raw, collateral=other, now=now)
    assert "tdx.fmspc" in failing(checks)
    assert "90c06f000000" in {c.id: c for c in checks}["tdx.fmspc"].reason


# --- agreement with dcap-qvl ----------------------------------------------------------------

QVL_SAMPLES = {
    # sample: (our TCB status, full verification passes?)
    "tdx_quote": ("UpToDate", True),
    "tdx_quote_outdated": ("TcbNotSupported", False),  # dcap-qvl: "No matching TCB level found"
    "tdx_quote_td15ex": ("UpToDate", True),
}


@pytest.mark.parametrize("sample", sorted(QVL_SAMPLES))
def test_dcap_qvl_samples(sample: str) -> None:
    raw = (DCAP_QVL / sample).read_bytes()
    c, now = qvl_collateral(sample)
    expected_status, all_pass = QVL_SAMPLES[sample]
    result = tcb_status(parse_quote(raw), c)
    assert result.status == expected_status
    checks = verify_quote(raw, collateral=c, now=now)
    if all_pass:
        assert failing(checks) == set()
    else:
        assert failing(checks) == {"tdx.tcb.status"}
        row = {x.id: x for x in checks}["tdx.tcb.status"]
        assert row.kind == "verification" and "no TCB level" in row.reason


def _qvl_verdict(
    raw: bytes, c: Collateral, now: dt.datetime, root_der: bytes | None = None
) -> tuple[str, list[str]]:
    """dcap-qvl's verdict: (status, advisory ids), or ("error: ...", [])."""
    dcap_qvl = pytest.importorskip("dcap_qvl")
    tcb_raw, tcb_sig, _ = c.tcb_info_signed
    qe_raw, qe_sig, _ = c.qe_identity_signed

    def pem(chain: tuple[x509.Certificate, ...]) -> str:
        return "".join(x.public_bytes(Encoding.PEM).decode() for x in chain)

    collateral = dcap_qvl.QuoteCollateralV3.from_json(
        json.dumps(
            {
                "pck_crl_issuer_chain": pem(c.pck_crl_issuer_chain),
                "root_ca_crl": (c.root_ca_crl or b"").hex(),
                "pck_crl": c.pck_crl.hex(),
                "tcb_info_issuer_chain": pem(c.tcb_info_issuer_chain),
                "tcb_info": tcb_raw.decode(),
                "tcb_info_signature": tcb_sig.hex(),
                "qe_identity_issuer_chain": pem(c.qe_identity_issuer_chain),
                "qe_identity": qe_raw.decode(),
                "qe_identity_signature": qe_sig.hex(),
            }
        )
    )
    try:
        if root_der is None:
            report = dcap_qvl.verify(raw, collateral, int(now.timestamp()))
        else:
            report = dcap_qvl.verify_with_root_ca(raw, collateral, root_der, int(now.timestamp()))
    except ValueError as exc:
        return f"error: {exc}", []
    return report.status, list(report.advisory_ids)


def _agree(
    ours_status: str, ours_advisories: tuple[str, ...], theirs: tuple[str, list[str]]
) -> None:
    status, advisories = theirs
    if status.startswith("error"):
        # dcap-qvl refuses outright: a Revoked TCB, no matching level, no module identity.
        if "TCB status is invalid: Revoked" in status:
            assert ours_status == "Revoked"
        else:
            assert ours_status in ("TcbNotSupported", "TdxModuleMismatch"), status
        return
    assert ours_status == status
    assert set(ours_advisories) == set(advisories)


@pytest.mark.parametrize("sample", sorted(QVL_SAMPLES))
def test_dcap_qvl_agrees_on_its_samples(sample: str) -> None:
    raw = (DCAP_QVL / sample).read_bytes()
    c, now = qvl_collateral(sample)
    result = tcb_status(parse_quote(raw), c)
    _agree(result.status, result.advisory_ids, _qvl_verdict(raw, c, now))


@needs_captures
@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_dcap_qvl_agrees_on_the_captures(name: str) -> None:
    cap = capture(name)
    result = tcb_status(parse_quote(cap.raw), cap.collateral)
    theirs = _qvl_verdict(cap.raw, cap.collateral, cap.now)
    assert theirs == ("UpToDate", [])
    _agree(result.status, result.advisory_ids, theirs)


# A matrix of TCB situations, signed under the development root, judged by both.
NOW = dt.datetime(2026, 4, 24, 2, 0, tzinfo=dt.UTC)
STATUSES = [
    "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
    "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked",
]  # fmt: skip


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulatedTdx:
    return SimulatedTdx.load_or_create(tmp_path_factory.mktemp("sim"), now=NOW)


def _level(tcb: dict[str, Any], status: str, advisories: list[str]) -> dict[str, Any]:
    out = {"tcb": tcb, "tcbDate": "2023-01-01T00:00:00Z", "tcbStatus": status}
    if advisories:
        out["advisoryIDs"] = advisories
    return out


def _matrix(sim: SimulatedTdx) -> dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    base = sim.default_tcb_info(NOW)
    qe_base = sim.default_qe_identity(NOW)
    cases: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]] = {}

    def variant(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        t = copy.deepcopy(base)
        edit(t)
        return t

    def qe_variant(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        q = copy.deepcopy(qe_base)
        edit(q)
        return q

    for st in STATUSES:

        def set_status(t: dict[str, Any], st: str = st) -> None:
            t["tcbLevels"][0]["tcbStatus"] = st
            if st != "UpToDate":
                t["tcbLevels"][0]["advisoryIDs"] = ["INTEL-SA-00001"]

        cases[f"platform {st}"] = (variant(set_status), None)

    def below(field: str, index: int | None, status: str) -> Callable[[dict[str, Any]], None]:
        """Top level needs more than the platform has; the next level is ``status``."""

        def edit(t: dict[str, Any]) -> None:
            top = copy.deepcopy(t["tcbLevels"][0])
            lower = copy.deepcopy(top)
            if index is None:
                top["tcb"][field] += 1
            else:
                top["tcb"][field][index]["svn"] += 1
            t["tcbLevels"] = [
                top,
                _level(lower["tcb"], status, ["INTEL-SA-00004", "INTEL-SA-00005"]),
            ]

        return edit

    cases["sgx component falls to OutOfDate"] = (
        variant(below("sgxtcbcomponents", 3, "OutOfDate")),
        None,
    )
    cases["pcesvn falls to SWHardeningNeeded"] = (
        variant(below("pcesvn", None, "SWHardeningNeeded")),
        None,
    )
    cases["tdx component falls to ConfigurationNeeded"] = (
        variant(below("tdxtcbcomponents", 2, "ConfigurationNeeded")),
        None,
    )
    # With a TDX module major version (TEE_TCB_SVN[1] = 1), bytes 0-1 are the module's:
    # a higher requirement there does not demote the platform.
    cases["tdx component 0 ignored"] = (variant(below("tdxtcbcomponents", 0, "OutOfDate")), None)

    def module(status: str, platform: str = "UpToDate") -> Callable[[dict[str, Any]], None]:
        def edit(t: dict[str, Any]) -> None:
            t["tcbLevels"][0]["tcbStatus"] = platform
            levels = t["tdxModuleIdentities"][0]["tcbLevels"]
            levels[0]["tcb"]["isvsvn"] += 1
            levels.append(
                _level({"isvsvn": levels[0]["tcb"]["isvsvn"] - 1}, status, ["INTEL-SA-00002"])
            )

        return edit

    cases["module OutOfDate"] = (variant(module("OutOfDate")), None)
    cases["module Revoked"] = (variant(module("Revoked")), None)
    cases["module OutOfDate, platform ConfigurationNeeded"] = (
        variant(module("OutOfDate", "ConfigurationNeeded")),
        None,
    )
    cases["module identity missing"] = (
        variant(lambda t: t["tdxModuleIdentities"][0].update(id="TDX_02")),
        None,
    )

    def qe(status: str) -> Callable[[dict[str, Any]], None]:
        def edit(q: dict[str, Any]) -> None:
            q["tcbLevels"][0]["tcb"]["isvsvn"] += 1
            q["tcbLevels"].append(
                _level(
                    {"isvsvn": q["tcbLevels"][0]["tcb"]["isvsvn"] - 1}, status, ["INTEL-SA-00003"]
                )
            )

        return edit

    cases["QE OutOfDate"] = (None, qe_variant(qe("OutOfDate")))
    cases["QE Revoked"] = (None, qe_variant(qe("Revoked")))
    cases["QE OutOfDate, platform SWHardeningNeeded"] = (
        variant(lambda t: t["tcbLevels"][0].update(tcbStatus="SWHardeningNeeded")),
        qe_variant(qe("OutOfDate")),
    )
    cases["no level matches"] = (
        variant(lambda t: t["tcbLevels"][0]["tcb"]["sgxtcbcomponents"][0].update(svn=99)),
        None,
    )
    return cases


MATRIX_IDS = [
    *(f"platform {s}" for s in STATUSES),
    "sgx component falls to OutOfDate", "pcesvn falls to SWHardeningNeeded",
    "tdx component falls to ConfigurationNeeded", "tdx component 0 ignored",
    "module OutOfDate", "module Revoked", "module OutOfDate, platform ConfigurationNeeded",
    "module identity missing", "QE OutOfDate", "QE Revoked",
    "QE OutOfDate, platform SWHardeningNeeded", "no level matches",
]  # fmt: skip

EXPECTED = {
    "sgx component falls to OutOfDate": "OutOfDate",
    "pcesvn falls to SWHardeningNeeded": "SWHardeningNeeded",
    "tdx component falls to ConfigurationNeeded": "ConfigurationNeeded",
    "tdx component 0 ignored": "UpToDate",
    "module OutOfDate": "OutOfDate",
    "module Revoked": "Revoked",
    "module OutOfDate, platform ConfigurationNeeded": "OutOfDateConfigurationNeeded",
    "module identity missing": "TdxModuleMismatch",
    "QE OutOfDate": "OutOfDate",
    "QE Revoked": "Revoked",
    "QE OutOfDate, platform SWHardeningNeeded": "OutOfDate",
    "no level matches": "TcbNotSupported",
    **{f"platform {s}": s for s in STATUSES},
}


@pytest.mark.parametrize("case", MATRIX_IDS)
def test_tcb_matrix_and_dcap_qvl_agree(sim: SimulatedTdx, case: str) -> None:
    tcb_info, qe_identity = _matrix(sim)[case]
    c = sim.collateral(NOW, tcb_info=tcb_info, qe_identity=qe_identity)
    raw = sim.quote(bytes(64))
    result = tcb_status(parse_quote(raw), c)
    assert result.status == EXPECTED[case]
    checks = {
        x.id: x for x in verify_quote(raw, trust_roots=[sim.root_cert], collateral=c, now=NOW)
    }
    row = checks["tdx.tcb.status"]
    if result.status == "UpToDate":
        assert row.status is Status.PASS
    else:
        assert row.status is Status.FAIL and result.status in row.reason
        # An Intel status is for the policy to judge; no status at all is a verification failure.
        assert row.kind == ("policy" if result.recognized else "verification")
        for advisory in result.advisory_ids:
            assert advisory in row.reason
    assert all(x.status is Status.PASS for k, x in checks.items() if k != "tdx.tcb.status")
    _agree(result.status, result.advisory_ids,
           _qvl_verdict(raw, c, NOW, sim.root_cert.public_bytes(Encoding.DER)))  # fmt: skip


def test_revoked_pck_and_intermediate(sim: SimulatedTdx) -> None:
    raw = sim.quote(bytes(64))
    root = sim.root_cert.public_bytes(Encoding.DER)
    c = sim.collateral(NOW, revoke_pck=True)
    checks = verify_quote(raw, trust_roots=[sim.root_cert], collateral=c, now=NOW)
    assert failing(checks) == {"tdx.collateral.pck_crl"}
    assert "revoked" in {x.id: x for x in checks}["tdx.collateral.pck_crl"].reason
    assert _qvl_verdict(raw, c, NOW, root)[0].startswith("error")
    c = sim.collateral(NOW, revoke_intermediate=True)
    checks = verify_quote(raw, trust_roots=[sim.root_cert], collateral=c, now=NOW)
    assert failing(checks) == {"tdx.collateral.root_ca_crl"}
    assert _qvl_verdict(raw, c, NOW, root)[0].startswith("error")


# --- speed -----------------------------------------------------------------------------------


@needs_captures
def test_warm_verification_is_fast() -> None:
    cap = capture(CAPTURE_NAMES[0])
    verify_quote(cap.raw, collateral=cap.collateral, now=cap.now)  # warm up caches
    times = []
    for _ in range(15):
        t = time.perf_counter()
        checks = verify_quote(cap.raw, collateral=cap.collateral, now=cap.now)
        times.append(time.perf_counter() - t)
    assert failing(checks) == set()
    assert statistics.median(times) < 0.050, times
