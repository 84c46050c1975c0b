"""Intel's collateral for a TDX quote, and where it comes from.

Collateral is what Intel publishes, signed, about platforms and quoting
enclaves (Intel PCS API v4):

- TDX TCB info for the platform's FMSPC (``/tdx/certification/v4/tcb``),
  signed by the Intel SGX TCB Signing certificate;
- the TDX quoting enclave's identity (``/tdx/certification/v4/qe/identity``),
  signed by the same certificate;
- the PCK CRL of the CA that issued the PCK certificate
  (``/sgx/certification/v4/pckcrl?ca=platform|processor``);
- the Intel SGX Root CA's CRL (served at the root's CRL distribution point,
  ``https://certificates.trustedservices.intel.com/IntelSGXRootCA.der``;
  despite the name, that URL serves the CRL, not the certificate).

:class:`Collateral` holds these *as Intel served them* (JSON bodies byte for
byte, because Intel signs the exact bytes of the ``tcbInfo`` /
``enclaveIdentity`` value; CRLs as DER) plus the issuer chains from the
response headers. Nothing here checks a signature: that is :mod:`.verify`.
Parsing collateral happens lazily and raises
:class:`~enclaved.errors.EvidenceParseError` when it is malformed.

Where collateral comes from is elsewhere: :mod:`.sources` (the
:class:`~.sources.CollateralSource` protocol, a recorded capture
:class:`~.sources.DirectoryCollateral`), :mod:`.pcs` (Intel PCS over httpx,
sync and async drivers over one sans-IO core) and :mod:`.pcs_cache` (its
on-disk cache).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ...errors import EvidenceParseError
from .._x509 import DECODE_ERRORS, decoded_crl
from .parse import load_pem_chain

__all__ = [
    "Collateral",
    "QeIdentity",
    "QeTcbLevel",
    "TcbInfo",
    "TcbLevel",
    "TdxModuleIdentity",
    "split_signed_json",
]


# --- parsed, signed JSON ----------------------------------------------------------


def _parse_time(value: Any, what: str) -> dt.datetime:
    if not isinstance(value, str):
        raise EvidenceParseError(f"{what}: expected an ISO 8601 time")
    try:
        t = dt.datetime.fromisoformat(value)  # Python >= 3.11 reads a trailing "Z"
    except ValueError as exc:
        raise EvidenceParseError(f"{what}: {value!r} is not an ISO 8601 time") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t


def _hex(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise EvidenceParseError(f"{what}: expected a hex string")
    try:
        b = bytes.fromhex(value)
    except ValueError as exc:
        raise EvidenceParseError(f"{what}: not hex") from exc
    if size is not None and len(b) != size:
        raise EvidenceParseError(f"{what}: expected {size} bytes, got {len(b)}")
    return b


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise EvidenceParseError(f"{what}: expected an integer")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise EvidenceParseError(f"{what}: expected a string")
    return value


def _advisories(level: Mapping[str, Any]) -> tuple[str, ...]:
    ids = level.get("advisoryIDs", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise EvidenceParseError("advisoryIDs: expected a list of strings")
    return tuple(ids)


def split_signed_json(body: bytes, key: str) -> tuple[bytes, bytes, dict[str, Any]]:
    """``{"<key>": {...}, "signature": "<hex>"}`` -> (exact bytes of the value, signature, value).

    Intel signs the bytes of the value as served, so they are cut out of the
    body rather than re-serialized: a re-serialization may differ by a
    space and would fail the signature (or, worse, pass on other bytes).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvidenceParseError(f"{key} collateral is not UTF-8") from exc
    dec = json.JSONDecoder()

    def skip_ws(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    pos = skip_ws(0)
    if text[pos : pos + 1] != "{":
        raise EvidenceParseError(f"{key} collateral is not a JSON object")
    pos += 1
    raw: dict[str, tuple[int, int, Any]] = {}
    try:
        while True:
            pos = skip_ws(pos)
            if text[pos : pos + 1] == "}" and not raw:
                break
            name, pos = dec.raw_decode(text, pos)
            pos = skip_ws(pos)
            if not isinstance(name, str) or text[pos : pos + 1] != ":":
                raise EvidenceParseError(f"{key} collateral: malformed JSON object")
            pos = skip_ws(pos + 1)
            start = pos
            value, pos = dec.raw_decode(text, pos)
            if name in raw:
                raise EvidenceParseError(f"{key} collateral: duplicate key {name!r}")
            raw[name] = (start, pos, value)
            pos = skip_ws(pos)
            if text[pos : pos + 1] == ",":
                pos += 1
                continue
            if text[pos : pos + 1] == "}":
                break
            raise EvidenceParseError(f"{key} collateral: malformed JSON object")
    except json.JSONDecodeError as exc:
        raise EvidenceParseError(f"{key} collateral: invalid JSON: {exc}") from exc
    if text[pos + 1 :].strip():
        raise EvidenceParseError(f"{key} collateral: data after the JSON object")
    if key not in raw or "signature" not in raw:
        raise EvidenceParseError(f"collateral: expected {key!r} and 'signature'")
    start, end, value = raw[key]
    if not isinstance(value, dict):
        raise EvidenceParseError(f"collateral: {key!r} is not an object")
    signature = _hex(raw["signature"][2], f"{key} signature", 64)
    return text[start:end].encode("utf-8"), signature, value


@dataclasses.dataclass(frozen=True)
class TcbLevel:
    """One TCB level of TDX TCB info (v3), highest first as Intel publishes them."""

    sgx_components: tuple[int, ...]
    pcesvn: int
    tdx_components: tuple[int, ...]
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class IsvsvnTcbLevel:
    """A TCB level keyed by one ISVSVN: the QE identity's and a TDX module identity's."""

    isvsvn: int
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


TdxModuleTcbLevel = IsvsvnTcbLevel
QeTcbLevel = IsvsvnTcbLevel


def _isvsvn_levels(raw_levels: Any, what: str, *, required: bool) -> tuple[IsvsvnTcbLevel, ...]:
    """``tcbLevels`` of a QE identity or a TDX module identity."""
    if required and (not isinstance(raw_levels, list) or not raw_levels):
        raise EvidenceParseError(f"{what}: tcbLevels missing or empty")
    if not isinstance(raw_levels, list):
        raise EvidenceParseError(f"{what}: tcbLevels must be a list")
    levels = []
    for lv in raw_levels:
        if not isinstance(lv, dict) or not isinstance(lv.get("tcb", {}), dict):
            raise EvidenceParseError(f"{what}: malformed tcb level")
        levels.append(
            IsvsvnTcbLevel(
                isvsvn=_int(lv.get("tcb", {}).get("isvsvn"), f"{what} isvsvn"),
                tcb_date=_str(lv.get("tcbDate", ""), f"{what} tcbDate"),
                status=_str(lv.get("tcbStatus"), f"{what} tcbStatus"),
                advisory_ids=_advisories(lv),
            )
        )
    return tuple(levels)


@dataclasses.dataclass(frozen=True)
class TdxModuleIdentity:
    """``tdxModule`` (no id, no levels) or one of ``tdxModuleIdentities`` (``TDX_xx``)."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[TdxModuleTcbLevel, ...]


@dataclasses.dataclass(frozen=True)
class TcbInfo:
    """TDX TCB info (``tcbInfo``, version 3), parsed. Says nothing about its signature."""

    id: str
    version: int
    issue_date: dt.datetime
    next_update: dt.datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModuleIdentity | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TcbInfo:
        def module(m: Any, what: str, with_levels: bool) -> TdxModuleIdentity:
            if not isinstance(m, dict):
                raise EvidenceParseError(f"{what}: expected an object")
            raw_levels = m.get("tcbLevels", []) if with_levels else []
            levels = _isvsvn_levels(raw_levels, what, required=False)
            return TdxModuleIdentity(
                id=_str(m.get("id", ""), f"{what} id"),
                mrsigner=_hex(m.get("mrsigner"), f"{what} mrsigner", 48),
                attributes=_hex(m.get("attributes"), f"{what} attributes", 8),
                attributes_mask=_hex(m.get("attributesMask"), f"{what} attributesMask", 8),
                tcb_levels=levels,
            )

        def components(tcb: Mapping[str, Any], name: str) -> tuple[int, ...]:
            comps = tcb.get(name)
            if not isinstance(comps, list) or len(comps) != 16:
                raise EvidenceParseError(f"TCB info: {name} must list 16 components")
            return tuple(_int(c.get("svn") if isinstance(c, dict) else None, name) for c in comps)

        levels = []
        raw_levels = d.get("tcbLevels")
        if not isinstance(raw_levels, list) or not raw_levels:
            raise EvidenceParseError("TCB info: tcbLevels missing or empty")
        for lv in raw_levels:
            tcb = lv.get("tcb") if isinstance(lv, dict) else None
            if not isinstance(tcb, dict):
                raise EvidenceParseError("TCB info: tcb level without 'tcb'")
            levels.append(
                TcbLevel(
                    sgx_components=components(tcb, "sgxtcbcomponents"),
                    pcesvn=_int(tcb.get("pcesvn"), "TCB info pcesvn"),
                    tdx_components=components(tcb, "tdxtcbcomponents"),
                    tcb_date=_str(lv.get("tcbDate", ""), "TCB info tcbDate"),
                    status=_str(lv.get("tcbStatus"), "TCB info tcbStatus"),
                    advisory_ids=_advisories(lv),
                )
            )
        identities = d.get("tdxModuleIdentities", [])
        if not isinstance(identities, list):
            raise EvidenceParseError("TCB info: tdxModuleIdentities must be a list")
        return cls(
            id=_str(d.get("id"), "TCB info id"),
            version=_int(d.get("version"), "TCB info version"),
            issue_date=_parse_time(d.get("issueDate"), "TCB info issueDate"),
            next_update=_parse_time(d.get("nextUpdate"), "TCB info nextUpdate"),
            fmspc=_hex(d.get("fmspc"), "TCB info fmspc", 6),
            pce_id=_hex(d.get("pceId"), "TCB info pceId", 2),
            tcb_type=_int(d.get("tcbType", 0), "TCB info tcbType"),
            tcb_evaluation_data_number=_int(
                d.get("tcbEvaluationDataNumber", 0), "TCB info tcbEvaluationDataNumber"
            ),
            tdx_module=(
                module(d["tdxModule"], "TCB info tdxModule", False) if "tdxModule" in d else None
            ),
            tdx_module_identities=tuple(
                module(m, "TCB info tdxModuleIdentities", True) for m in identities
            ),
            tcb_levels=tuple(levels),
        )


@dataclasses.dataclass(frozen=True)
class QeIdentity:
    """The quoting enclave identity (``enclaveIdentity``, version 2), parsed."""

    id: str
    version: int
    issue_date: dt.datetime
    next_update: dt.datetime
    tcb_evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    tcb_levels: tuple[QeTcbLevel, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QeIdentity:
        levels = _isvsvn_levels(d.get("tcbLevels"), "QE identity", required=True)
        return cls(
            id=_str(d.get("id"), "QE identity id"),
            version=_int(d.get("version"), "QE identity version"),
            issue_date=_parse_time(d.get("issueDate"), "QE identity issueDate"),
            next_update=_parse_time(d.get("nextUpdate"), "QE identity nextUpdate"),
            tcb_evaluation_data_number=_int(
                d.get("tcbEvaluationDataNumber", 0), "QE identity tcbEvaluationDataNumber"
            ),
            miscselect=int.from_bytes(_hex(d.get("miscselect"), "QE miscselect", 4), "big"),
            miscselect_mask=int.from_bytes(
                _hex(d.get("miscselectMask"), "QE miscselectMask", 4), "big"
            ),
            attributes=_hex(d.get("attributes"), "QE attributes", 16),
            attributes_mask=_hex(d.get("attributesMask"), "QE attributesMask", 16),
            mrsigner=_hex(d.get("mrsigner"), "QE mrsigner", 32),
            isvprodid=_int(d.get("isvprodid"), "QE isvprodid"),
            tcb_levels=levels,
        )


# --- the collateral -----------------------------------------------------------------


def _chain(value: str | bytes | Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """An issuer chain from a header value (URL-encoded PEM), PEM, or certificates."""
    if isinstance(value, (str, bytes)):
        text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
        if "%" in text:
            text = urllib.parse.unquote(text)
        return load_pem_chain(text.encode("ascii", errors="replace"))
    return tuple(value)


def _crl_der(value: bytes | str, what: str) -> bytes:
    """A CRL as DER, from DER, PEM, or hex (PCCS serves hex)."""
    if isinstance(value, str):
        value = value.encode("ascii", errors="replace")
    stripped = value.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            crl = x509.load_pem_x509_crl(stripped)
        except DECODE_ERRORS as exc:
            raise EvidenceParseError(f"{what}: malformed PEM CRL") from exc
        return crl.public_bytes(Encoding.DER)
    if stripped[:1] != b"\x30" and re.fullmatch(rb"[0-9a-fA-F]+", stripped):
        return bytes.fromhex(stripped.decode())
    return bytes(value)


def _crl_times(der: bytes) -> tuple[dt.datetime, dt.datetime | None]:
    crl = _load_crl(der)
    return crl.last_update_utc, crl.next_update_utc


@functools.lru_cache(maxsize=32)
def _load_crl(der: bytes) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_der_x509_crl(der)
    except DECODE_ERRORS as exc:
        raise EvidenceParseError(f"malformed CRL: {exc}") from exc
    # The issuer and the revoked entries decode lazily: decode them now.
    return decoded_crl(crl)


@dataclasses.dataclass(frozen=True)
class Collateral:
    """Everything Intel publishes that a TDX quote is checked against.

    ``tcb_info`` and ``qe_identity`` are the PCS response bodies exactly as
    served (``{"tcbInfo": {...}, "signature": "..."}``); ``pck_crl`` and
    ``root_ca_crl`` are DER. The issuer chains come from the PCS response
    headers, leaf first. ``root_ca_crl`` may be ``None``: the root CA CRL
    check is then reported as skipped, never as passed.

    Parsed views (:attr:`tcb_info_parsed`...) are computed once per object.
    """

    tcb_info: bytes
    tcb_info_issuer_chain: tuple[x509.Certificate, ...]
    qe_identity: bytes
    qe_identity_issuer_chain: tuple[x509.Certificate, ...]
    pck_crl: bytes
    pck_crl_issuer_chain: tuple[x509.Certificate, ...]
    root_ca_crl: bytes | None = None

    @classmethod
    def from_pcs(
        cls,
        *,
        tcb_info: bytes | str,
        tcb_info_issuer_chain: str | bytes | Iterable[x509.Certificate],
        qe_identity: bytes | str,
        qe_identity_issuer_chain: str | bytes | Iterable[x509.Certificate],
        pck_crl: bytes | str,
        pck_crl_issuer_chain: str | bytes | Iterable[x509.Certificate],
        root_ca_crl: bytes | str | None = None,
    ) -> Collateral:
        """Build from PCS responses: chains as header values (URL-encoded PEM) or PEM;
        CRLs as DER, PEM or hex."""

        def raw(v: bytes | str) -> bytes:
            return v.encode("utf-8") if isinstance(v, str) else bytes(v)

        return cls(
            tcb_info=raw(tcb_info),
            tcb_info_issuer_chain=_chain(tcb_info_issuer_chain),
            qe_identity=raw(qe_identity),
            qe_identity_issuer_chain=_chain(qe_identity_issuer_chain),
            pck_crl=_crl_der(pck_crl, "PCK CRL"),
            pck_crl_issuer_chain=_chain(pck_crl_issuer_chain),
            root_ca_crl=None if root_ca_crl is None else _crl_der(root_ca_crl, "root CA CRL"),
        )

    # -- parsed views (cached on the instance) ----------------------------------
    @functools.cached_property
    def tcb_info_signed(self) -> tuple[bytes, bytes, dict[str, Any]]:
        """(signed bytes, signature r||s, JSON value) of the TCB info."""
        return split_signed_json(self.tcb_info, "tcbInfo")

    @functools.cached_property
    def tcb_info_parsed(self) -> TcbInfo:
        return TcbInfo.from_dict(self.tcb_info_signed[2])

    @functools.cached_property
    def qe_identity_signed(self) -> tuple[bytes, bytes, dict[str, Any]]:
        return split_signed_json(self.qe_identity, "enclaveIdentity")

    @functools.cached_property
    def qe_identity_parsed(self) -> QeIdentity:
        return QeIdentity.from_dict(self.qe_identity_signed[2])

    @property
    def pck_crl_parsed(self) -> x509.CertificateRevocationList:
        return _load_crl(self.pck_crl)

    @property
    def root_ca_crl_parsed(self) -> x509.CertificateRevocationList | None:
        return None if self.root_ca_crl is None else _load_crl(self.root_ca_crl)

    def next_update(self) -> dt.datetime:
        """The earliest ``nextUpdate`` of every item: after it, this collateral is stale."""
        times = [self.tcb_info_parsed.next_update, self.qe_identity_parsed.next_update]
        for der in (self.pck_crl, self.root_ca_crl):
            if der is not None:
                nxt = _crl_times(der)[1]
                if nxt is not None:
                    times.append(nxt)
        return min(times)

    # -- serialization for the disk cache ----------------------------------------
    def to_json(self) -> str:
        def pem(chain: tuple[x509.Certificate, ...]) -> str:
            return "".join(c.public_bytes(Encoding.PEM).decode() for c in chain)

        return json.dumps(
            {
                "tcb_info": self.tcb_info.decode("utf-8"),
                "tcb_info_issuer_chain": pem(self.tcb_info_issuer_chain),
                "qe_identity": self.qe_identity.decode("utf-8"),
                "qe_identity_issuer_chain": pem(self.qe_identity_issuer_chain),
                "pck_crl": base64.b64encode(self.pck_crl).decode(),
                "pck_crl_issuer_chain": pem(self.pck_crl_issuer_chain),
                "root_ca_crl": (
                    None
                    if self.root_ca_crl is None
                    else base64.b64encode(self.root_ca_crl).decode()
                ),
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Collateral:
        try:
            d = json.loads(text)
            return cls(
                tcb_info=d["tcb_info"].encode("utf-8"),
                tcb_info_issuer_chain=_chain(d["tcb_info_issuer_chain"]),
                qe_identity=d["qe_identity"].encode("utf-8"),
                qe_identity_issuer_chain=_chain(d["qe_identity_issuer_chain"]),
                pck_crl=base64.b64decode(d["pck_crl"]),
                pck_crl_issuer_chain=_chain(d["pck_crl_issuer_chain"]),
                root_ca_crl=(
                    None if d.get("root_ca_crl") is None else base64.b64decode(d["root_ca_crl"])
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EvidenceParseError(f"malformed collateral JSON: {exc}") from exc
