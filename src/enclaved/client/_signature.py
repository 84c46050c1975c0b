"""Checking a response signature (PROTOCOL.md, "Response signatures").

After a completion ends, the node signs::

    text = sha256_hex(request body bytes) + ":" + sha256_hex(response body bytes)

with EIP-191 ``personal_sign`` under the attested key. The client holds the
exact bytes it sent and received, so it:

1. reads ``text`` and ``signature`` from ``GET /tee/signature`` (structure);
2. checks the document is about this completion (``request_id``) and uses
   ``ecdsa``;
3. recomputes both hashes and compares them with ``text`` - a request or
   response changed by anyone in between no longer matches; production
   NEAR nodes prefix the text with the model name (``model:req:resp``),
   which is accepted;
4. recovers the signer's address from ``signature`` over ``text`` and
   compares it with the *attested* ``signing_address`` - never with the
   address the signature document itself claims.

The outcome is a :class:`~enclaved.attestation.checks.Verdict` of
``signature.*`` rows; :func:`raise_for_signature` turns a failed one into a
:class:`~enclaved.errors.VerificationError`.

What is NOT checked: that the signed text is the *only* thing the node
signed for this id (a node can sign anything it likes - the attestation is
what makes its key trustworthy), or timing.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import re
from typing import Any

from ..attestation.checks import Check, Verdict
from ..crypto import binding_text, eip191_recover_address
from ..crypto._primitives import parse_public_key
from ..errors import CryptoError, VerificationError

_SHA256_HEX = re.compile(r"\A[0-9a-fA-F]{64}\Z")


@dataclasses.dataclass(frozen=True)
class SignatureCheck:
    """The result of checking one response signature."""

    request_id: str
    text: str
    signature: str
    #: The address the signature recovers to (``0x`` + lowercase hex), if it recovers.
    recovered_address: str | None
    #: The attested address it had to match.
    expected_address: str
    verdict: Verdict
    #: Whether the stream was authenticated as it arrived: the node bound its
    #: response key to this request (docs/server.md, "Authenticated E2EE
    #: streams") and every chunk was checked against it before it was shown.
    #: ``False``: only this end-of-answer signature vouches for the text
    #: (a node without the extension, ``e2ee_key_per_chunk``, a ``tee-*`` model).
    stream_authenticated: bool = False

    @property
    def ok(self) -> bool:
        return self.verdict.ok


def check_signature_document(
    body: bytes | str | dict[str, Any],
    *,
    request_id: str,
    expected_address: str,
    request_sha256: str | None,
    response_sha256: str | None,
) -> SignatureCheck:
    """Steps 1-4. ``request_sha256`` / ``response_sha256`` ``None`` skips that
    hash row (``enclaved signature`` without the files); the rows then say so."""
    verdict = Verdict()
    # 1. Structure.
    doc: Any = body
    if isinstance(body, (bytes, str)):
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
    text = doc.get("text") if isinstance(doc, dict) else None
    signature = doc.get("signature") if isinstance(doc, dict) else None
    if not isinstance(text, str) or not isinstance(signature, str):
        verdict.add(
            Check.failed("signature.document", "not a signature document (text, signature)")
        )
        return SignatureCheck(request_id, "", "", None, expected_address, verdict)
    assert isinstance(doc, dict)
    verdict.add(Check.passed("signature.document", "text and signature present"))

    # 2. About this completion, with the algorithm we can check.
    doc_id = doc.get("request_id")
    if doc_id is not None and doc_id != request_id:
        verdict.add(
            Check.failed(
                "signature.request_id", f"the document is for {doc_id!r}, not {request_id!r}"
            )
        )
    else:
        verdict.add(Check.passed("signature.request_id", request_id))
    algo = doc.get("signing_algo") or "ecdsa"
    if algo != "ecdsa":
        verdict.add(
            Check.failed("signature.algo", f"signing_algo {algo!r}: only ecdsa is supported")
        )
        return SignatureCheck(request_id, text, signature, None, expected_address, verdict)

    # 3. The hashes in the text are those of our bytes.
    parts = text.rsplit(":", 2)
    hashes = parts[-2:] if len(parts) >= 2 else []
    if len(hashes) != 2 or not all(_SHA256_HEX.match(h) for h in hashes):
        verdict.add(Check.failed("signature.text", "text is not '<sha256 hex>:<sha256 hex>'"))
    else:
        form = "model:request:response" if len(parts) == 3 else "request:response"
        verdict.add(Check.passed("signature.text", form))
        verdict.add(_hash_row("signature.request_sha256", "request", hashes[0], request_sha256))
        verdict.add(_hash_row("signature.response_sha256", "response", hashes[1], response_sha256))

    # 4. Signed by the attested key.
    recovered: str | None = None
    try:
        recovered = eip191_recover_address(text, signature)
    except CryptoError as exc:
        verdict.add(Check.failed("signature.address", f"the signature does not verify: {exc}"))
    else:
        if hmac.compare_digest(recovered.lower(), expected_address.lower()):
            verdict.add(
                Check.passed("signature.address", f"signed by the attested key {recovered}")
            )
        else:
            verdict.add(
                Check.failed(
                    "signature.address",
                    f"signed by {recovered}, not by the attested {expected_address.lower()}",
                )
            )
    return SignatureCheck(request_id, text, signature, recovered, expected_address, verdict)


#: The one message for a response-key binding that does not verify, whatever is wrong.
BINDING_FAILED = (
    "response key binding: not a signature by the attested key over this request, "
    "our session key and the response key"
)


def check_binding(
    response_key: str | None,
    signature: str | None,
    *,
    request_sha256: str,
    client_public_key: str,
    expected_address: str,
) -> str | None:
    """The response key an E2EE answer's binding headers vouch for, or ``None`` without them.

    ``response_key`` / ``signature``: the ``X-Enclaved-E2EE-Response-Key`` and
    ``X-Enclaved-E2EE-Binding-Signature`` values. The signed text is rebuilt
    from our own request hash and session key (never from anything the
    answer says about them), and must recover to the *attested* address.
    Anything wrong - one header without the other, a malformed key, a
    signature by another key or over another request - raises the same
    :class:`VerificationError`.
    """
    if response_key is None and signature is None:
        return None
    if response_key is None or signature is None:
        raise VerificationError(BINDING_FAILED)
    key = response_key.strip().lower()
    if not _RESPONSE_KEY.match(key):
        raise VerificationError(BINDING_FAILED)
    try:
        parse_public_key(bytes.fromhex(key))
        recovered = eip191_recover_address(
            binding_text(request_sha256, client_public_key, key), signature.strip()
        )
    except CryptoError:
        raise VerificationError(BINDING_FAILED) from None
    if not hmac.compare_digest(recovered.lower(), expected_address.lower()):
        raise VerificationError(BINDING_FAILED)
    return key


_RESPONSE_KEY = re.compile(r"\A04[0-9a-f]{128}\Z")


def _hash_row(cid: str, what: str, signed: str, ours: str | None) -> Check:
    if ours is None:
        return Check.skipped(cid, f"the {what} bytes are not at hand: not compared", enforced=False)
    if not hmac.compare_digest(signed.lower(), ours.lower()):
        return Check.failed(cid, f"the signed {what} hash {signed.lower()} is not ours ({ours})")
    return Check.passed(cid, f"sha256 of the {what} bytes matches")


def raise_for_signature(result: SignatureCheck) -> None:
    """:class:`VerificationError` naming the first failing row, if any."""
    if result.ok:
        return
    bad = result.verdict.failures
    first = bad[0] if bad else None
    if first is None:  # an empty verdict
        raise VerificationError("response signature: no checks were run", result.verdict)
    raise VerificationError(
        f"response signature check {first.id} {first.status.value}: {first.reason}", result.verdict
    )


__all__ = [
    "BINDING_FAILED",
    "SignatureCheck",
    "check_binding",
    "check_signature_document",
    "raise_for_signature",
]
