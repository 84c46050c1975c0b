"""Verify NVIDIA GPU evidence locally: certificate chains, SPDM signatures, nonces.

For each GPU of a parsed :class:`~.parse.NvidiaPayload` this checks, in order
(the same steps NVIDIA's own local verifier takes, minus its online ones):

1. the GPU's certificate chain leads to the pinned *NVIDIA Device Identity
   CA* (:data:`NVIDIA_DEVICE_ROOT_SHA256`) under the path validator the TDX
   verifier shares (:func:`.._x509.path_problem`): every certificate valid
   at ``now``, every link signed by its issuer, every issuer a CA allowed
   to sign certificates (basicConstraints, pathLen, keyUsage keyCertSign),
   the leaf not a CA, no unknown critical extension;
2. the SPDM ``MEASUREMENTS`` response is signed (ECDSA P-384 over SHA-384 of
   request || response-without-signature) by the chain's leaf key;
3. the nonce in the signed SPDM request is the client's nonce, so the
   evidence is fresh;
4. the firmware id (FWID) the GPU reports in its signed opaque data is the
   one in its leaf certificate (skipped, as NVIDIA does, when the report
   carries none).

Check ids (stable; ``i`` is the position in ``evidence_list``):

================================  ===============================================
``nvidia.payload.nonce``          the payload's own ``nonce`` is the client's nonce
``nvidia.gpu[i].cert_chain``      step 1
``nvidia.gpu[i].spdm.signature``  step 2
``nvidia.gpu[i].nonce``           step 3
``nvidia.gpu[i].fwid``            step 4
``nvidia.gpus``                   aggregate: every row above passed; the reason
                                  says how many GPUs and which architecture
================================  ===============================================

Verification results of certificate links and SPDM signatures are cached,
keyed by the full bytes they depend on (a pure function, so the cache cannot
change an answer): the eight GPUs of a node share three of their five
certificates, and a client re-verifies the same evidence often.

What this module does NOT check:

- revocation: NVIDIA publishes OCSP and CRLs for these certificates; an
  offline verifier cannot ask. :mod:`.nras` (NVIDIA's attestation service)
  does.
- the *measurements*: whether the 64 measurement blocks are the golden values
  of a known driver and VBIOS (NVIDIA's signed RIMs). They are authenticated
  here, not judged; NRAS judges them (``measres``).
- policy: how many GPUs, which architecture, which driver or VBIOS. Those are
  facts (:func:`gpu_facts`) for :mod:`enclaved.attestation.policy`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from ...errors import AttestationError, EvidenceParseError
from .._x509 import cert_name, der_items, path_problem
from ..checks import Check, CheckId, GpuCheck, gpu_check_id
from .parse import GpuEvidence, NvidiaPayload, parse_nvidia_payload

#: SHA-256 of the DER of the pinned root, "NVIDIA Device Identity CA"
#: (self-signed, P-384, valid 2021-11-05 to 9999-12-31).
#:
#: Origin: ``verifier/certs/verifier_device_root.pem`` in NVIDIA's
#: ``nv-local-gpu-verifier`` 2.7.3 wheel on PyPI (NVIDIA/nvtrust,
#: guest_tools/gpu_verifiers/local_gpu_verifier). The file
#: ``verifier_device_root.pem`` beside this module is that file, byte for
#: byte (SHA-256 of the file: 6e6e91e8...471bfc). Every GPU chain in the
#: production captures ends with this certificate.
NVIDIA_DEVICE_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"

#: The DICE extension of Hopper leaf certificates that carries the FWID.
_TCG_DICE_FWID_OIDS = (
    x509.ObjectIdentifier("2.23.133.5.4.1"),
    x509.ObjectIdentifier("2.23.133.5.4.1.1"),
)
#: The content octets of the OID of SHA-384 (2.16.840.1.101.3.4.2.2).
_SHA384_OID = bytes.fromhex("608648016503040202")


@dataclasses.dataclass(frozen=True)
class GpuFacts:
    """What one GPU's evidence says about it. Trust it only when :func:`verify_gpus` passed."""

    index: int
    arch: str
    #: NRAS's ``ueid``: the leaf certificate's serial number, in decimal.
    ueid: str
    driver_version: str | None
    vbios_version: str | None
    measurement_count: int


@dataclasses.dataclass(frozen=True)
class NvidiaFacts:
    """Facts about the whole payload, for the policy layer."""

    arch: str
    gpu_count: int
    gpus: tuple[GpuFacts, ...]

    @property
    def archs(self) -> frozenset[str]:
        """Every architecture named, the payload's and each GPU's."""
        return frozenset([self.arch, *(gpu.arch for gpu in self.gpus)])


