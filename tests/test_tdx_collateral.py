"""Collateral: the recorded capture as a source, Intel PCS over a mock transport, the cache.

The network edge is httpx's MockTransport serving the bodies and headers the
captures recorded from Intel PCS, byte for byte.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CAPTURES, REPORT_CAPTURES
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enclaved.attestation.checks import Status
from enclaved.attestation.tdx import (
    Collateral,
    CollateralSource,
    DirectoryCollateral,
    PcsCollateral,
    collateral_for,
    decode_quote_text,
    parse_quote,
    verify_quote,
)
from enclaved.attestation.tdx.collateral import split_signed_json
from enclaved.errors import ConfigError, EvidenceParseError, NetworkError

CAPTURE_NAMES = [p.name for p in REPORT_CAPTURES]
pytestmark = pytest.mark.skipif(not CAPTURE_NAMES, reason="shared/testdata/captures missing")

FMSPC = bytes.fromhex("90c06f000000")


def responses(name: str | None = None) -> Path:
    return CAPTURES / (name or CAPTURE_NAMES[0]) / "responses"


def recorded(prefix: str, name: str | None = None) -> tuple[bytes, dict[str, Any]]:
    r = responses(name)
    body = next(r.glob(f"{prefix}_*.body")).read_bytes()
    meta = json.loads(next(r.glob(f"{prefix}_*.json")).read_text())
    return body, meta


def capture_now(name: str | None = None) -> dt.datetime:
    _, meta = recorded("0001", name)
    return parsedate_to_datetime(meta["headers"]["Date"][0])


def capture_quote(name: str | None = None):  # type: ignore[no-untyped-def]
    body, _ = recorded("0001", name)
    return parse_quote(decode_quote_text(json.loads(body)["intel_quote"]))


# --- the recorded directory ----------------------------------------------------------


@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_directory_collateral_reads_the_capture_as_it_is(name: str) -> None:
    src = DirectoryCollateral(CAPTURES / name)
    assert isinstance(src, CollateralSource)
    c = src.get(FMSPC, "platform")
    assert c.tcb_info == recorded("0002", name)[0]
    assert c.qe_identity == recorded("0003", name)[0]
    assert c.pck_crl == recorded("0004", name)[0]  # served as DER (encoding=der)
    assert c.root_ca_crl == recorded("0005", name)[0]
    for chain in (c.tcb_info_issuer_chain, c.qe_identity_issuer_chain, c.pck_crl_issuer_chain):
        assert len(chain) == 2
    assert c.tcb_info_issuer_chain[0].subject.rfc4514_string().endswith("CN=Intel SGX TCB Signing")
    assert (
        c.pck_crl_issuer_chain[0].subject.rfc4514_string().endswith("CN=Intel SGX PCK Platform CA")
    )
    # the responses/ folder itself works too, and a second get is the same object
    assert DirectoryCollateral(responses(name)).get(FMSPC, "platform") == c
    assert src.get(FMSPC, "platform") is c
    assert collateral_for(capture_quote(name), src) is c


def test_directory_collateral_missing_items_are_config_errors(tmp_path: Path) -> None:
    src = DirectoryCollateral(CAPTURES / CAPTURE_NAMES[0])
    with pytest.raises(ConfigError, match="FMSPC 00606a000000"):
        src.get(bytes.fromhex("00606a000000"), "platform")
    with pytest.raises(ConfigError, match="ca=processor"):
        src.get(FMSPC, "processor")
    with pytest.raises(ConfigError):
        DirectoryCollateral(tmp_path / "nope")


def test_signed_json_is_cut_out_byte_for_byte() -> None:
    body, _ = recorded("0002")
    data, signature, value = split_signed_json(body, "tcbInfo")
    assert body.startswith(b'{"tcbInfo":' + data + b',"signature":"')
    assert signature.hex() == json.loads(body)["signature"]
    assert value == json.loads(body)["tcbInfo"]
    # whitespace around the members does not change what was signed
    spaced = b'{ "signature" : "' + signature.hex().encode() + b'" ,\n "tcbInfo" :\t' + data + b" }"
    assert split_signed_json(spaced, "tcbInfo")[0] == data


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"tcbInfo": {}}',
        b'{"tcbInfo": {}, "signature": "zz"}',
        b'{"tcbInfo": {}, "signature": "00"}',
        b'{"tcbInfo": [], "signature": "' + b"00" * 64 + b'"}',
        b'{"tcbInfo": {}, "tcbInfo": {}, "signature": "' + b"00" * 64 + b'"}',
        b'{"tcbInfo": {}, "signature": "' + b"00" * 64 + b'"} trailing',
        b'{"tcbInfo": {, "signature": "' + b"00" * 64 + b'"}',
        b"\xff\xfe",
    ],
)
def test_malformed_signed_json_is_a_parse_error(body: bytes) -> None:
    with pytest.raises(EvidenceParseError):
        split_signed_json(body, "tcbInfo")


def test_crl_and_chain_forms() -> None:
    crl_der, meta = recorded("0004")
    header = meta["headers"]["Sgx-Pck-Crl-Issuer-Chain"][0]
    crl_pem = x509.load_der_x509_crl(crl_der).public_bytes(Encoding.PEM)
    base = DirectoryCollateral(CAPTURES / CAPTURE_NAMES[0]).get(FMSPC, "platform")
    for crl in (crl_der, crl_pem, crl_der.hex(), crl_pem.decode()):
        for chain in (header, urllib.parse.unquote(header), base.pck_crl_issuer_chain):
            c = Collateral.from_pcs(
                tcb_info=base.tcb_info,
                tcb_info_issuer_chain=base.tcb_info_issuer_chain,
                qe_identity=base.qe_identity.decode(),
                qe_identity_issuer_chain=base.qe_identity_issuer_chain,
                pck_crl=crl,
                pck_crl_issuer_chain=chain,
                root_ca_crl=base.root_ca_crl,
            )
            assert c == base


def test_json_round_trip_and_next_update() -> None:
    c = DirectoryCollateral(CAPTURES / CAPTURE_NAMES[0]).get(FMSPC, "platform")
    assert Collateral.from_json(c.to_json()) == c
    # the earliest nextUpdate of all four items: here the QE identity's
    assert c.next_update() == dt.datetime(2026, 5, 24, 0, 57, 28, tzinfo=dt.UTC)
    assert c.tcb_info_parsed.fmspc == FMSPC
    assert c.qe_identity_parsed.id == "TD_QE"
    with pytest.raises(EvidenceParseError):
        Collateral.from_json("{}")


# --- Intel PCS over a mock transport --------------------------------------------------------


class RecordedPcs:
    """Serves the capture's PCS responses; counts requests; can be made to fail."""

    def __init__(self, *, crl_as_pem: bool = False) -> None:
        self.requests: list[httpx.Request] = []
        self.fail: Callable[[httpx.Request], httpx.Response | None] | None = None
        self.routes: dict[str, tuple[bytes, dict[str, str]]] = {}
        for prefix in ("0002", "0003", "0004", "0005"):
            body, meta = recorded(prefix)
            if prefix == "0004" and crl_as_pem:
                body = x509.load_der_x509_crl(body).public_bytes(Encoding.PEM)
            url = urllib.parse.urlsplit(meta["url"])
            headers = {k: v[0] for k, v in meta["headers"].items() if "chain" in k.lower()}
            self.routes[url.netloc + url.path] = (body, headers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail is not None:
            failure = self.fail(request)
            if failure is not None:
                return failure
        key = request.url.host + request.url.path
        if key not in self.routes:
            return httpx.Response(404)
        if request.url.path.endswith("/tcb") and request.url.params.get("fmspc") != FMSPC.hex():
            return httpx.Response(404)
        body, headers = self.routes[key]
        return httpx.Response(200, content=body, headers=headers)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def test_pcs_fetches_what_the_capture_recorded(tmp_path: Path) -> None:
    pcs = RecordedPcs()
    src = PcsCollateral(cache_dir=tmp_path, client=pcs.client(), clock=Clock(capture_now()))
    c = src.get(FMSPC, "platform")
    assert c == DirectoryCollateral(CAPTURES / CAPTURE_NAMES[0]).get(FMSPC, "platform")
    urls = [str(r.url) for r in pcs.requests]
    assert urls == [
        "https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=90c06f000000",
        "https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity",
        "https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
        "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der",
    ]
    checks = verify_quote(capture_quote(), collateral=c, now=capture_now())
    assert all(x.status is Status.PASS for x in checks)


def test_pcs_crl_in_pem_is_accepted(tmp_path: Path) -> None:
    pcs = RecordedPcs(crl_as_pem=True)
    c = PcsCollateral(client=pcs.client(), clock=Clock(capture_now())).get(FMSPC, "platform")
    assert c.pck_crl == recorded("0004")[0]


def test_pcs_cache_in_memory_and_on_disk(tmp_path: Path) -> None:
    pcs = RecordedPcs()
    clock = Clock(capture_now())
    src = PcsCollateral(cache_dir=tmp_path, client=pcs.client(), clock=clock)
    first = src.get(FMSPC, "platform")
    assert len(pcs.requests) == 4
    assert src.get(FMSPC, "platform") is first
    assert len(pcs.requests) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["tdx-collateral-90c06f000000-platform.json"]
    # a new process with the same cache directory does not go to the network
    again = PcsCollateral(cache_dir=tmp_path, client=pcs.client(), clock=clock)
    assert again.get(FMSPC, "platform") == first
    assert len(pcs.requests) == 4


def test_pcs_refreshes_after_max_age_and_before_next_update(tmp_path: Path) -> None:
    pcs = RecordedPcs()
    clock = Clock(capture_now())
    src = PcsCollateral(cache_dir=tmp_path, client=pcs.client(), clock=clock)
    src.get(FMSPC, "platform")
    clock.now += dt.timedelta(hours=23)
    src.get(FMSPC, "platform")
    assert len(pcs.requests) == 4
    clock.now += dt.timedelta(hours=2)  # older than max_age (24 h)
    src.get(FMSPC, "platform")
    assert len(pcs.requests) == 8
    # within a day of the earliest nextUpdate, even a fresh fetch is refreshed
    long_lived = PcsCollateral(
        cache_dir=tmp_path, client=pcs.client(), clock=clock, max_age=dt.timedelta(days=365)
    )
    clock.now = dt.datetime(2026, 5, 23, 1, 0, tzinfo=dt.UTC)  # next update 05-24 00:57
    long_lived.get(FMSPC, "platform")
    assert len(pcs.requests) == 12


def test_pcs_failure_falls_back_only_to_collateral_that_is_still_current(tmp_path: Path) -> None:
    pcs = RecordedPcs()
    clock = Clock(capture_now())
    src = PcsCollateral(cache_dir=tmp_path, client=pcs.client(), clock=clock)
    cached = src.get(FMSPC, "platform")
    pcs.fail = lambda r: httpx.Response(503)
    clock.now += dt.timedelta(days=2)  # past max_age, before nextUpdate: the cache still serves
    assert src.get(FMSPC, "platform") == cached
    clock.now = dt.datetime(2026, 5, 25, tzinfo=dt.UTC)  # past nextUpdate
    with pytest.raises(NetworkError, match="HTTP 503"):
        src.get(FMSPC, "platform")


def _raise_connect(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    ("fail", "message"),
    [
        (lambda r: httpx.Response(404), "HTTP 404"),
        (_raise_connect, "ConnectError"),
        (lambda r: httpx.Response(200, content=b"{}"), "issuer chain"),
        (
            lambda r: httpx.Response(
                200,
                content=b"{}",
                headers={
                    "TCB-Info-Issuer-Chain": recorded("0002")[1]["headers"][
                        "Tcb-Info-Issuer-Chain"
                    ][0],
                    "SGX-Enclave-Identity-Issuer-Chain": "x",
                    "SGX-PCK-CRL-Issuer-Chain": "x",
                },
            ),
            "malformed collateral",
        ),
    ],
    ids=["404", "connect", "no-chain", "garbage"],
)
def test_pcs_failures_are_network_errors(
    fail: Callable[[httpx.Request], httpx.Response], message: str
) -> None:
    pcs = RecordedPcs()
    pcs.fail = fail
    src = PcsCollateral(client=pcs.client(), clock=Clock(capture_now()))
    with pytest.raises(NetworkError, match=message):
        src.get(FMSPC, "platform")


def test_pcs_without_root_ca_crl(tmp_path: Path) -> None:
    pcs = RecordedPcs()
    src = PcsCollateral(client=pcs.client(), clock=Clock(capture_now()), root_ca_crl_url=None)
    c = src.get(FMSPC, "platform")
    assert c.root_ca_crl is None and len(pcs.requests) == 3
    checks = {x.id: x for x in verify_quote(capture_quote(), collateral=c, now=capture_now())}
    assert checks["tdx.collateral.root_ca_crl"].status is Status.SKIPPED


def test_pcs_unknown_fmspc_and_bad_ca() -> None:
    pcs = RecordedPcs()
    src = PcsCollateral(client=pcs.client(), clock=Clock(capture_now()))
    with pytest.raises(NetworkError, match="HTTP 404"):
        src.get(bytes.fromhex("00606a000000"), "platform")
    with pytest.raises(ValueError):
        src.get(FMSPC, "nonsense")


def test_unreadable_cache_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "tdx-collateral-90c06f000000-platform.json").write_text("not json")
    pcs = RecordedPcs()
    src = PcsCollateral(cache_dir=tmp_path, client=pcs.client(), clock=Clock(capture_now()))
    assert src.get(FMSPC, "platform").tcb_info == recorded("0002")[0]
    assert len(pcs.requests) == 4


@pytest.mark.parametrize("levels", [5, [True], [{"tcb": []}]], ids=["not-a-list", "level", "tcb"])
def test_malformed_tdx_module_levels_are_a_parse_error(levels: object) -> None:
    """A TDX module identity whose ``tcbLevels`` has the wrong shape is an
    EvidenceParseError, not a TypeError / AttributeError from inside the parser."""
    from enclaved.attestation.tdx.collateral import TcbInfo

    body = next((CAPTURES / CAPTURE_NAMES[0] / "responses").glob("0002_*.body"))
    tcb_info = json.loads(body.read_bytes())["tcbInfo"]
    TcbInfo.from_dict(tcb_info)  # the real one parses
    tcb_info["tdxModuleIdentities"][0]["tcbLevels"] = levels
    with pytest.raises(EvidenceParseError, match="tdxModuleIdentities"):
        TcbInfo.from_dict(tcb_info)
