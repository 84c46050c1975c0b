"""Intel TDX quotes: bytes in, a frozen model out. Structure only.

This module answers "what does this quote *say*?". It never answers "is it
true?": no signature, certificate, collateral or policy is checked here
(that is :mod:`.verify`). A quote that parses is not a quote that verifies.
:class:`~enclaved.errors.EvidenceParseError` means the bytes are not a
well-formed TDX quote; it never means "forged".

Layout (Intel, "TDX DCAP Quote Generation Library and Quote Verification
Library", quote format v4 and v5; all integers little-endian)::

    header                    48 bytes
      version                 u16      4 or 5
      att_key_type            u16      2 = ECDSA-256-with-P-256
      tee_type                u32      0x81 = TDX (0x00 would be SGX)
      reserved                4 bytes  (QE SVN / PCE SVN in SGX v3 quotes)
      qe_vendor_id            16 bytes Intel's QE: 939a7233f79c4ca9940a0db3957f0607
      user_data               20 bytes
    [v5 only] body descriptor 6 bytes
      body_type               u16      2 = TD report 1.0, 3 = TD report 1.5,
                                       4 = TD report 1.5 with extension
      body_size               u32      584, 648 or 885
    body (TD report)          584 bytes (v4), body_size (v5)
    signature_data_len        u32
    signature data (ECDSA-256, certification data type 6)
      quote_signature         64 bytes r||s over header [+ descriptor] + body
      attestation_key         64 bytes x||y, P-256, raw
      certification_data      type u16 = 6, size u32, then:
        qe_report             384 bytes SGX report body of the quoting enclave
        qe_report_signature   64 bytes r||s by the PCK leaf key over qe_report
        qe_auth_data          size u16, then that many bytes
        certification_data    type u16 = 5, size u32, PCK chain as PEM
                              (leaf, intermediate CA, root), maybe NUL-padded
    trailing bytes            ignored (some stacks pad quotes to a fixed size)

The bytes the attestation key signs (:attr:`Quote.signed_region`) are the
header, the v5 body descriptor and the body, exactly as received. The PCK
certificates are decoded (:attr:`Quote.pck_chain`), not verified.

The PCK leaf certificate carries Intel's SGX extension (OID
1.2.840.113741.1.13.1) with the platform's FMSPC, PCE-ID and TCB
components; :func:`pck_extensions` reads it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import functools
import struct
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ...errors import EvidenceParseError
from .._x509 import DECODE_ERRORS, decoded_certificate, der_items, der_read

__all__ = [
    "ATT_KEY_TYPE_ECDSA_P256",
    "CERT_DATA_PCK_CHAIN",
    "CERT_DATA_QE_REPORT",
    "INTEL_QE_VENDOR_ID",
    "SGX_EXTENSION_OID",
    "TEE_TYPE_TDX",
    "BodyType",
    "EnclaveReport",
    "PckExtensions",
    "QeReportCertificationData",
    "Quote",
    "QuoteHeader",
    "SignatureData",
    "TdAttributes",
    "TdReport",
    "decode_quote_text",
    "load_pem_chain",
    "parse_quote",
    "pck_ca",
    "pck_extensions",
    "td_attributes_debug",
]

# --- constants (Intel's names, our spelling) --------------------------------

HEADER_SIZE = 48
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
#: Certification data types (Intel "certification data type" field).
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6

TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
TD_REPORT15_EX_SIZE = 885
ENCLAVE_REPORT_SIZE = 384

#: Intel SGX extension in PCK certificates, and the fields we read from it.
SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_OID_PPID = "1.2.840.113741.1.13.1.1"
_OID_TCB = "1.2.840.113741.1.13.1.2"
_OID_PCESVN = "1.2.840.113741.1.13.1.2.17"
_OID_CPUSVN = "1.2.840.113741.1.13.1.2.18"
_OID_PCEID = "1.2.840.113741.1.13.1.3"
_OID_FMSPC = "1.2.840.113741.1.13.1.4"
_OID_SGX_TYPE = "1.2.840.113741.1.13.1.5"


class BodyType(enum.IntEnum):
    """The v5 body descriptor's type (v4 quotes are always TD 1.0)."""

    TD_REPORT10 = 2
    TD_REPORT15 = 3
    TD_REPORT15_EX = 4


