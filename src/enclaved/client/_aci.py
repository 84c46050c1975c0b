"""``aci/1`` in the client: the service's keyset, established once, and a receipt per answer.

Sans-IO, like :mod:`._attest`: this module builds the requests and judges
the answers; the transports do the I/O. Which revision the service speaks
(:data:`enclaved.aci.CURRENT` or :data:`enclaved.aci.REV_A`) is the
client's setting (``aci=``), never read from the untrusted report.

**Establishing the keyset** (spec §9.1), once per service and again when it
expires, when an answer names another keyset (``X-ACI-Keyset-Digest``), or
when the node we attested is not in it:

1. ``GET {base}/aci/attestation?nonce=<fresh 32 bytes>``;
2. the quote verified by the client's verifier under its policy (vendor
   root, TD attributes, event log...), with the ACI rows of
   :mod:`enclaved.attestation.formats` instead of the Venice REPORTDATA
   layout: the keyset digest, the statement recomputed with *our* nonce
   (``aci.report_data``), expiry, provenance corroborated by the measured
   compose hash, key custody (a named skip);
3. ``aci.channel``: the node we attested through ``/tee/attestation`` - the
   key we encrypt to, and whose address signs - is an E2EE key of that
   keyset, so both reports are about the same node.

**Each answer's receipt** (§9.3), after the answer and its EIP-191 signature:
the receipt our node embeds in its ``/tee/signature`` document, else ``GET
{base}/aci/receipts/{X-Receipt-Id}``; checked with
:func:`enclaved.aci.verify_receipt` against the established keyset and the
SHA-256 of the exact bytes we sent and read off the wire (ciphertext and SSE
framing included). A service-side rewrite (``request.forwarded`` differs)
is recorded, not refused: under E2EE the node necessarily forwards the
decrypted request, which is not the ciphertext it received.

What a receipt does not prove: *when*. Its ``served_at`` is the node's own
clock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, urlencode

from ..attestation.checks import Check, CheckId, Status, Verdict
from ..errors import EvidenceParseError, VerificationError

if TYPE_CHECKING:  # pragma: no cover
    import httpx

    from ..attestation.document import AttestationReport
    from ._attest import AttestedNode, VerifierLike

__all__ = [
    "AciReport",
    "Channel",
    "EstablishedKeyset",
    "ReceiptCheck",
    "aci_query",
    "check_revision",
    "judge_aci_report",
    "judge_receipt",
    "observed_tls_spki",
    "parse_aci_report",
    "receipt_from_signature",
    "receipt_path",
]


def check_revision(revision: str | None) -> str | None:
    """``None`` (ACI off), ``"current"`` or ``"rev-a"``; anything else is a ConfigError."""
    from .. import aci
    from ..errors import ConfigError

    if revision is not None and revision not in aci.REVISIONS:
        raise ConfigError(
            f"aci={revision!r}: name the revision the service speaks, "
            f"{' or '.join(repr(r) for r in aci.REVISIONS)} (never guessed from its report)"
        )
    return revision


def aci_query(nonce: bytes) -> str:
    """The query string of ``GET /aci/attestation``."""
    return urlencode({"nonce": nonce.hex()})


def receipt_path(receipt_id: str) -> str:
    """The path under the API root of one receipt (the id is quoted: it comes from a header)."""
    from ..protocol import routes

    return routes.ACI_RECEIPTS + "/" + quote(receipt_id, safe="")


@dataclasses.dataclass(frozen=True)
class AciReport:
    """A parsed ``aci/1`` report: the document and the quote the verifier checks."""

    doc: Mapping[str, Any]
    report: AttestationReport
    binder: Any


@dataclasses.dataclass(frozen=True)
class EstablishedKeyset:
    """A service's workload keyset, established by a verified ``aci/1`` report."""

    base_url: str
    revision: str
    #: ``sha256:<hex>``, recomputed from :attr:`keyset` (the report's copy was checked against it).
    digest: str
    keyset: Mapping[str, Any] = dataclasses.field(repr=False)
    #: rev-a: the identity key's digest; ``None`` under the current revision.
    workload_id: str | None
    #: The keyset's ``not_after`` (Unix seconds, the verifier's clock).
    not_after: int
    #: Every row: the quote's, the ACI bindings, ``aci.channel``.
    verdict: Verdict = dataclasses.field(compare=False, repr=False)
    #: The channel the report came over (its TLS key was checked against the keyset).
    channel: Channel = dataclasses.field(default_factory=lambda: Channel(), compare=False)

    def lists(self, node: AttestedNode) -> bool:
        """Does ``aci.channel`` hold for ``node`` over the channel established?"""
        return _channel(self.keyset, node, self.channel).status is Status.PASS

    def expired(self, now: float) -> bool:
        return now >= self.not_after


