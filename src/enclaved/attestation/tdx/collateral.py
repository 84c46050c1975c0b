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

Sources (:class:`CollateralSource`): :class:`DirectoryCollateral` reads a
recorded capture (``responses/`` as in ``shared/testdata/captures``);
:class:`PcsCollateral` fetches from Intel PCS (or a PCCS) over httpx with an
on-disk cache per FMSPC, through a sync getter (:meth:`PcsCollateral.get`,
an :class:`httpx.Client`) or an async one (:meth:`PcsCollateral.aget`, an
:class:`httpx.AsyncClient`). A transport failure is a
:class:`~enclaved.errors.NetworkError`, never a verification failure.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ...errors import ConfigError, EvidenceParseError, NetworkError
from .._x509 import DECODE_ERRORS, decoded_crl
from .parse import Quote, load_pem_chain, pck_ca, pck_extensions

__all__ = [
    "INTEL_PCS_URL",
    "INTEL_ROOT_CA_CRL_URL",
    "Collateral",
    "CollateralSource",
    "DirectoryCollateral",
    "PcsCollateral",
    "QeIdentity",
    "QeTcbLevel",
    "TcbInfo",
    "TcbLevel",
    "TdxModuleIdentity",
    "collateral_for",
]

logger = logging.getLogger("enclaved.attestation.tdx.collateral")

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
#: The Intel SGX Root CA's CRL distribution point (it serves the CRL, DER).
INTEL_ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"


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


# --- sources -------------------------------------------------------------------------


@runtime_checkable
class CollateralSource(Protocol):
    """Where collateral comes from: ``get(fmspc, ca)`` with ``ca`` "platform" or "processor".

    A source may also have ``async def aget(fmspc, ca)``, its async twin
    (:class:`PcsCollateral` and :class:`DirectoryCollateral` do); the
    verifier's :meth:`~enclaved.attestation.Verifier.afetch` calls a source
    without one on a worker thread.
    """

    def get(self, fmspc: bytes, ca: str) -> Collateral: ...


def collateral_for(quote: Quote, source: CollateralSource) -> Collateral:
    """The collateral for this quote's platform (FMSPC and PCK CA from its PCK leaf)."""
    leaf = quote.pck_leaf
    return source.get(pck_extensions(leaf).fmspc, pck_ca(leaf))


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            if isinstance(v, list):
                return str(v[0]) if v else None
            return str(v)
    return None


_TCB_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
_QE_CHAIN_HEADER = "SGX-Enclave-Identity-Issuer-Chain"
_CRL_CHAIN_HEADER = "SGX-PCK-CRL-Issuer-Chain"