def gpu_facts(payload: NvidiaPayload | str | bytes | Mapping[str, Any]) -> NvidiaFacts:
    """The GPU count, architectures, driver and VBIOS versions of a payload (unverified)."""
    parsed = _as_payload(payload)
    return NvidiaFacts(
        arch=parsed.arch,
        gpu_count=len(parsed.gpus),
        gpus=tuple(
            GpuFacts(
                index=gpu.index,
                arch=gpu.arch,
                ueid=gpu.ueid,
                driver_version=gpu.driver_version,
                vbios_version=gpu.vbios_version,
                measurement_count=len(gpu.spdm.response.blocks),
            )
            for gpu in parsed.gpus
        ),
    )


def no_payload_check() -> Check:
    """The row for a report without ``nvidia_payload``: skipped (the policy decides)."""
    return Check.skipped(CheckId.NVIDIA_GPUS, "no nvidia_payload")


def nvidia_device_root() -> x509.Certificate:
    """The pinned NVIDIA Device Identity CA, checked against its fingerprint."""
    return _load_device_root()


def verify_gpus(
    payload: NvidiaPayload | str | bytes | Mapping[str, Any],
    *,
    expected_nonce: bytes,
    now: datetime,
    root: x509.Certificate | None = None,
) -> list[Check]:
    """Verify every GPU's evidence; one row per check (see the module docstring).

    ``payload`` may be parsed already or be the raw ``nvidia_payload``
    (parsing raises :class:`~enclaved.errors.EvidenceParseError`).
    ``expected_nonce`` is the 32-byte nonce the client sent; ``now`` must be
    timezone-aware (certificates are judged at that instant); ``root``
    replaces the pinned NVIDIA root (tests only).

    Never raises for a failed check: failures are ``fail`` rows.
    """
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    parsed = _as_payload(payload)
    anchor = root if root is not None else _load_device_root()

    checks = [_check_payload_nonce(parsed, expected_nonce)]
    for gpu in parsed.gpus:
        checks.extend(_verify_gpu(gpu, expected_nonce, now, anchor))
    checks.append(_aggregate(parsed, checks))
    return checks


# -- one GPU ---------------------------------------------------------------


def _verify_gpu(
    gpu: GpuEvidence, expected_nonce: bytes, now: datetime, root: x509.Certificate
) -> list[Check]:
    def cid(check: GpuCheck) -> str:
        return gpu_check_id(gpu.index, check)

    return [
        _check_cert_chain(cid(GpuCheck.CERT_CHAIN), gpu.certificates, now, root),
        _check_spdm_signature(cid(GpuCheck.SPDM_SIGNATURE), gpu),
        _check_nonce(
            cid(GpuCheck.NONCE), gpu.spdm.request.nonce, expected_nonce, "SPDM request nonce"
        ),
        _check_fwid(cid(GpuCheck.FWID), gpu),
    ]


def _check_payload_nonce(payload: NvidiaPayload, expected: bytes) -> Check:
    return _check_nonce(CheckId.NVIDIA_PAYLOAD_NONCE, payload.nonce, expected, "payload nonce")


def _check_nonce(check_id: str, actual: bytes, expected: bytes, what: str) -> Check:
    if actual == expected:
        return Check.passed(check_id, f"{what} is the client's nonce {expected.hex()}")
    return Check.failed(check_id, f"{what} {actual.hex()} != client's nonce {expected.hex()}")


def _check_cert_chain(
    check_id: str, chain: Sequence[x509.Certificate], now: datetime, root: x509.Certificate
) -> Check:
    """Step 1: leaf -> ... -> pinned root under the shared path validator (:mod:`.._x509`).

    NVIDIA sends the root as the last certificate; a chain without it is
    accepted too (the validator drops a trailing root that is the pinned one).
    """
    problem, _ = path_problem(chain, [root], now)
    if problem:
        return Check.failed(check_id, f"{problem} (trust anchor: {_cn(root)})")
    path = len(chain) if chain[-1] == root else len(chain) + 1
    return Check.passed(
        check_id,
        f"{path} certificates, leaf {_cn(chain[0])}, chain to pinned "
        f"{_cn(root)}, valid at {now.isoformat()}",
    )


def _check_spdm_signature(check_id: str, gpu: GpuEvidence) -> Check:
    """Step 2: ECDSA P-384 over SHA-384(request || response minus signature), by the leaf key."""
    digest = hashlib.sha384(gpu.spdm.signed_bytes).digest()
    problem = _spdm_signature_problem(gpu.leaf, digest, gpu.spdm.response.signature)
    if problem:
        return Check.failed(check_id, problem)
    return Check.passed(
        check_id,
        f"MEASUREMENTS ({len(gpu.spdm.response.blocks)} blocks) signed by the leaf key "
        f"(ECDSA P-384 over SHA-384 {digest.hex()[:16]}...)",
    )