_BODY_SIZES = {
    BodyType.TD_REPORT10: TD_REPORT10_SIZE,
    BodyType.TD_REPORT15: TD_REPORT15_SIZE,
    BodyType.TD_REPORT15_EX: TD_REPORT15_EX_SIZE,
}


class TdAttributes(enum.IntFlag):
    """TD_ATTRIBUTES bits (Intel TDX module ABI; 64 bits, little-endian in the quote)."""

    DEBUG = 1 << 0
    HGS_PLUS_PROF = 1 << 4
    PERF_PROF = 1 << 5
    PMT_PROF = 1 << 6
    ICSSD = 1 << 16
    LASS = 1 << 27
    SEPT_VE_DISABLE = 1 << 28
    MIGRATABLE = 1 << 29
    PKS = 1 << 30
    KL = 1 << 31
    TPA = 1 << 62
    PERFMON = 1 << 63


# --- a reader that never reads past the end ----------------------------------


class _Reader:
    """Sequential little-endian reads; running short is a parse error naming the field."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise EvidenceParseError(
                f"TDX quote truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"{max(0, len(self.data) - self.pos)} left"
            )
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")


# --- the model ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header."""

    version: int
    att_key_type: int
    tee_type: int
    #: Bytes 8..12: reserved in TDX quotes (QE SVN and PCE SVN in SGX v3 quotes).
    reserved: bytes
    qe_vendor_id: bytes
    user_data: bytes
    raw: bytes


@dataclasses.dataclass(frozen=True)
class TdReport:
    """The TD report body: what the TD and the TDX module claim, by their spec names.

    TD 1.5 bodies add ``tee_tcb_svn2`` and ``mrservicetd`` (``None`` for 1.0).
    Body type 4 appends a TD 1.5 extension (``extension``, raw; VMID, TD_ID,
    initial service-TD bindings ...), signed like the rest but not decoded.
    """

    body_type: BodyType
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None
    mrservicetd: bytes | None
    extension: bytes
    raw: bytes

    @property
    def rtmr0(self) -> bytes:
        return self.rtmrs[0]

    @property
    def rtmr1(self) -> bytes:
        return self.rtmrs[1]

    @property
    def rtmr2(self) -> bytes:
        return self.rtmrs[2]

    @property
    def rtmr3(self) -> bytes:
        return self.rtmrs[3]

    @property
    def td_attributes_int(self) -> int:
        """TD_ATTRIBUTES as an integer (the 8 bytes are little-endian)."""
        return int.from_bytes(self.td_attributes, "little")

    @property
    def td_attribute_flags(self) -> TdAttributes:
        """The known TD_ATTRIBUTES bits that are set (unknown bits are dropped)."""
        known = 0
        for flag in TdAttributes:
            known |= flag.value
        return TdAttributes(self.td_attributes_int & known)

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES.DEBUG: the host can read and write this TD's memory and registers."""
        return bool(self.td_attributes_int & TdAttributes.DEBUG)

    @property
    def sept_ve_disable(self) -> bool:
        return bool(self.td_attributes_int & TdAttributes.SEPT_VE_DISABLE)

    @property
    def migratable(self) -> bool:
        return bool(self.td_attributes_int & TdAttributes.MIGRATABLE)

    @property
    def tdx_module_svn(self) -> int:
        """TEE_TCB_SVN[0]: the TDX module's ISV SVN (minor version)."""
        return self.tee_tcb_svn[0]

    @property
    def tdx_module_version(self) -> int:
        """TEE_TCB_SVN[1]: the TDX module's major version (selects ``TDX_xx`` in TCB info)."""
        return self.tee_tcb_svn[1]


@dataclasses.dataclass(frozen=True)
class EnclaveReport:
    """An SGX report body (384 bytes): here, the quoting enclave's own report."""

    cpusvn: bytes
    miscselect: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    report_data: bytes
    raw: bytes


@dataclasses.dataclass(frozen=True)
class QeReportCertificationData:
    """Certification data type 6: the QE report, its PCK signature, auth data, PCK chain."""

    qe_report: EnclaveReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    #: Type of the nested certification data (5 = PCK chain PEM).
    pck_cert_data_type: int
    #: The nested certification data exactly as carried (PEM, maybe NUL-padded).
    pck_cert_chain_pem: bytes
    #: Each certificate of that chain as its own PEM block: leaf first.
    pck_certs_pem: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True)
