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

The parts, each in its own module: :mod:`.simulated_quote` (the TD's values
and the quote encoder), :mod:`.simulated_pki` (the development root on disk,
certificates, Intel's SGX extension), :mod:`.simulated_collateral` (the
TCB info, QE identity and CRLs). :class:`SimulatedTdx` here ties them
together; this module's names are the ones to import.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ..attestation.tdx.collateral import Collateral
from ..attestation.tdx.parse import SGX_EXTENSION_OID
from .simulated_collateral import qe_identity, sign_collateral, tcb_info
from .simulated_pki import (
    DEV_FMSPC,
    ROOT_CERT_FILE,
    ROOT_KEY_FILE,
    issue_certificate,
    load_or_create_root,
    sgx_extension,
    to_pem,
)
from .simulated_quote import SimulatedTd, build_quote, raw_public_key

__all__ = [
    "DEV_FMSPC",
    "ROOT_CERT_FILE",
    "ROOT_KEY_FILE",
    "SimulatedTd",
    "SimulatedTdx",
    "build_quote",
]


#: The simulated TD's values by default (frozen: one instance serves every default).
_DEFAULT_TD = SimulatedTd()


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
        td: SimulatedTd = _DEFAULT_TD,
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
        self.intermediate_cert = issue_certificate(
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
        self.pck_cert = issue_certificate(
            "enclaved dev SGX PCK Certificate",
            self._pck_key,
            self.intermediate_cert,
            inter_key,
            now=now,
            days=365,
            path_length=None,
            ca=False,
            extra=x509.UnrecognizedExtension(
                SGX_EXTENSION_OID, sgx_extension(DEV_FMSPC, os.urandom(16))
            ),
        )
        self._attestation_key = ec.generate_private_key(ec.SECP256R1())
        self.pck_chain_pem = (
            to_pem(self.pck_cert) + to_pem(self.intermediate_cert) + to_pem(root_cert)
        )

    @classmethod
    def load_or_create(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        now: dt.datetime | None = None,
        td: SimulatedTd = _DEFAULT_TD,
    ) -> SimulatedTdx:
        """Reuse the development root in ``data_dir`` or create it (key mode 0600)."""
        path = Path(data_dir)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        when = now or dt.datetime.now(dt.UTC)
        cert, key = load_or_create_root(path, when)
        return cls(root_cert=cert, root_key=key, root_path=path / ROOT_CERT_FILE, now=when, td=td)

    @property
    def root_pem(self) -> bytes:
        """The development root certificate (PEM), to be trusted explicitly by clients."""
        return to_pem(self.root_cert)

    @property
    def attestation_public_key(self) -> bytes:
        """This process's attestation key, x || y (as in the quote)."""
        return raw_public_key(self._attestation_key)

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
            cert = issue_certificate(
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
        return tcb_info(self.td, now)

    def default_qe_identity(self, now: dt.datetime) -> dict[str, Any]:
        """The development QE's identity (``TD_QE``, v2): one level, ``UpToDate``."""
        return qe_identity(self.td, now)

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
        return sign_collateral(
            when=when,
            tcb_info=tcb_info or self.default_tcb_info(when),
            qe_identity=qe_identity or self.default_qe_identity(when),
            signer=self._tcb_signing(),
            root=(self.root_cert, self._root_key),
            intermediate=(self.intermediate_cert, self._intermediate_key),
            revoked_pck=self.pck_cert.serial_number if revoke_pck else None,
            revoked_intermediate=self.intermediate_cert.serial_number
            if revoke_intermediate
            else None,
        )
