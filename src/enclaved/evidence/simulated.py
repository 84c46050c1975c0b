"""A simulated Intel TDX for development: genuine quote layout, development keys.

NOT A TEE. A quote from here proves nothing about hardware: it is signed by
keys that live in this process and chains to a development root created on
this machine. Its purpose is to exercise the *same* code paths as real
hardware - :func:`enclaved.attestation.tdx.parse_quote` and
:func:`~enclaved.attestation.tdx.verify_quote` run unchanged - so a verifier
that trusts only Intel's root rejects it (``tdx.pck.chain``), and one told to
trust the development root (``Policy.allow_development_roots``) accepts it.

What is made, and where:

- A development root CA (P-256, self-signed, 10 years), created on first
  start in ``data_dir`` as ``dev-root-ca.pem`` (the certificate; give it to
  clients that should trust this server) and ``dev-root-ca-key.pem`` (its
  PKCS#8 private key, mode 0600), and reused on later starts.
- Per process: a "PCK Platform CA" intermediate and a "PCK certificate" leaf
  (P-256) carrying Intel's SGX extension (OID 1.2.840.113741.1.13.1) with a
  development FMSPC (:data:`DEV_FMSPC`), PCE-ID 0000, TCB components and
  PCESVN, so that :func:`~enclaved.attestation.tdx.pck_extensions` reads it
  like a real one; and a fresh attestation key.

The quote (:func:`build_quote`) is a TDX quote v4 byte for byte: header
(version 4, key type 2, TEE type 0x81, Intel's QE vendor id), a TD 1.0
report body, and ECDSA-256 signature data with certification data type 6:
the QE report (an SGX report body), its signature by the PCK leaf key, QE
auth data (32 bytes 00..1f, like Intel's QE), and a nested type-5 PCK
chain (leaf, intermediate, root; PEM). As on real hardware, the QE report's
report_data[0:32] is SHA-256(attestation key || QE auth data) and the rest
is zero, and the attestation key signs header + body.

Development values (:class:`SimulatedTd` defaults; all deterministic):

==================  =========================================================
MRTD                SHA-384(b"enclaved simulated TDX: MRTD")
RTMR0..RTMR3        the replay of the simulated deployment's event log
MRSEAM              SHA-384(b"enclaved simulated TDX: MRSEAM")
MRSIGNERSEAM        48 zero bytes (Intel's own TDX module, as in production)
MRCONFIGID          0x01 || compose hash || zeros, of the simulated deployment
MROWNER,            48 zero bytes each
MROWNERCONFIG
TD_ATTRIBUTES       0x10000000: SEPT_VE_DISABLE on, DEBUG off (as in production)
XFAM                0x000000000006_02e7 (bytes e702060000000000, as in production)
TEE_TCB_SVN         07 01 03 00.. (module SVN 7, major version 1, as in production)
QE MRSIGNER         SHA-256(b"enclaved simulated TDX: QE MRSIGNER")
QE MRENCLAVE        SHA-256(b"enclaved simulated TDX: QE MRENCLAVE")
QE ISVPRODID/SVN    2 / 4
==================  =========================================================

RTMR0-3 and MRCONFIGID come from a
:class:`~enclaved.evidence.simulated_deployment.SimulatedDeployment`: its
event log (simulated boot events and dstack-style runtime events) replays to
exactly these RTMRs, and MRCONFIGID binds its compose hash, so the
verifier's event-log and compose-hash checks run and pass. The
:class:`SimulatedTd` defaults are those of ``SimulatedDeployment()`` (no
models); :meth:`SimulatedTd.running` gives the values for another
deployment (the server's evidence source uses the served model ids).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from ..attestation.tdx.collateral import Collateral
from ..attestation.tdx.parse import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_DATA_PCK_CHAIN,
    CERT_DATA_QE_REPORT,
    INTEL_QE_VENDOR_ID,
    SGX_EXTENSION_OID,
    TEE_TYPE_TDX,
)
from ..errors import ConfigError
from .simulated_deployment import SimulatedDeployment

__all__ = [
    "DEV_FMSPC",
    "ROOT_CERT_FILE",
    "ROOT_KEY_FILE",
    "SimulatedTd",
    "SimulatedTdx",
    "build_quote",
]

logger = logging.getLogger("enclaved.evidence.simulated")

ROOT_CERT_FILE = "dev-root-ca.pem"
ROOT_KEY_FILE = "dev-root-ca-key.pem"

#: FMSPC in the development PCK certificate. Intel has no TCB info for it.
DEV_FMSPC = bytes.fromhex("00de7e000000")
DEV_PCE_ID = b"\x00\x00"
DEV_PCESVN = 13
DEV_SGX_TCB_COMPONENTS = (3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)

#: Intel's QE fills its auth data with 0x00..0x1f; so does the simulation.
QE_AUTH_DATA = bytes(range(32))

#: The deployment whose event log the default :class:`SimulatedTd` measures.
_DEFAULT_DEPLOYMENT = SimulatedDeployment()


def _sha384(label: str) -> bytes:
    return hashlib.sha384(f"enclaved simulated TDX: {label}".encode()).digest()


def _sha256(label: str) -> bytes:
    return hashlib.sha256(f"enclaved simulated TDX: {label}".encode()).digest()


@dataclasses.dataclass(frozen=True)
class SimulatedTd:
    """The TD report body values of the simulated TD (see the module docstring)."""

    tee_tcb_svn: bytes = bytes([7, 1, 3]) + bytes(13)
    mrseam: bytes = _sha384("MRSEAM")
    mrsignerseam: bytes = bytes(48)
    seam_attributes: bytes = bytes(8)
    td_attributes: bytes = (1 << 28).to_bytes(8, "little")
    xfam: bytes = bytes.fromhex("e702060000000000")
    mrtd: bytes = _sha384("MRTD")
    mrconfigid: bytes = _DEFAULT_DEPLOYMENT.mrconfigid
    mrowner: bytes = bytes(48)
    mrownerconfig: bytes = bytes(48)
    rtmrs: tuple[bytes, bytes, bytes, bytes] = _DEFAULT_DEPLOYMENT.rtmrs
    # The quoting enclave's report.
    qe_cpusvn: bytes = bytes(16)
    qe_miscselect: int = 0
    qe_attributes: bytes = bytes.fromhex("1500000000000000e700000000000000")
    qe_mrenclave: bytes = _sha256("QE MRENCLAVE")
    qe_mrsigner: bytes = _sha256("QE MRSIGNER")
    qe_isvprodid: int = 2
    qe_isvsvn: int = 4

    def __post_init__(self) -> None:
        sizes = {
            "tee_tcb_svn": 16, "mrseam": 48, "mrsignerseam": 48, "seam_attributes": 8,
            "td_attributes": 8, "xfam": 8, "mrtd": 48, "mrconfigid": 48, "mrowner": 48,
            "mrownerconfig": 48, "qe_cpusvn": 16, "qe_attributes": 16, "qe_mrenclave": 32,
            "qe_mrsigner": 32,
        }  # fmt: skip
        for name, size in sizes.items():
            if len(getattr(self, name)) != size:
                raise ValueError(f"SimulatedTd.{name} must be {size} bytes")
        if len(self.rtmrs) != 4 or any(len(r) != 48 for r in self.rtmrs):
            raise ValueError("SimulatedTd.rtmrs must be four 48-byte values")

    def running(self, deployment: SimulatedDeployment) -> SimulatedTd:
        """These values with the RTMRs and MRCONFIGID that ``deployment``'s event log gives."""
        return dataclasses.replace(self, rtmrs=deployment.rtmrs, mrconfigid=deployment.mrconfigid)