class SignatureData:
    """ECDSA-256-with-P-256 quote signature data."""

    quote_signature: bytes
    attestation_key: bytes
    certification_data_type: int
    certification_data: QeReportCertificationData


@dataclasses.dataclass(frozen=True)
class Quote:
    """A parsed TDX quote (v4 or v5).

    ``signed_region`` is the exact byte range the attestation key signs;
    ``trailing`` holds whatever followed the signature data (ignored, unsigned).
    The common TD report fields are mirrored as properties (``quote.mrtd``).
    """

    header: QuoteHeader
    body: TdReport
    signature_data: SignatureData
    signed_region: bytes
    raw: bytes
    trailing: bytes
    #: The PCK chain carried in the quote, parsed (leaf first). Not verified.
    pck_chain: tuple[x509.Certificate, ...]

    # -- mirrors of the body, so callers can write quote.mrtd ----------------
    @property
    def version(self) -> int:
        return self.header.version

    @property
    def mrtd(self) -> bytes:
        return self.body.mrtd

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return self.body.rtmrs

    @property
    def report_data(self) -> bytes:
        return self.body.report_data

    @property
    def td_attributes(self) -> bytes:
        return self.body.td_attributes

    @property
    def mrconfigid(self) -> bytes:
        return self.body.mrconfigid

    @property
    def mrseam(self) -> bytes:
        return self.body.mrseam

    @property
    def tee_tcb_svn(self) -> bytes:
        return self.body.tee_tcb_svn

    @property
    def debug(self) -> bool:
        return self.body.debug

    # -- the signature data, short names ------------------------------------
    @property
    def qe_report(self) -> EnclaveReport:
        return self.signature_data.certification_data.qe_report

    @property
    def qe_auth_data(self) -> bytes:
        return self.signature_data.certification_data.qe_auth_data

    @property
    def attestation_key(self) -> bytes:
        return self.signature_data.attestation_key

    @property
    def pck_leaf(self) -> x509.Certificate:
        return self.pck_chain[0]

    def attestation_public_key(self) -> ec.EllipticCurvePublicKey:
        """The attestation key as a P-256 public key (raises EvidenceParseError if off-curve)."""
        return _p256_from_raw(self.signature_data.attestation_key)


def td_attributes_debug(quote: Quote | TdReport) -> bool:
    """True when the TD runs with DEBUG on (TD_ATTRIBUTES bit 0)."""
    body = quote.body if isinstance(quote, Quote) else quote
    return body.debug


# --- parsing ------------------------------------------------------------------


def decode_quote_text(text: str | bytes) -> bytes:
    """A quote as carried in JSON: hex (production), base64 (the documentation), or raw.

    Hex is tried first: a hex string is also valid base64, never the reverse
    for a real quote (it starts with ``04000200`` / ``05000200``).
    """
    if isinstance(text, bytes):
        if text[:2] in (b"\x04\x00", b"\x05\x00"):
            return text
        text = text.decode("ascii", errors="replace")
    s = text.strip()
    if s.startswith(("0x", "0X")):
        s = s[2:]
    try:
        return bytes.fromhex(s)
    except ValueError:
        pass
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
        except (binascii.Error, ValueError) as exc:
            raise EvidenceParseError("TDX quote is neither hex nor base64") from exc


