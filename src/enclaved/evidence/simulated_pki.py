"""The development PKI: the root CA on disk, certificates, Intel's SGX extension.

The root (P-256, 10 years) lives in ``data_dir`` as :data:`ROOT_CERT_FILE`
and :data:`ROOT_KEY_FILE` (mode 0600), created on first start and reused;
:func:`issue_certificate` makes the per-process intermediate, PCK leaf and
TCB signing certificates under it. Development only: nothing here is a
hardware key.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..attestation.tdx.parse import SGX_EXTENSION_OID
from ..errors import ConfigError

logger = logging.getLogger("enclaved.evidence.simulated")

ROOT_CERT_FILE = "dev-root-ca.pem"
ROOT_KEY_FILE = "dev-root-ca-key.pem"

#: The development platform, as its PCK certificate names it (Intel has no
#: TCB info for this FMSPC: the collateral comes from :mod:`.simulated_collateral`).
DEV_FMSPC = bytes.fromhex("00de7e000000")
DEV_PCE_ID = b"\x00\x00"
DEV_PCESVN = 13
DEV_SGX_TCB_COMPONENTS = (3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)


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


def sgx_extension(fmspc: bytes, ppid: bytes) -> bytes:
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


def issue_certificate(
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


def to_pem(cert: x509.Certificate) -> bytes:
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


def load_or_create_root(
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
    cert = issue_certificate(
        "enclaved development root CA (simulated TDX)",
        key,
        None,
        key,
        now=now,
        days=3650,
        path_length=1,
        ca=True,
    )
    _write_atomic(cert_path, to_pem(cert), 0o644)
    return cert, key