@functools.lru_cache(maxsize=1024)
def _spdm_signature_problem(leaf: x509.Certificate, digest: bytes, signature: bytes) -> str | None:
    """Verify a raw r || s ECDSA P-384 signature. Cached: a pure function of its inputs."""
    try:
        key = leaf.public_key()
    except ValueError as exc:
        return f"leaf public key is unusable: {exc}"
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        return "leaf key is not an ECDSA P-384 key"
    half = len(signature) // 2
    der = encode_dss_signature(
        int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
    )
    try:
        key.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA384())))
    except InvalidSignature:
        return "MEASUREMENTS signature does not verify with the leaf key"
    return None


def _check_fwid(check_id: str, gpu: GpuEvidence) -> Check:
    """Step 4: the FWID in the signed report is the FWID in the leaf certificate."""
    reported = gpu.fwid
    if reported is None:
        # NVIDIA's verifier skips the comparison too: the GPU (whose signature
        # covers the opaque data) says it has none.
        return Check.passed(check_id, "the report carries no FWID; nothing to compare")
    in_cert = _leaf_fwid(gpu.leaf)
    if in_cert is None:
        return Check.failed(check_id, "leaf certificate has no readable DICE FWID extension")
    if in_cert != reported:
        return Check.failed(
            check_id,
            f"report FWID {reported.hex()[:16]}... != leaf certificate's {in_cert.hex()[:16]}...",
        )
    return Check.passed(check_id, f"report FWID {reported.hex()[:16]}... is the leaf certificate's")


def _leaf_fwid(cert: x509.Certificate) -> bytes | None:
    """The SHA-384 FWID of a Hopper leaf certificate's DICE extension, or None.

    Hopper's extension value is ``SEQUENCE { INTEGER, SubjectPublicKeyInfo,
    SEQUENCE { OID sha384, OCTET STRING fwid } }``: we walk the DER instead
    of trusting a fixed offset, and accept only that shape.
    """
    for oid in _TCG_DICE_FWID_OIDS:
        try:
            ext = cert.extensions.get_extension_for_oid(oid)
        except (x509.ExtensionNotFound, ValueError):
            continue
        if not isinstance(ext.value, x509.UnrecognizedExtension):
            continue
        try:
            (outer,) = der_items(ext.value.value)
            if outer[0] != 0x30:
                continue
            fwid_seq = der_items(outer[1])[-1]
            if fwid_seq[0] != 0x30:
                continue
            alg, digest = der_items(fwid_seq[1])
        except (EvidenceParseError, ValueError, IndexError):  # not that shape
            continue
        if alg == (0x06, _SHA384_OID) and digest[0] == 0x04:
            return digest[1]
    return None


def _aggregate(payload: NvidiaPayload, checks: Sequence[Check]) -> Check:
    """``nvidia.gpus``: every row passed, and every entry is a different GPU."""
    if not payload.gpus:
        return Check.failed(CheckId.NVIDIA_GPUS, "the nvidia_payload holds no GPU evidence")
    archs = sorted({gpu.arch for gpu in payload.gpus})
    summary = f"{len(payload.gpus)} GPU(s), arch {'/'.join(archs)}"
    problems = []
    failed = [c.id for c in checks if not c.ok]
    if failed:
        problems.append(f"failed: {', '.join(failed)}")
    # The same GPU's evidence listed twice verifies twice; it must not count
    # as two GPUs. Each GPU signs with its own attestation (leaf) key.
    first_seen: dict[bytes, int] = {}
    for gpu in payload.gpus:
        earlier = first_seen.setdefault(_leaf_identity(gpu.leaf), gpu.index)
        if earlier != gpu.index:
            problems.append(f"GPU {gpu.index} is the same device as GPU {earlier}")
    if problems:
        return Check.failed(CheckId.NVIDIA_GPUS, f"{summary}; {'; '.join(problems)}")
    return Check.passed(CheckId.NVIDIA_GPUS, f"{summary}; every GPU verified, all distinct")


# -- helpers ---------------------------------------------------------------


def _leaf_identity(leaf: x509.Certificate) -> bytes:
    """The leaf's public key (a GPU's attestation key), or its DER if the key is unreadable."""
    try:
        key = leaf.public_key()
    except ValueError:
        return leaf.public_bytes(serialization.Encoding.DER)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _as_payload(payload: NvidiaPayload | str | bytes | Mapping[str, Any]) -> NvidiaPayload:
    if isinstance(payload, NvidiaPayload):
        return payload
    return parse_nvidia_payload(payload)


_cn = cert_name


@functools.cache
def _load_device_root() -> x509.Certificate:
    pem = resources.files(__package__).joinpath("verifier_device_root.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    if cert.fingerprint(hashes.SHA256()).hex() != NVIDIA_DEVICE_ROOT_SHA256:
        # The package itself was altered: refuse to use it as a trust anchor.
        raise AttestationError(
            "the bundled NVIDIA device root does not match its pinned fingerprint"
        )
    return cert