def parse_quote(data: bytes | bytearray | memoryview) -> Quote:
    """Parse a TDX quote (v4 or v5). Raises EvidenceParseError on malformed input.

    Accepts any TEE type / key type that is *structurally* a quote with
    ECDSA signature data; whether those values are acceptable is
    :mod:`.verify`'s ``tdx.quote.structure`` check.
    """
    raw = bytes(data)
    r = _Reader(raw)
    header = _parse_header(r.take(HEADER_SIZE, "header"))
    if header.tee_type != TEE_TYPE_TDX:
        raise EvidenceParseError(
            f"not a TDX quote: TEE type {header.tee_type:#x} (TDX is {TEE_TYPE_TDX:#x})"
        )

    # 1. The body: v4 is always a TD 1.0 report; v5 says what follows.
    if header.version == 4:
        body_type = BodyType.TD_REPORT10
        body_size = TD_REPORT10_SIZE
    elif header.version == 5:
        raw_type = r.u16("body type")
        body_size = r.u32("body size")
        try:
            body_type = BodyType(raw_type)
        except ValueError:
            raise EvidenceParseError(f"TDX quote v5: unsupported body type {raw_type}") from None
        if body_size != _BODY_SIZES[body_type]:
            raise EvidenceParseError(
                f"TDX quote v5: body type {raw_type} must be {_BODY_SIZES[body_type]} bytes, "
                f"descriptor says {body_size}"
            )
    else:
        raise EvidenceParseError(f"unsupported TDX quote version {header.version} (4 or 5)")
    body = _parse_td_report(r.take(body_size, "TD report body"), body_type)
    signed_region = raw[: r.pos]

    # 2. Signature data.
    sig_len = r.u32("signature data length")
    sig_bytes = r.take(sig_len, "signature data")
    signature_data = _parse_signature_data(sig_bytes)
    end = r.pos
    # 3. The PCK chain must at least decode: a certificate that is not DER is
    #    malformed evidence, not a forgery.
    pck_chain = load_pem_chain(signature_data.certification_data.pck_cert_chain_pem)
    return Quote(
        header=header,
        body=body,
        signature_data=signature_data,
        signed_region=signed_region,
        raw=raw[:end],
        trailing=raw[end:],
        pck_chain=pck_chain,
    )


def _parse_header(b: bytes) -> QuoteHeader:
    version, att_key_type, tee_type = struct.unpack_from("<HHI", b, 0)
    return QuoteHeader(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        reserved=b[8:12],
        qe_vendor_id=b[12:28],
        user_data=b[28:48],
        raw=b,
    )


def _parse_td_report(b: bytes, body_type: BodyType) -> TdReport:
    r = _Reader(b)
    tee_tcb_svn = r.take(16, "tee_tcb_svn")
    mrseam = r.take(48, "mrseam")
    mrsignerseam = r.take(48, "mrsignerseam")
    seam_attributes = r.take(8, "seam_attributes")
    td_attributes = r.take(8, "td_attributes")
    xfam = r.take(8, "xfam")
    mrtd = r.take(48, "mrtd")
    mrconfigid = r.take(48, "mrconfigid")
    mrowner = r.take(48, "mrowner")
    mrownerconfig = r.take(48, "mrownerconfig")
    rtmrs = (r.take(48, "rtmr0"), r.take(48, "rtmr1"), r.take(48, "rtmr2"), r.take(48, "rtmr3"))
    report_data = r.take(64, "report_data")
    tee_tcb_svn2 = mrservicetd = None
    if body_type >= BodyType.TD_REPORT15:
        tee_tcb_svn2 = r.take(16, "tee_tcb_svn2")
        mrservicetd = r.take(48, "mrservicetd")
    extension = b[r.pos :]
    return TdReport(
        body_type=body_type,
        tee_tcb_svn=tee_tcb_svn,
        mrseam=mrseam,
        mrsignerseam=mrsignerseam,
        seam_attributes=seam_attributes,
        td_attributes=td_attributes,
        xfam=xfam,
        mrtd=mrtd,
        mrconfigid=mrconfigid,
        mrowner=mrowner,
        mrownerconfig=mrownerconfig,
        rtmrs=rtmrs,
        report_data=report_data,
        tee_tcb_svn2=tee_tcb_svn2,
        mrservicetd=mrservicetd,
        extension=extension,
        raw=b,
    )


def parse_enclave_report(b: bytes) -> EnclaveReport:
    """An SGX report body (384 bytes)."""
    if len(b) != ENCLAVE_REPORT_SIZE:
        raise EvidenceParseError(f"QE report must be {ENCLAVE_REPORT_SIZE} bytes, got {len(b)}")
    return EnclaveReport(
        cpusvn=b[0:16],
        miscselect=int.from_bytes(b[16:20], "little"),
        # 20..48 reserved
        attributes=b[48:64],
        mrenclave=b[64:96],
        # 96..128 reserved
        mrsigner=b[128:160],
        # 160..256 reserved
        isvprodid=int.from_bytes(b[256:258], "little"),
        isvsvn=int.from_bytes(b[258:260], "little"),
        # 260..320 reserved
        report_data=b[320:384],
        raw=b,
    )


