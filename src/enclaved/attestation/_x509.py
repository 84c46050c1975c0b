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

What this module does NOT check: signatures, validity periods, chains,
revocation. Those are the verifiers' job.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

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