@dataclasses.dataclass(frozen=True)
class ReceiptCheck:
    """One answer's receipt, as checked."""

    receipt_id: str
    #: The receipt as served (parsed JSON): keep it to re-verify offline.
    receipt: Mapping[str, Any] = dataclasses.field(repr=False)
    keyset_digest: str
    verdict: Verdict

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    def raise_for_status(self) -> None:
        """:class:`~enclaved.errors.VerificationError` naming the first failing row, if any."""
        _raise_for(self.verdict, f"aci/1 receipt {self.receipt_id}")


def observed_tls_spki(response: httpx.Response) -> str | None:
    """SHA-256 (hex) of the SubjectPublicKeyInfo of the certificate the server
    presented on ``response``'s connection; ``None`` over plain HTTP, or where
    the transport does not expose its TLS connection (httpx's own does, as
    the ``network_stream`` extension, while the response is open)."""
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    der = ssl_object.getpeercert(True) if ssl_object is not None else None  # DER
    if not der:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = x509.load_der_x509_certificate(der).public_key()
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def parse_aci_report(
    body: bytes, revision: str, now: float, kms_roots: frozenset[str] = frozenset()
) -> AciReport:
    """Structure only (``kms_roots``: the policy's ``aci_kms_roots``, for the
    custody row). Raises :class:`~enclaved.errors.EvidenceParseError`."""
    from ..attestation.formats import aci_component

    try:
        doc = json.loads(body)
    except ValueError:
        raise EvidenceParseError("aci/1 report: not JSON") from None
    if not isinstance(doc, dict):
        raise EvidenceParseError("aci/1 report: not a JSON object")
    report, binder = aci_component(doc, revision, now, kms_roots)
    return AciReport(doc, report, binder)


def judge_aci_report(
    parsed: AciReport,
    *,
    revision: str,
    base_url: str,
    nonce: bytes,
    node: AttestedNode,
    verifier: VerifierLike,
    fetched: Any = None,
    channel: Channel | None = None,
) -> EstablishedKeyset:
    """Steps 2-3 above, on what was fetched; no socket. Returns the keyset, or raises."""
    from .. import aci

    # The real Verifier takes binder= (VerifierLike does not promise it).
    verdict: Verdict = cast(Any, verifier).verify(
        parsed.report, nonce=nonce, fetched=fetched, binder=parsed.binder
    )
    keyset = parsed.doc["attestation"]["workload_keyset"]
    channel = channel or Channel()
    verdict.add(_channel(keyset, node, channel))
    _raise_for(verdict, "aci/1 attestation")
    digest = aci.keyset_digest(keyset)
    not_after = aci.keyset_not_after(keyset)
    assert not_after is not None  # the aci.keyset_expiry row, enforced, passed
    workload_id = None
    if revision == aci.REV_A:
        workload_id = aci.workload_id(keyset["workload_identity"]["public_key"])
    return EstablishedKeyset(
        base_url=base_url,
        revision=revision,
        digest=digest,
        keyset=keyset,
        workload_id=workload_id,
        not_after=not_after,
        verdict=verdict,
        channel=channel,
    )