def _parse_signature_data(b: bytes) -> SignatureData:
    r = _Reader(b)
    quote_signature = r.take(64, "quote signature")
    attestation_key = r.take(64, "attestation key")
    cert_type = r.u16("certification data type")
    cert_size = r.u32("certification data size")
    cert = r.take(cert_size, "certification data")
    if cert_type != CERT_DATA_QE_REPORT:
        raise EvidenceParseError(
            f"TDX quote certification data type {cert_type}: expected "
            f"{CERT_DATA_QE_REPORT} (QE report certification data)"
        )
    # Bytes after the certification data inside signature_data_len are
    # tolerated like trailing padding: the length fields above are authoritative.
    return SignatureData(
        quote_signature=quote_signature,
        attestation_key=attestation_key,
        certification_data_type=cert_type,
        certification_data=_parse_qe_report_cert_data(cert),
    )


def _parse_qe_report_cert_data(b: bytes) -> QeReportCertificationData:
    r = _Reader(b)
    qe_report = parse_enclave_report(r.take(ENCLAVE_REPORT_SIZE, "QE report"))
    qe_report_signature = r.take(64, "QE report signature")
    auth_len = r.u16("QE auth data size")
    qe_auth_data = r.take(auth_len, "QE auth data")
    inner_type = r.u16("PCK certification data type")
    inner_size = r.u32("PCK certification data size")
    chain = r.take(inner_size, "PCK certificate chain")
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise EvidenceParseError(
            f"QE certification data type {inner_type}: expected {CERT_DATA_PCK_CHAIN} "
            "(PCK certificate chain, PEM)"
        )
    blocks = _pem_blocks(chain)
    if not blocks:
        raise EvidenceParseError("PCK certificate chain holds no PEM certificate")
    return QeReportCertificationData(
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_cert_data_type=inner_type,
        pck_cert_chain_pem=chain,
        pck_certs_pem=blocks,
    )


_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"


def _pem_blocks(chain: bytes) -> tuple[bytes, ...]:
    out = []
    pos = 0
    while True:
        start = chain.find(_PEM_BEGIN, pos)
        if start < 0:
            break
        end = chain.find(_PEM_END, start)
        if end < 0:
            raise EvidenceParseError("PCK certificate chain: unterminated PEM block")
        end += len(_PEM_END)
        out.append(chain[start:end] + b"\n")
        pos = end
    return tuple(out)


@functools.lru_cache(maxsize=128)
def load_pem_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """PEM certificates (leaf first) -> parsed certificates. Cached: chains repeat.

    Trailing NUL bytes and text between blocks are ignored; an undecodable
    certificate is an EvidenceParseError.
    """
    blocks = _pem_blocks(pem)
    if not blocks:
        raise EvidenceParseError("no PEM certificate found")
    try:
        certs = tuple(x509.load_pem_x509_certificate(b) for b in blocks)
    except DECODE_ERRORS as exc:
        raise EvidenceParseError(f"malformed certificate in PEM chain: {exc}") from exc
    # Names, extensions and keys decode lazily: decode them now, as a parse error.
    return tuple(decoded_certificate(c, "PEM chain") for c in certs)


def _p256_from_raw(xy: bytes) -> ec.EllipticCurvePublicKey:
    if len(xy) != 64:
        raise EvidenceParseError(f"P-256 key must be 64 raw bytes, got {len(xy)}")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)
    except ValueError as exc:
        raise EvidenceParseError("attestation key is not a point on P-256") from exc


# --- the PCK certificate's SGX extension --------------------------------------


@dataclasses.dataclass(frozen=True)
class PckExtensions:
    """What Intel's SGX extension (OID 1.2.840.113741.1.13.1) says about a platform."""

    ppid: bytes
    #: SGX TCB components 1..16 (OIDs ...13.1.2.1 to ...13.1.2.16), in order.
    tcb_components: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int


_SGX = "SGX extension"  # the prefix of its DER errors


