"""Development collateral in Intel's formats, signed under the development root.

Intel PCS has no collateral for the development platform (:data:`DEV_FMSPC`),
so the simulated TEE makes its own: TCB info and QE identity JSON rating it
``UpToDate`` (:func:`tcb_info`, :func:`qe_identity`), signed by a TCB
signing certificate, and the two CRLs (:func:`sign_collateral`). The
verifier then runs every collateral check on a simulated quote rather than
skipping them. Nothing here is Intel's: it chains to the development root.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..attestation.tdx.collateral import Collateral
from .simulated_pki import DEV_FMSPC, DEV_PCE_ID, DEV_PCESVN, DEV_SGX_TCB_COMPONENTS
from .simulated_quote import SimulatedTd, raw_signature


def tcb_info(td: SimulatedTd, now: dt.datetime) -> dict[str, Any]:
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
            "mrsigner": td.mrsignerseam.hex().upper(),
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
        },
        "tdxModuleIdentities": [
            {
                "id": f"TDX_{td.tee_tcb_svn[1]:02X}",
                "mrsigner": td.mrsignerseam.hex().upper(),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
                "tcbLevels": [
                    {
                        "tcb": {"isvsvn": td.tee_tcb_svn[0]},
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
                    "tdxtcbcomponents": comps(td.tee_tcb_svn),
                },
                "tcbDate": "2024-01-01T00:00:00Z",
                "tcbStatus": "UpToDate",
            }
        ],
    }


def qe_identity(td: SimulatedTd, now: dt.datetime) -> dict[str, Any]:
    """The development QE's identity (``TD_QE``, v2): one level, ``UpToDate``."""
    return {
        "id": "TD_QE",
        "version": 2,
        "issueDate": _iso(now - dt.timedelta(hours=1)),
        "nextUpdate": _iso(now + dt.timedelta(days=30)),
        "tcbEvaluationDataNumber": 1,
        "miscselect": f"{td.qe_miscselect:08X}",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": td.qe_mrsigner.hex().upper(),
        "isvprodid": td.qe_isvprodid,
        "tcbLevels": [
            {
                "tcb": {"isvsvn": td.qe_isvsvn},
                "tcbDate": "2024-01-01T00:00:00Z",
                "tcbStatus": "UpToDate",
            }
        ],
    }


def sign_collateral(
    *,
    when: dt.datetime,
    tcb_info: Mapping[str, Any],
    qe_identity: Mapping[str, Any],
    signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    root: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    intermediate: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    revoked_pck: int | None = None,
    revoked_intermediate: int | None = None,
) -> Collateral:
    """The collateral: the JSON signed by ``signer``, the CRLs by the root and the intermediate.

    ``revoked_pck`` / ``revoked_intermediate``: a serial number to put on
    the intermediate's / the root's CRL.
    """
    signer_cert, signer_key = signer
    root_cert, root_key = root
    intermediate_cert, intermediate_key = intermediate
    return Collateral(
        tcb_info=_signed(signer_key, "tcbInfo", tcb_info),
        tcb_info_issuer_chain=(signer_cert, root_cert),
        qe_identity=_signed(signer_key, "enclaveIdentity", qe_identity),
        qe_identity_issuer_chain=(signer_cert, root_cert),
        pck_crl=_crl(intermediate_cert, intermediate_key, revoked_pck, when),
        pck_crl_issuer_chain=(intermediate_cert, root_cert),
        root_ca_crl=_crl(root_cert, root_key, revoked_intermediate, when),
    )


def _signed(signer_key: ec.EllipticCurvePrivateKey, key: str, value: Mapping[str, Any]) -> bytes:
    """``{"<key>": value, "signature": "<r||s hex>"}``, as Intel signs its JSON collateral."""
    data = json.dumps(value, separators=(",", ":")).encode()
    sig = raw_signature(signer_key, data)
    return b'{"' + key.encode() + b'":' + data + b',"signature":"' + sig.hex().encode() + b'"}'


def _crl(
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    revoked: int | None,
    when: dt.datetime,
) -> bytes:
    """A DER CRL by ``issuer``, current at ``when``, revoking serial ``revoked`` if given."""
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


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