def receipt_from_signature(body: bytes, receipt_id: str) -> Mapping[str, Any] | None:
    """The receipt an enclaved node embeds in its ``/tee/signature`` document, if it is this one's."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    receipt = doc.get("receipt") if isinstance(doc, dict) else None
    if isinstance(receipt, dict) and receipt.get("receipt_id") == receipt_id:
        return receipt
    return None


def judge_receipt(
    established: EstablishedKeyset,
    receipt: Mapping[str, Any] | bytes,
    *,
    receipt_id: str,
    request_sha256: str,
    response_sha256: str,
) -> ReceiptCheck:
    """§9.3 over the hashes of the bytes we sent and received: every row, never
    raises (:meth:`ReceiptCheck.raise_for_status` does)."""
    from .. import aci

    doc: Any = receipt
    if isinstance(receipt, bytes):
        try:
            doc = json.loads(receipt)
        except ValueError:
            doc = None
    if not isinstance(doc, Mapping):
        verdict = Verdict(
            [Check.failed("aci.receipt.document", "the receipt is not a JSON object")]
        )
        doc = {}
    else:
        verdict = aci.verify_receipt(
            established.revision,
            doc,
            keyset=established.keyset,
            keyset_digest=established.digest,
            workload_id=established.workload_id,
            request_sha256=request_sha256,
            response_sha256=response_sha256,
            allow_rewrite=True,
        )
        if doc.get("receipt_id") != receipt_id:
            verdict.add(Check.failed("aci.receipt.document", "the receipt is for another answer"))
    return ReceiptCheck(receipt_id, doc, established.digest, verdict)


@dataclasses.dataclass(frozen=True)
class Channel:
    """What we used to reach the service: the TLS key it presented (SPKI
    SHA-256 hex, ``None`` over plain HTTP) and the hostname we asked for."""

    tls_spki_sha256: str | None = None
    hostname: str | None = None


def _channel(keyset: Mapping[str, Any], node: AttestedNode, channel: Channel) -> Check:
    """``aci.channel`` (§9.1 step 6): the key of the node we attested - the one
    we encrypt to and whose address signs - is an E2EE key of the keyset; and
    where the keyset lists TLS keys for the hostname we used, the TLS key we
    saw is one of them (a TLS endpoint other than the attested one fails,
    even though the E2EE key matched)."""
    from .. import aci
    from ..aci.receipts import tls_entries

    cid = CheckId.ACI_CHANNEL
    key = node.signing_key.hex() if node.signing_key is not None else None
    e2ee = aci.check_channel(keyset, e2ee_public_key=key)
    if e2ee.status is not Status.PASS:
        return Check.failed(cid, "the key of the node we attested is not an E2EE key of the keyset")
    if channel.tls_spki_sha256 is None:
        # Plain HTTP, or an inner transport that does not expose its TLS connection.
        return Check.passed(cid, f"{e2ee.reason} (no TLS key observed to compare)")
    if not tls_entries(keyset, channel.hostname):
        return Check.passed(
            cid, f"{e2ee.reason}; the keyset lists no TLS key for {channel.hostname}"
        )
    tls = aci.check_channel(
        keyset, tls_spki_sha256=channel.tls_spki_sha256, hostname=channel.hostname
    )
    if tls.status is not Status.PASS:
        return Check.failed(
            cid,
            f"the TLS key {channel.hostname} presented is not the one the keyset lists for it",
        )
    return Check.passed(cid, f"{e2ee.reason}; {tls.reason}")


def _raise_for(verdict: Verdict, what: str) -> None:
    bad = verdict.failures
    if bad:
        first = bad[0]
        raise VerificationError(
            f"{what}: check {first.id} {first.status.value}: {first.reason}", verdict
        )