# --- quote bytes ------------------------------------------------------------------------


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 as Intel writes it: r || s, 32 bytes each, big-endian."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """x || y, 64 bytes (the uncompressed point without its 0x04 prefix)."""
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def _qe_report(td: SimulatedTd, report_data: bytes) -> bytes:
    out = (
        td.qe_cpusvn
        + struct.pack("<I", td.qe_miscselect)
        + bytes(28)
        + td.qe_attributes
        + td.qe_mrenclave
        + bytes(32)
        + td.qe_mrsigner
        + bytes(96)
        + struct.pack("<HH", td.qe_isvprodid, td.qe_isvsvn)
        + bytes(60)
        + report_data
    )
    assert len(out) == 384
    return out


def build_quote(
    report_data: bytes,
    *,
    attestation_key: ec.EllipticCurvePrivateKey,
    pck_key: ec.EllipticCurvePrivateKey,
    pck_chain_pem: bytes,
    td: SimulatedTd = SimulatedTd(),
    qe_auth_data: bytes = QE_AUTH_DATA,
) -> bytes:
    """A TDX quote v4 over ``report_data`` (exactly 64 bytes), in Intel's byte layout.

    ``pck_chain_pem`` is the PCK chain (leaf, intermediate, root) whose leaf
    key is ``pck_key``.
    """
    if len(report_data) != 64:
        raise ValueError(f"report_data must be 64 bytes, got {len(report_data)}")
    # 1. Header: version 4, ECDSA P-256, TDX, reserved, Intel's QE vendor id, user data.
    header = (
        struct.pack("<HHI", 4, ATT_KEY_TYPE_ECDSA_P256, TEE_TYPE_TDX)
        + bytes(4)
        + INTEL_QE_VENDOR_ID
        + bytes(20)
    )
    # 2. TD 1.0 report body (584 bytes).
    body = (
        td.tee_tcb_svn
        + td.mrseam
        + td.mrsignerseam
        + td.seam_attributes
        + td.td_attributes
        + td.xfam
        + td.mrtd
        + td.mrconfigid
        + td.mrowner
        + td.mrownerconfig
        + b"".join(td.rtmrs)
        + report_data
    )
    assert len(header) == 48 and len(body) == 584
    # 3. The attestation key signs header + body.
    quote_signature = _raw_signature(attestation_key, header + body)
    att_pub = _raw_public_key(attestation_key)
    # 4. The QE report binds the attestation key: SHA-256(key || auth data), then zeros.
    qe_report = _qe_report(td, hashlib.sha256(att_pub + qe_auth_data).digest() + bytes(32))
    qe_report_signature = _raw_signature(pck_key, qe_report)
    # 5. Certification data type 6 wrapping a type 5 PCK chain.
    pck_cert_data = struct.pack("<HI", CERT_DATA_PCK_CHAIN, len(pck_chain_pem)) + pck_chain_pem
    qe_cert_data = (
        qe_report
        + qe_report_signature
        + struct.pack("<H", len(qe_auth_data))
        + qe_auth_data
        + pck_cert_data
    )
    signature_data = (
        quote_signature
        + att_pub
        + struct.pack("<HI", CERT_DATA_QE_REPORT, len(qe_cert_data))
        + qe_cert_data
    )
    return header + body + struct.pack("<I", len(signature_data)) + signature_data


# --- the development PKI ------------------------------------------------------------------


def _der(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + value


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


def _der_int(n: int) -> bytes:
    return _der(0x02, n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big"))


def _sgx_extension(fmspc: bytes, ppid: bytes) -> bytes:
    """Intel's SGX extension value (DER): PPID, TCB (16 components, PCESVN, CPUSVN),
    PCE-ID, FMSPC, SGX type."""
    base = SGX_EXTENSION_OID.dotted_string

    def pair(oid: str, value: bytes) -> bytes:
        return _der(0x30, _der_oid(oid) + value)

    tcb = b"".join(
        pair(f"{base}.2.{i + 1}", _der_int(svn)) for i, svn in enumerate(DEV_SGX_TCB_COMPONENTS)
    )
    tcb += pair(f"{base}.2.17", _der_int(DEV_PCESVN))
    tcb += pair(f"{base}.2.18", _der(0x04, bytes(DEV_SGX_TCB_COMPONENTS)))
    return _der(
        0x30,
        pair(f"{base}.1", _der(0x04, ppid))
        + pair(f"{base}.2", _der(0x30, tcb))
        + pair(f"{base}.3", _der(0x04, DEV_PCE_ID))
        + pair(f"{base}.4", _der(0x04, fmspc))
        + pair(f"{base}.5", _der(0x0A, b"\x00")),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enclaved development (NOT A TEE)"),
        ]
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    now: dt.datetime,
    days: int,
    path_length: int | None,
    ca: bool,
    extra: x509.ExtensionType | None = None,
) -> x509.Certificate:
    pub = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    if issuer is not None:
        issuer_pub = issuer.public_key()
        assert isinstance(issuer_pub, ec.EllipticCurvePublicKey)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False
        )
    if extra is not None:
        builder = builder.add_extension(extra, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_key(key_path: Path) -> object:
    # Another process may have just created the file and not yet written it:
    # give it a moment before calling the file broken.
    for _ in range(40):
        data = key_path.read_bytes()
        if data.rstrip().endswith(b"-----END PRIVATE KEY-----"):
            break
        time.sleep(0.05)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise ConfigError(f"{key_path}: not a PEM private key") from exc


def _load_or_create_root(
    data_dir: Path, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = data_dir / ROOT_CERT_FILE, data_dir / ROOT_KEY_FILE
    key: ec.EllipticCurvePrivateKey
    try:
        # O_EXCL: of two processes starting at once, exactly one creates the key.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = key_path.stat().st_mode & 0o777
        if mode & 0o077:
            logger.warning("%s had mode %o; setting 0600", key_path, mode)
            key_path.chmod(0o600)
        loaded = _read_key(key_path)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(
            loaded.curve, ec.SECP256R1
        ):
            raise ConfigError(f"{key_path}: the development root key must be P-256") from None
        key = loaded
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        with os.fdopen(fd, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        logger.warning(
            "created a development root CA in %s: quotes from the simulated TEE prove nothing",
            data_dir,
        )
    if cert_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"{cert_path}: not a PEM certificate") from exc
        if cert.public_key() != key.public_key():
            raise ConfigError(f"{cert_path} does not belong to the key in {key_path}")
        return cert, key
    cert = _cert(
        "enclaved development root CA (simulated TDX)",
        key,
        None,
        key,
        now=now,
        days=3650,
        path_length=1,
        ca=True,
    )
    _write_atomic(cert_path, _pem(cert), 0o644)
    return cert, key


class SimulatedTdx:
    """The development TEE. Build with :meth:`load_or_create`; quote with :meth:`quote`.

    >>> tee = SimulatedTdx.load_or_create(Path("/tmp/enclaved-dev"))  # doctest: +SKIP
    >>> raw = tee.quote(bytes(64))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        root_cert: x509.Certificate,
        root_key: ec.EllipticCurvePrivateKey,
        root_path: Path,
        now: dt.datetime,
        td: SimulatedTd = SimulatedTd(),
    ) -> None:
        self.root_cert = root_cert
        self.root_path = root_path
        self.td = td
        self._root_key = root_key
        self._now = now
        # A fresh intermediate, PCK leaf and attestation key for this process.
        inter_key = ec.generate_private_key(ec.SECP256R1())
        self._intermediate_key = inter_key
        self._tcb_signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
        self.intermediate_cert = _cert(
            "enclaved dev SGX PCK Platform CA",
            inter_key,
            root_cert,
            root_key,
            now=now,
            days=365,
            path_length=0,
            ca=True,
        )
        self._pck_key = ec.generate_private_key(ec.SECP256R1())
        self.pck_cert = _cert(
            "enclaved dev SGX PCK Certificate",
            self._pck_key,
            self.intermediate_cert,
            inter_key,
            now=now,
            days=365,
            path_length=None,
            ca=False,
            extra=x509.UnrecognizedExtension(
                SGX_EXTENSION_OID, _sgx_extension(DEV_FMSPC, os.urandom(16))
            ),
        )
        self._attestation_key = ec.generate_private_key(ec.SECP256R1())
        self.pck_chain_pem = _pem(self.pck_cert) + _pem(self.intermediate_cert) + _pem(root_cert)

    @classmethod
    def load_or_create(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        now: dt.datetime | None = None,
        td: SimulatedTd = SimulatedTd(),
    ) -> SimulatedTdx:
        """Reuse the development root in ``data_dir`` or create it (key mode 0600)."""
        path = Path(data_dir)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        when = now or dt.datetime.now(dt.UTC)
        cert, key = _load_or_create_root(path, when)
        return cls(root_cert=cert, root_key=key, root_path=path / ROOT_CERT_FILE, now=when, td=td)

    @property
    def root_pem(self) -> bytes:
        """The development root certificate (PEM), to be trusted explicitly by clients."""
        return _pem(self.root_cert)

    @property
    def attestation_public_key(self) -> bytes:
        """This process's attestation key, x || y (as in the quote)."""
        return _raw_public_key(self._attestation_key)

    def quote(self, report_data: bytes, *, td: SimulatedTd | None = None) -> bytes:
        """A TDX quote v4 over ``report_data`` (64 bytes)."""
        return build_quote(
            report_data,
            attestation_key=self._attestation_key,
            pck_key=self._pck_key,
            pck_chain_pem=self.pck_chain_pem,
            td=td or self.td,
        )

    # -- development collateral ----------------------------------------------------------
    def _tcb_signing(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if self._tcb_signer is None:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _cert(
                "enclaved dev SGX TCB Signing",
                key,
                self.root_cert,
                self._root_key,
                now=self._now,
                days=365,
                path_length=None,
                ca=False,
            )
            self._tcb_signer = (cert, key)
        return self._tcb_signer

    def default_tcb_info(self, now: dt.datetime) -> dict[str, Any]:
        """TDX TCB info (v3) for the development platform: one level, ``UpToDate``."""

        def comps(svns: Sequence[int]) -> list[dict[str, int]]:
            return [{"svn": v} for v in svns]

        return {
            "id": "TDX",
            "version": 3,
            "issueDate": _iso(now - dt.timedelta(hours=1)),
            "nextUpdate": _iso(now + dt.timedelta(days=30)),
            "fmspc": DEV_FMSPC.hex(),
            "pceId": DEV_PCE_ID.hex(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 1,
            "tdxModule": {
                "mrsigner": self.td.mrsignerseam.hex().upper(),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            },
            "tdxModuleIdentities": [
                {
                    "id": f"TDX_{self.td.tee_tcb_svn[1]:02X}",
                    "mrsigner": self.td.mrsignerseam.hex().upper(),
                    "attributes": "0000000000000000",
                    "attributesMask": "FFFFFFFFFFFFFFFF",
                    "tcbLevels": [
                        {
                            "tcb": {"isvsvn": self.td.tee_tcb_svn[0]},
                            "tcbDate": "2024-01-01T00:00:00Z",
                            "tcbStatus": "UpToDate",
                        }
                    ],
                }
            ],
            "tcbLevels": [
                {
                    "tcb": {
                        "sgxtcbcomponents": comps(DEV_SGX_TCB_COMPONENTS),
                        "pcesvn": DEV_PCESVN,
                        "tdxtcbcomponents": comps(self.td.tee_tcb_svn),
                    },
                    "tcbDate": "2024-01-01T00:00:00Z",
                    "tcbStatus": "UpToDate",
                }
            ],
        }

    def default_qe_identity(self, now: dt.datetime) -> dict[str, Any]:
        """The development QE's identity (``TD_QE``, v2): one level, ``UpToDate``."""
        return {
            "id": "TD_QE",
            "version": 2,
            "issueDate": _iso(now - dt.timedelta(hours=1)),
            "nextUpdate": _iso(now + dt.timedelta(days=30)),
            "tcbEvaluationDataNumber": 1,
            "miscselect": f"{self.td.qe_miscselect:08X}",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": self.td.qe_mrsigner.hex().upper(),
            "isvprodid": self.td.qe_isvprodid,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": self.td.qe_isvsvn},
                    "tcbDate": "2024-01-01T00:00:00Z",
                    "tcbStatus": "UpToDate",
                }
            ],
        }

    def collateral(
        self,
        now: dt.datetime | None = None,
        *,
        tcb_info: Mapping[str, Any] | None = None,
        qe_identity: Mapping[str, Any] | None = None,
        revoke_pck: bool = False,
        revoke_intermediate: bool = False,
    ) -> Collateral:
        """Development collateral in Intel's formats, signed under the development root.

        By default it rates the development platform ``UpToDate``; pass
        ``tcb_info`` / ``qe_identity`` (the JSON values) to rate it otherwise,
        or ``revoke_*`` to put a certificate on a CRL. Lets the development
        TEE run every collateral check, not skip them.
        """
        when = now or dt.datetime.now(dt.UTC)
        signer, signer_key = self._tcb_signing()

        def signed(key: str, value: Mapping[str, Any]) -> bytes:
            data = json.dumps(value, separators=(",", ":")).encode()
            sig = _raw_signature(signer_key, data)
            return (
                b'{"' + key.encode() + b'":' + data + b',"signature":"' + sig.hex().encode() + b'"}'
            )

        def crl(
            issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, revoked: int | None
        ) -> bytes:
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(issuer.subject)
                .last_update(when - dt.timedelta(hours=1))
                .next_update(when + dt.timedelta(days=30))
                .add_extension(x509.CRLNumber(1), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                    critical=False,
                )
            )
            if revoked is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(revoked)
                    .revocation_date(when - dt.timedelta(hours=1))
                    .build()
                )
            return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

        return Collateral(
            tcb_info=signed("tcbInfo", tcb_info or self.default_tcb_info(when)),
            tcb_info_issuer_chain=(signer, self.root_cert),
            qe_identity=signed("enclaveIdentity", qe_identity or self.default_qe_identity(when)),
            qe_identity_issuer_chain=(signer, self.root_cert),
            pck_crl=crl(
                self.intermediate_cert,
                self._intermediate_key,
                self.pck_cert.serial_number if revoke_pck else None,
            ),
            pck_crl_issuer_chain=(self.intermediate_cert, self.root_cert),
            root_ca_crl=crl(
                self.root_cert,
                self._root_key,
                self.intermediate_cert.serial_number if revoke_intermediate else None,
            ),
        )


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