class DirectoryCollateral:
    """Collateral recorded in a capture: a ``responses/`` folder of ``NNNN_*.body``
    files, each with a ``.json`` beside it holding the URL, status and headers.

    Recognized by URL: ``/tdx/certification/v4/tcb?fmspc=``,
    ``/tdx/certification/v4/qe/identity``, ``/sgx/certification/v4/pckcrl?ca=``;
    the root CA CRL is any other recorded body that parses as a DER CRL (Intel
    serves it at ``IntelSGXRootCA.der``). A missing item is a
    :class:`~enclaved.errors.ConfigError` (the directory is configuration).
    """

    #: Reads no network (the files are read here, once): a verifier may
    #: consult it without a fetch step.
    local = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        if (p / "responses").is_dir():
            p = p / "responses"
        if not p.is_dir():
            raise ConfigError(f"collateral directory {p} does not exist")
        self.path = p
        self._tcb: dict[str, tuple[bytes, str]] = {}
        self._crl: dict[str, tuple[bytes, str]] = {}
        self._qe: tuple[bytes, str] | None = None
        self._root_crl: bytes | None = None
        self._cache: dict[tuple[str, str], Collateral] = {}
        self._scan()

    def _scan(self) -> None:
        for meta_path in sorted(self.path.glob("*.json")):
            body_path = meta_path.with_suffix(".body")
            if not body_path.exists():
                continue
            try:
                meta = json.loads(meta_path.read_text())
            except ValueError:
                continue
            if not isinstance(meta, dict) or meta.get("status", 200) != 200:
                continue
            url = urllib.parse.urlsplit(str(meta.get("url", "")))
            query = urllib.parse.parse_qs(url.query)
            headers = meta.get("headers", {}) or {}
            body = body_path.read_bytes()
            if url.path.endswith("/tdx/certification/v4/tcb"):
                chain = next(
                    (h for h in (_header(headers, n) for n in _TCB_CHAIN_HEADERS) if h), None
                )
                fmspc = (query.get("fmspc") or [""])[0].lower()
                if chain:
                    self._tcb[fmspc] = (body, chain)
            elif url.path.endswith("/tdx/certification/v4/qe/identity"):
                chain = _header(headers, _QE_CHAIN_HEADER)
                if chain:
                    self._qe = (body, chain)
            elif url.path.endswith("/pckcrl"):
                chain = _header(headers, _CRL_CHAIN_HEADER)
                ca = (query.get("ca") or ["platform"])[0].lower()
                if chain:
                    self._crl[ca] = (body, chain)
            elif "trustedservices.intel.com" in url.netloc or url.path.endswith(
                ("rootcacrl", ".crl", ".der")
            ):
                try:
                    x509.load_der_x509_crl(body)
                except DECODE_ERRORS:
                    continue  # e.g. a certificate, not a CRL
                self._root_crl = body

    def get(self, fmspc: bytes, ca: str) -> Collateral:
        key = (fmspc.hex(), ca.lower())
        if key in self._cache:
            return self._cache[key]
        if key[0] not in self._tcb:
            raise ConfigError(f"{self.path}: no TDX TCB info recorded for FMSPC {key[0]}")
        if self._qe is None:
            raise ConfigError(f"{self.path}: no TDX QE identity recorded")
        if key[1] not in self._crl:
            raise ConfigError(f"{self.path}: no PCK CRL recorded for ca={key[1]}")
        tcb_body, tcb_chain = self._tcb[key[0]]
        crl_body, crl_chain = self._crl[key[1]]
        collateral = Collateral.from_pcs(
            tcb_info=tcb_body,
            tcb_info_issuer_chain=tcb_chain,
            qe_identity=self._qe[0],
            qe_identity_issuer_chain=self._qe[1],
            pck_crl=crl_body,
            pck_crl_issuer_chain=crl_chain,
            root_ca_crl=self._root_crl,
        )
        self._cache[key] = collateral
        return collateral

    async def aget(self, fmspc: bytes, ca: str) -> Collateral:
        """The same as :meth:`get`: the files were read when the directory was opened."""
        return self.get(fmspc, ca)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PcsCollateral:
    """Collateral from Intel PCS (or a PCCS with the same v4 API), cached on disk per FMSPC.

    Two drivers over one sans-IO core, as httpx has ``Client`` and
    ``AsyncClient``: :meth:`get` fetches with the sync getter ``client`` (an
    :class:`httpx.Client`), :meth:`aget` with the async getter
    ``async_client`` (an :class:`httpx.AsyncClient`), so an event loop never
    waits on Intel. Without one, each fetch opens a client of its own and
    closes it; nothing is shared through module state. Both drivers share
    the cache, the requests (:meth:`requests`) and how answers become
    :class:`Collateral` (:meth:`collateral_from`).

    A cached entry is used until ``refresh_before`` ahead of its earliest
    ``nextUpdate``, and at most ``max_age`` after it was fetched. When a
    refresh fails and the cached entry has not yet reached its
    ``nextUpdate``, the cached entry is returned (and a warning logged):
    Intel's own collateral is still current then. Otherwise the failure is a
    :class:`~enclaved.errors.NetworkError`.

    ``root_ca_crl_url=None`` skips the root CA CRL (reported as a skipped check).
    """

    def __init__(
        self,
        base_url: str = INTEL_PCS_URL,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
        root_ca_crl_url: str | None = INTEL_ROOT_CA_CRL_URL,
        max_age: dt.timedelta = dt.timedelta(hours=24),
        refresh_before: dt.timedelta = dt.timedelta(days=1),
        clock: Callable[[], dt.datetime] = _utcnow,
        timeout: float = 20.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._client = client
        self._async_client = async_client
        self.root_ca_crl_url = root_ca_crl_url
        self.max_age = max_age
        self.refresh_before = refresh_before
        self.clock = clock
        self.timeout = timeout
        self._memory: dict[tuple[str, str], tuple[dt.datetime, Collateral]] = {}

    # -- the cache ----------------------------------------------------------------------
    def _cache_path(self, fmspc_hex: str, ca: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"tdx-collateral-{fmspc_hex}-{ca}.json"

    def _usable(self, fetched_at: dt.datetime, collateral: Collateral, now: dt.datetime) -> bool:
        try:
            next_update = collateral.next_update()
        except EvidenceParseError:
            return False
        return now < fetched_at + self.max_age and now < next_update - self.refresh_before

    def _load_disk(self, fmspc_hex: str, ca: str) -> tuple[dt.datetime, Collateral] | None:
        path = self._cache_path(fmspc_hex, ca)
        if path is None or not path.exists():
            return None
        try:
            d = json.loads(path.read_text())
            fetched_at = _parse_time(d["fetched_at"], "cache fetched_at")
            return fetched_at, Collateral.from_json(d["collateral"])
        except (OSError, ValueError, KeyError, TypeError, EvidenceParseError):
            logger.warning("ignoring unreadable collateral cache %s", path)
            return None

    def _store_disk(self, fmspc_hex: str, ca: str, fetched_at: dt.datetime, c: Collateral) -> None:
        path = self._cache_path(fmspc_hex, ca)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = json.dumps({"fetched_at": fetched_at.isoformat(), "collateral": c.to_json()})
        # Write-then-rename: a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(doc)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- the sans-IO core: the cache's verdict, the requests, the answers -------------
    def _key(self, fmspc: bytes, ca: str) -> tuple[str, str]:
        ca = ca.lower()
        if ca not in ("platform", "processor"):
            raise ValueError(f"ca must be 'platform' or 'processor', not {ca!r}")
        return fmspc.hex(), ca

    def _lookup(
        self, key: tuple[str, str], now: dt.datetime
    ) -> tuple[tuple[dt.datetime, Collateral] | None, bool]:
        """(the cached entry or ``None``, whether it can be used without asking PCS)."""
        cached = self._memory.get(key) or self._load_disk(*key)
        if cached is not None and self._usable(cached[0], cached[1], now):
            self._memory[key] = cached
            return cached, True
        return cached, False

    def _fetched(self, key: tuple[str, str], now: dt.datetime, collateral: Collateral) -> None:
        self._memory[key] = (now, collateral)
        self._store_disk(key[0], key[1], now, collateral)

    def _fallback(
        self, key: tuple[str, str], now: dt.datetime, cached: tuple[dt.datetime, Collateral] | None
    ) -> Collateral | None:
        """After a failed refresh: the cached copy while Intel says it is current, else ``None``."""
        if cached is not None and now < cached[1].next_update():
            logger.warning(
                "collateral refresh for FMSPC %s failed; using the cached copy (valid until %s)",
                key[0],
                cached[1].next_update().isoformat(),
            )
            return cached[1]
        return None

    def requests(self, fmspc: bytes, ca: str) -> list[tuple[str, dict[str, str]]]:
        """The GETs that fetch the collateral, in order: (URL, query parameters).

        TCB info, QE identity, PCK CRL, then (unless ``root_ca_crl_url`` is
        ``None``) the root CA CRL.
        """
        out = [
            (f"{self.base_url}/tdx/certification/v4/tcb", {"fmspc": fmspc.hex()}),
            (f"{self.base_url}/tdx/certification/v4/qe/identity", {}),
            (f"{self.base_url}/sgx/certification/v4/pckcrl", {"ca": ca, "encoding": "der"}),
        ]
        if self.root_ca_crl_url is not None:
            out.append((self.root_ca_crl_url, {}))
        return out

    @staticmethod
    def collateral_from(answers: list[httpx.Response]) -> Collateral:
        """The answers to :meth:`requests`, in order, as :class:`Collateral`.

        Every answer is a 200 (the drivers stop at the first that is not). A
        missing issuer chain or malformed collateral is a
        :class:`~enclaved.errors.NetworkError`: a service that answers
        garbage is a service failure, not a forged quote.
        """
        tcb, qe, crl = answers[:3]
        root_crl = answers[3].content if len(answers) > 3 else None
        tcb_chain = next((tcb.headers.get(n) for n in _TCB_CHAIN_HEADERS if n in tcb.headers), None)
        qe_chain = qe.headers.get(_QE_CHAIN_HEADER)
        crl_chain = crl.headers.get(_CRL_CHAIN_HEADER)
        if not (tcb_chain and qe_chain and crl_chain):
            raise NetworkError("Intel PCS response lacks an issuer chain header")
        try:
            return Collateral.from_pcs(
                tcb_info=tcb.content,
                tcb_info_issuer_chain=tcb_chain,
                qe_identity=qe.content,
                qe_identity_issuer_chain=qe_chain,
                pck_crl=crl.content,
                pck_crl_issuer_chain=crl_chain,
                root_ca_crl=root_crl,
            )
        except EvidenceParseError as exc:
            raise NetworkError(f"Intel PCS answered malformed collateral: {exc}") from exc

    # -- the sync driver ----------------------------------------------------------------
    def get(self, fmspc: bytes, ca: str) -> Collateral:
        """The collateral, from the cache or Intel PCS through the sync getter."""
        key, now = self._key(fmspc, ca), self.clock()
        cached, usable = self._lookup(key, now)
        if cached is not None and usable:
            return cached[1]
        try:
            collateral = self.fetch(fmspc, key[1])
        except NetworkError:
            fallback = self._fallback(key, now, cached)
            if fallback is None:
                raise
            return fallback
        self._fetched(key, now, collateral)
        return collateral

    def fetch(self, fmspc: bytes, ca: str) -> Collateral:
        """Fetch fresh collateral through the sync getter, bypassing the cache."""
        client = self._client or httpx.Client(timeout=self.timeout, follow_redirects=True)
        try:
            answers = []
            for url, params in self.requests(fmspc, ca.lower()):
                try:
                    answer = client.get(url, params=params or None)
                except httpx.HTTPError as exc:
                    raise _network_error(url, exc) from exc
                answers.append(_ok(url, answer))
        finally:
            if self._client is None:
                client.close()
        return self.collateral_from(answers)

    # -- the async driver ---------------------------------------------------------------
    async def aget(self, fmspc: bytes, ca: str) -> Collateral:
        """The async twin of :meth:`get`: Intel PCS through the async getter.

        The disk cache is read and written on a worker thread (a file read,
        and parsing the certificates and CRLs it holds).
        """
        key, now = self._key(fmspc, ca), self.clock()
        cached, usable = await asyncio.to_thread(self._lookup, key, now)
        if cached is not None and usable:
            return cached[1]
        try:
            collateral = await self.afetch(fmspc, key[1])
        except NetworkError:
            fallback = self._fallback(key, now, cached)
            if fallback is None:
                raise
            return fallback
        await asyncio.to_thread(self._fetched, key, now, collateral)
        return collateral

    async def afetch(self, fmspc: bytes, ca: str) -> Collateral:
        """The async twin of :meth:`fetch`."""
        # A new client builds its TLS context from the CA bundle: ~30 ms of
        # CPU, done off the loop.
        client = self._async_client
        if client is None:
            client = await asyncio.to_thread(
                httpx.AsyncClient, timeout=self.timeout, follow_redirects=True
            )
        try:
            answers = []
            for url, params in self.requests(fmspc, ca.lower()):
                try:
                    answer = await client.get(url, params=params or None)
                except httpx.HTTPError as exc:
                    raise _network_error(url, exc) from exc
                answers.append(_ok(url, answer))
        finally:
            if self._async_client is None:
                await client.aclose()
        return self.collateral_from(answers)


def _network_error(url: str, exc: httpx.HTTPError) -> NetworkError:
    return NetworkError(f"fetching {url}: {exc.__class__.__name__}: {exc}")


def _ok(url: str, answer: httpx.Response) -> httpx.Response:
    """The answer, if 200: the next request is not sent after a failed one."""
    if answer.status_code != 200:
        raise NetworkError(f"fetching {url}: HTTP {answer.status_code}")
    return answer