def _der_oid(value: bytes) -> str:
    """DER OBJECT IDENTIFIER contents -> dotted string."""
    if not value:
        raise EvidenceParseError("SGX extension: empty OID")
    first = value[0]
    arcs = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    n = 0
    for byte in value[1:]:
        n = (n << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(n)
            n = 0
    return ".".join(str(a) for a in arcs)


def _sgx_pairs(seq_value: bytes) -> dict[str, tuple[int, bytes]]:
    """SEQUENCE OF SEQUENCE { OID, value } -> {oid: (tag, value)}."""
    out: dict[str, tuple[int, bytes]] = {}
    for tag, inner in der_items(seq_value, _SGX):
        if tag != 0x30:
            raise EvidenceParseError("SGX extension: expected SEQUENCE {OID, value}")
        items = der_items(inner, _SGX)
        if len(items) != 2 or items[0][0] != 0x06:
            raise EvidenceParseError("SGX extension: expected SEQUENCE {OID, value}")
        out[_der_oid(items[0][1])] = items[1]
    return out


def _der_int(tv: tuple[int, bytes], what: str) -> int:
    tag, value = tv
    if tag not in (0x02, 0x0A) or not value:  # INTEGER or ENUMERATED
        raise EvidenceParseError(f"SGX extension: {what} is not an INTEGER")
    return int.from_bytes(value, "big", signed=True)


def _der_octets(tv: tuple[int, bytes], what: str, size: int) -> bytes:
    tag, value = tv
    if tag != 0x04 or len(value) != size:
        raise EvidenceParseError(f"SGX extension: {what} is not a {size}-byte OCTET STRING")
    return value


@functools.lru_cache(maxsize=64)
def _pck_extensions_der(ext_der: bytes) -> PckExtensions:
    tag, top, _ = der_read(ext_der, 0, _SGX)
    if tag != 0x30:
        raise EvidenceParseError("SGX extension: not a SEQUENCE")
    fields = _sgx_pairs(top)

    def need(oid: str, what: str) -> tuple[int, bytes]:
        if oid not in fields:
            raise EvidenceParseError(f"SGX extension: {what} ({oid}) missing")
        return fields[oid]

    tcb_tag, tcb_value = need(_OID_TCB, "TCB")
    if tcb_tag != 0x30:
        raise EvidenceParseError("SGX extension: TCB is not a SEQUENCE")
    tcb = _sgx_pairs(tcb_value)
    components = []
    for i in range(1, 17):
        oid = f"{_OID_TCB}.{i}"
        if oid not in tcb:
            raise EvidenceParseError(f"SGX extension: TCB component {i} missing")
        components.append(_der_int(tcb[oid], f"TCB component {i}"))
    if _OID_PCESVN not in tcb or _OID_CPUSVN not in tcb:
        raise EvidenceParseError("SGX extension: PCESVN or CPUSVN missing")
    return PckExtensions(
        ppid=_der_octets(need(_OID_PPID, "PPID"), "PPID", 16),
        tcb_components=tuple(components),
        pcesvn=_der_int(tcb[_OID_PCESVN], "PCESVN"),
        cpusvn=_der_octets(tcb[_OID_CPUSVN], "CPUSVN", 16),
        pce_id=_der_octets(need(_OID_PCEID, "PCE-ID"), "PCE-ID", 2),
        fmspc=_der_octets(need(_OID_FMSPC, "FMSPC"), "FMSPC", 6),
        sgx_type=_der_int(need(_OID_SGX_TYPE, "SGX type"), "SGX type"),
    )


def pck_extensions(cert: x509.Certificate) -> PckExtensions:
    """Read FMSPC, PCE-ID, TCB components and PCESVN from a PCK leaf certificate."""
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID)
    except x509.ExtensionNotFound:
        raise EvidenceParseError("PCK certificate has no Intel SGX extension") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - defensive
        raise EvidenceParseError("PCK certificate: unexpected SGX extension type")
    return _pck_extensions_der(value.value)


def pck_ca(cert: x509.Certificate) -> Literal["platform", "processor"]:
    """Which Intel PCK CA issued this leaf: names the PCK CRL to fetch (``ca=``)."""
    names = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    if "Processor" in cn:
        return "processor"
    if "Platform" in cn:
        return "platform"
    raise EvidenceParseError(
        f"PCK certificate issuer {cn!r} is neither a Platform nor a Processor CA"
    )
