"""X.509 and DER from untrusted evidence, shared by the TDX and NVIDIA layers.

``cryptography`` decodes parts of a certificate or CRL only when they are
first read: names, extensions, the public key, revoked entries. A malformed
field in evidence would then surface as a ``ValueError`` (or
``UnsupportedAlgorithm``, ``TypeError``) deep inside a verifier, long after
parsing "succeeded". :func:`decoded_certificate` and :func:`decoded_crl`
read every part the verifiers use at load time, so an object either decodes
completely where it is parsed or is an
:class:`~enclaved.errors.EvidenceParseError` there.

:func:`der_read` / :func:`der_items` walk the DER inside certificate
extensions that ``cryptography`` leaves opaque (Intel's SGX extension,
the TCG FWID of NVIDIA's certificates).

:func:`path_problem` is the one certification path validator both
verifiers use, for Intel's PCK and collateral chains and for NVIDIA's GPU
chains: one rule set (below), so the two can never again disagree on what
makes a CA certificate acceptable.

What this module does NOT check: revocation (the TDX verifier reads Intel's
CRLs; NVIDIA's OCSP is NRAS's job), and what a chain's leaf key signed.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from ..errors import EvidenceParseError

#: What ``cryptography`` raises for a certificate or CRL, or a part of one,
#: that it cannot decode (not all are ``ValueError``s).
DECODE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def decoded_certificate(cert: x509.Certificate, what: str = "certificate") -> x509.Certificate:
    """``cert``, once every lazily decoded part has been read.

    Raises :class:`EvidenceParseError` (``"{what}: ..."``) when a name, an
    extension, the public key or the signature algorithm does not decode.
    """
    try:
        _ = (cert.subject, cert.issuer, cert.extensions, cert.public_key())
        _ = (cert.signature_hash_algorithm, cert.not_valid_before_utc, cert.not_valid_after_utc)
    except DECODE_ERRORS as exc:
        raise EvidenceParseError(f"{what}: malformed certificate: {exc}") from exc
    return cert


def decoded_crl(
    crl: x509.CertificateRevocationList, what: str = "CRL"
) -> x509.CertificateRevocationList:
    """``crl``, once its issuer, extensions, dates and every revoked entry have been read."""
    try:
        _ = (crl.issuer, crl.extensions, crl.signature_hash_algorithm)
        _ = (crl.last_update_utc, crl.next_update_utc)
        for revoked in crl:
            _ = (revoked.serial_number, revoked.revocation_date_utc, revoked.extensions)
    except DECODE_ERRORS as exc:
        raise EvidenceParseError(f"{what}: malformed CRL: {exc}") from exc
    return crl


# --- DER, one level at a time ------------------------------------------------------


def der_read(data: bytes, pos: int, what: str = "DER") -> tuple[int, bytes, int]:
    """One DER TLV at ``pos`` -> (tag, value, next position).

    Single-byte tags and definite lengths of up to four length bytes only
    (all that certificate extensions use). Does not check that lengths are
    minimally encoded. Raises :class:`EvidenceParseError` (``"{what}: ..."``).
    """
    if pos + 2 > len(data):
        raise EvidenceParseError(f"{what}: truncated DER")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise EvidenceParseError(f"{what}: bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    end = pos + length
    if end > len(data):
        raise EvidenceParseError(f"{what}: DER value runs past the end")
    return tag, data[pos:end], end


def der_items(data: bytes, what: str = "DER") -> list[tuple[int, bytes]]:
    """Split DER into (tag, content) pairs at one level, as :func:`der_read`."""
    out = []
    pos = 0
    while pos < len(data):
        tag, value, pos = der_read(data, pos, what)
        out.append((tag, value))
    return out


# --- certification path validation (RFC 5280, section 6.1) ---------------------------
#
# One rule set for every chain enclaved verifies. For a chain (leaf first)
# and a set of trust anchors (pinned roots), at an injected time ``now``:
#
# 1. A self-issued certificate at the end of the chain is the sender's copy
#    of the root: a hint only, accepted when it is byte for byte one of the
#    anchors, and then dropped (the anchor itself is used).
# 2. Shape: where the caller knows it, the exact number of CA certificates
#    between the leaf and the anchor (a PCK leaf can never pass as a TCB
#    signer, nor the reverse).
# 3. The leaf: a "signer" (its key signs evidence: a PCK, a TCB signer, a
#    GPU attestation key) is not a CA, and its keyUsage, where present,
#    grants digitalSignature; a "crl_issuer" (Intel's PCK CRL signer) is a
#    CA whose keyUsage is present and grants cRLSign.
# 4. Every certificate, the anchor included, is valid at ``now``
#    (notBefore <= now <= notAfter) and carries no critical extension other
#    than basicConstraints and keyUsage, the two this validator processes
#    (RFC 5280 6.1.4 (o): an unprocessed critical extension fails the path).
# 5. Every link: the child's issuer name is the parent's subject and the
#    parent's key verifies the child's signature.
# 6. Every issuer (each CA above the leaf, and the anchor): basicConstraints
#    present with cA true; a pathLenConstraint, where present, is at least
#    the number of CA certificates below it in the path; keyUsage present
#    and granting keyCertSign.
#
# A CA certificate WITHOUT keyUsage is refused (rule 6). RFC 5280's
# validation algorithm only checks keyCertSign "if a key usage extension is
# present" (6.1.4 (n)), but the profile says conforming CAs MUST include
# keyUsage in any certificate whose key verifies certificate or CRL
# signatures (4.2.1.3); a CA certificate without it is non-conforming. Every
# CA certificate of the real chains carries it with keyCertSign (Intel SGX
# Root CA and PCK CAs; NVIDIA Device Identity CA, GH100 Identity, Provisioner
# ICA, GSP BROM in the captures under testdata/captures), so the stricter
# rule costs no real chain anything, and failing closed is the project's
# rule. A leaf without keyUsage is accepted (rule 3): RFC 5280 puts no MUST
# on end-entity certificates.

#: The leaf's role: a key that signs evidence, or a CA that signs a CRL.
LeafRole = Literal["signer", "crl_issuer"]

_PROCESSED_CRITICAL = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})


def cert_name(cert: x509.Certificate) -> str:
    """The certificate's common name (or its whole subject), for reasons."""
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if names:
        value = names[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return cert.subject.rfc4514_string()


def path_problem(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: dt.datetime,
    *,
    intermediates: int | None = None,
    leaf: LeafRole = "signer",
) -> tuple[str | None, x509.Certificate | None]:
    """Validate ``chain`` (leaf first) up to one of ``anchors`` at ``now``.

    Returns ``(None, anchor reached)`` when every rule above holds, else
    ``(why, None)``. ``intermediates`` is the exact number of CA
    certificates required between the leaf and the anchor (None: any).
    Never raises for a bad chain; the certificates must have been decoded
    (:func:`decoded_certificate`) where they were parsed.
    """
    certs = list(chain)
    if not certs:
        return "empty certificate chain", None
    # 1. A root carried in the chain is a hint; it must *be* a trust anchor.
    last = certs[-1]
    if len(certs) > 1 and last.issuer == last.subject:
        anchor_ders = {a.public_bytes(Encoding.DER) for a in anchors}
        if last.public_bytes(Encoding.DER) not in anchor_ders:
            return f"chain ends in {cert_name(last)!r}, which is not a trusted root", None
        certs.pop()
    # 2. Shape.
    problem: str | None
    if intermediates is not None and len(certs) != intermediates + 1:
        problem = (
            f"expected a leaf and {intermediates} intermediate CA(s) below the root, "
            f"got {len(certs)} certificate(s)"
        )
        return problem, None
    # 3. The leaf's role.
    problem = _leaf_problem(certs[0], leaf)
    if problem:
        return problem, None
    # 4-6. Each certificate, each link, each issuer.
    for i, cert in enumerate(certs):
        problem = _cert_problem(cert, now)
        if problem:
            return problem, None
        if i + 1 < len(certs):
            parent = certs[i + 1]
            problem = _issuer_problem(parent, cas_below=i) or _issued_by(cert, parent)
            if problem:
                return problem, None
    top = certs[-1]
    candidates = [a for a in anchors if a.subject == top.issuer]
    if not candidates:
        return (
            f"{cert_name(top)!r} is not issued by a trusted root ({top.issuer.rfc4514_string()})",
            None,
        )
    why = "no trusted root verifies it"
    for anchor in candidates:
        problem = (
            _issued_by(top, anchor)
            or _issuer_problem(anchor, cas_below=len(certs) - 1)
            or _cert_problem(anchor, now)
        )
        if problem is None:
            return None, anchor
        why = problem
    return why, None


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _leaf_problem(cert: x509.Certificate, role: LeafRole) -> str | None:
    bc = _basic_constraints(cert)
    ku = _key_usage(cert)
    if role == "signer":
        if bc is not None and bc.ca:
            return f"leaf {cert_name(cert)!r} is a CA certificate"
        if ku is not None and not ku.digital_signature:
            return f"leaf {cert_name(cert)!r} may not sign (keyUsage lacks digitalSignature)"
        return None
    if bc is None or not bc.ca:
        return f"CRL signer {cert_name(cert)!r} is not a CA (basicConstraints)"
    if ku is None or not ku.crl_sign:
        return f"CRL signer {cert_name(cert)!r} may not sign CRLs (keyUsage lacks cRLSign)"
    return None


def _cert_problem(cert: x509.Certificate, now: dt.datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return (
            f"{cert_name(cert)!r} not yet valid at {now.isoformat()} "
            f"(notBefore {cert.not_valid_before_utc.isoformat()})"
        )
    if now > cert.not_valid_after_utc:
        return (
            f"{cert_name(cert)!r} expired at {now.isoformat()} "
            f"(notAfter {cert.not_valid_after_utc.isoformat()})"
        )
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _PROCESSED_CRITICAL:
            return f"{cert_name(cert)!r} has an unknown critical extension {ext.oid.dotted_string}"
    return None


def _issuer_problem(cert: x509.Certificate, cas_below: int) -> str | None:
    """Why ``cert`` may not issue a path with ``cas_below`` CA certificates under it, or None."""
    bc = _basic_constraints(cert)
    if bc is None:
        return f"{cert_name(cert)!r} has no basicConstraints, so it is not a CA"
    if not bc.ca:
        return f"{cert_name(cert)!r} is not a CA (basicConstraints)"
    if bc.path_length is not None and cas_below > bc.path_length:
        return f"{cert_name(cert)!r} pathLenConstraint {bc.path_length} exceeded"
    ku = _key_usage(cert)
    if ku is None:
        # See "A CA certificate WITHOUT keyUsage is refused" above.
        return f"{cert_name(cert)!r} is a CA without keyUsage, so it may not sign certificates"
    if not ku.key_cert_sign:
        return f"{cert_name(cert)!r} may not sign certificates (keyUsage lacks keyCertSign)"
    return None


@functools.lru_cache(maxsize=1024)
def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> str | None:
    """Did ``parent`` sign ``child`` (names chain, signature valid)? None if so, else why.

    Cached: certificates compare and hash by their full DER and the answer
    depends on nothing else, so a warm verifier skips repeated ECDSA work
    (eight GPUs share their three upper certificates; a client re-verifies
    the same evidence often).
    """
    try:
        child.verify_directly_issued_by(parent)
    except ValueError:
        return f"{cert_name(child)!r} is not issued by {cert_name(parent)!r} (issuer name mismatch)"
    except InvalidSignature:
        return f"{cert_name(child)!r}: signature does not verify under {cert_name(parent)!r}"
    except TypeError as exc:  # unsupported key or signature algorithm
        return f"{cert_name(child)!r}: cannot verify its signature: {exc}"
    return None
