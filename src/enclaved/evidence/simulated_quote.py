"""The simulated TD's values and the TDX quote v4 encoder (development only).

:class:`SimulatedTd` holds the TD report body values (the table in
:mod:`enclaved.evidence.simulated`'s docstring); :func:`build_quote` lays
them out in Intel's bytes and signs them as a TDX quote v4, given an
attestation key and a PCK key and chain (:mod:`.simulated_pki` makes those).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ..attestation.tdx.parse import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_DATA_PCK_CHAIN,
    CERT_DATA_QE_REPORT,
    INTEL_QE_VENDOR_ID,
    TEE_TYPE_TDX,
)
from .simulated_deployment import SimulatedDeployment

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
    """The TD report body values of the simulated TD (the table in :mod:`.simulated`'s docstring)."""

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


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 as Intel writes it: r || s, 32 bytes each, big-endian."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
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
    quote_signature = raw_signature(attestation_key, header + body)
    att_pub = raw_public_key(attestation_key)
    # 4. The QE report binds the attestation key: SHA-256(key || auth data), then zeros.
    qe_report = _qe_report(td, hashlib.sha256(att_pub + qe_auth_data).digest() + bytes(32))
    qe_report_signature = raw_signature(pck_key, qe_report)
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
