"""Attesting a node before talking to it, and remembering the result.

Sans-IO: this module builds the ``GET /tee/attestation`` request target and
judges the answer; the transports do the I/O - the attestation request, and
the verifier's own fetch of Intel's collateral and NRAS's answer
(:func:`fetch_for` with the verifier's sync getters, :func:`afetch_for` with
its async ones). Judging (:func:`judge_attestation`) opens no socket.

What a client checks before it encrypts a single byte to a node
(PROTOCOL.md, "Attestation"):

1. It sent a fresh 32-byte nonce (:func:`new_nonce`), never reused.
2. The answer parses as an attestation report (structure only).
3. The verifier, under the client's :class:`~enclaved.attestation.Policy`,
   checks the quote, its chain to a trusted root, the TD attributes, that
   REPORTDATA binds the signing address and *our* nonce, that the signing
   key hashes to that address, the GPU evidence... - and returns one row
   per check. The server's own ``verified`` flag is never relied on.
4. The client adds its own rows: the report is for the model it asked for,
   and (for E2EE) the key it is about to encrypt to is a secp256k1 key that
   hashes to the attested address.
5. Any enforced row that did not pass raises
   :class:`~enclaved.errors.VerificationError` or
   :class:`~enclaved.errors.PolicyError`, naming the first failing check.

The result, an :class:`AttestedNode`, is cached per (base URL, model) for a
short time (:class:`AttestationCache`); a refresh always uses a new nonce.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

from ..attestation.checks import Check, CheckId, Verdict
from ..crypto import Sealer
from ..crypto.reserve import Reserve, prompt_sealers
from ..errors import ConfigError, InvalidKeyError

if TYPE_CHECKING:  # pragma: no cover
    from ..attestation.document import AttestationReport

#: The nonce size the protocol requires (bytes).
NONCE_BYTES = 32
#: Prompt sealers kept ready per attested E2EE node: a system and a user
#: message (what ``fold_history`` leaves) seal without waiting for a key.
PROMPT_SEALERS = 2


class VerifierLike(Protocol):
    """What the client needs from :class:`enclaved.attestation.Verifier`.

    A verifier that also has ``fetch(report)`` / ``async afetch(report)``
    (as :class:`~enclaved.attestation.Verifier` does) is asked for what the
    network says first, and its ``verify`` is then called with
    ``fetched=``; one with ``verify`` alone is only called.
    """

    def verify(self, report: AttestationReport, *, nonce: bytes | None) -> Verdict: ...


@dataclasses.dataclass(frozen=True)
class AttestedNode:
    """A node whose attestation passed the client's policy.

    Everything here comes from a verified report; ``signing_key`` is the key
    E2EE prompts are sealed to and ``signing_address`` the address every
    response signature must recover to.
    """

    base_url: str
    model: str
    #: ``"ecdsa"`` or ``"ed25519"``.
    signing_algo: str
    #: ``0x`` + 40 lowercase hex (ecdsa).
    signing_address: str
    #: 65-byte uncompressed secp256k1 key, or ``None`` for a plain TEE model without one.
    signing_key: bytes | None
    #: The key exactly as the server wrote it, for the ``X-Venice-TEE-Model-Pub-Key`` header.
    signing_key_text: str | None
    tee_hardware: str | None
    tee_provider: str | None
    #: The nonce we sent, hex.
    nonce: str
    #: Every check that was run, for display (``verdict.table()``).
    verdict: Verdict = dataclasses.field(compare=False)
    #: When it was verified, on the transport's clock (monotonic seconds).
    verified_at: float = dataclasses.field(default=0.0, compare=False)
    #: E2EE: sealers to ``signing_key`` made ahead of time, one per prompt
    #: message, each used once (``None`` when the node was attested for plain use).
    sealers: Reserve[Sealer] | None = dataclasses.field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        """``intel-tdx, 0x1234...``: what ``enclaved chat`` prints after ``verified:``."""
        return f"{self.tee_hardware or 'unknown hardware'}, {self.signing_address}"


def new_nonce(random: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh 32-byte nonce (the seed document: ``secrets.token_hex(32)``, not 16)."""
    nonce = random(NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise ValueError("the random source returned the wrong number of bytes")
    return nonce


def attestation_query(model: str, nonce: bytes) -> str:
    """The query string of ``GET /tee/attestation``."""
    return urlencode({"model": model, "nonce": nonce.hex()})


def signature_query(model: str, request_id: str) -> str:
    """The query string of ``GET /tee/signature``."""
    return urlencode({"model": model, "request_id": request_id})


#: The development root's path on a default ``enclaved serve`` (its data dir).
DEV_ROOT_HINT = "~/.local/share/enclaved/dev-root-ca.pem"


def refuse_untrusted_simulated(report: Any, policy: Any) -> Check | None:
    """The failed ``client.simulated_tee`` row, when a simulated report meets a
    policy that trusts no development root; else None.

    A simulated quote cannot chain to Intel's root, so there is nothing to
    fetch and nothing more to check: the verdict says plainly what to do
    instead of failing later on Intel's servers or on the chain.
    """
    if report.tee_hardware != "simulated" or policy is None or policy.allow_development_roots:
        return None
    return Check.failed(
        CheckId.CLIENT_SIMULATED_TEE,
        "the node runs a SIMULATED TEE (development only) and no development root is trusted: "
        f"trust its root explicitly (trust_root=, --trust-root: {DEV_ROOT_HINT} for a default "
        "enclaved serve) if this is your own test server",
    )


def parse_attestation(body: bytes, *, verifier: VerifierLike) -> AttestationReport:
    """Step 2 (structure only), and the simulated-TEE shortcut.

    Raises :class:`~enclaved.errors.EvidenceParseError` for a malformed
    document, :class:`~enclaved.errors.VerificationError` for a simulated TEE
    under a policy that trusts no development root.
    """
    from ..attestation.document import AttestationReport

    report = AttestationReport.from_json(body)
    # A simulated TEE can only pass under a policy that trusts a development
    # root. Say so plainly instead of letting the verifier fetch Intel
    # collateral for a quote that cannot chain to Intel's root anyway.
    refused = refuse_untrusted_simulated(report, getattr(verifier, "policy", None))
    if refused is not None:
        Verdict([refused]).raise_for_status()
    return report


def fetch_for(verifier: VerifierLike, report: AttestationReport) -> Any:
    """What the network says about ``report`` (the verifier's sync getters), or ``None``.

    Raises :class:`~enclaved.errors.NetworkError` when a service cannot be asked.
    """
    fetch = getattr(verifier, "fetch", None)
    return fetch(report) if callable(fetch) else None


async def afetch_for(verifier: VerifierLike, report: AttestationReport) -> Any:
    """The async twin of :func:`fetch_for`: the verifier's async getters, awaited.

    A verifier with a sync ``fetch`` only is run on a worker thread, so the
    event loop never waits on the network.
    """
    afetch = getattr(verifier, "afetch", None)
    if callable(afetch):
        return await afetch(report)
    fetch = getattr(verifier, "fetch", None)
    return await asyncio.to_thread(fetch, report) if callable(fetch) else None


def judge_attestation(
    report: AttestationReport,
    *,
    base_url: str,
    model: str,
    nonce: bytes,
    verifier: VerifierLike,
    e2ee: bool,
    fetched: Any = None,
    now: float = 0.0,
) -> AttestedNode:
    """Steps 3-5 above, on what was fetched; no socket. Returns the node, or raises.

    Raises :class:`~enclaved.errors.VerificationError` /
    :class:`~enclaved.errors.PolicyError` (with ``.verdict``) when a check fails.
    """
    # 3. The verifier: every cryptographic and policy row.
    if fetched is not None:
        verify: Any = verifier.verify
        verdict: Verdict = verify(report, nonce=nonce, fetched=fetched)
    else:
        verdict = verifier.verify(report, nonce=nonce)
    # 4. The client's own rows.
    verdict.add(_check_model(report, model))
    if e2ee:
        verdict.add(_check_e2ee_key(report))
    # 5. Fail closed.
    verdict.raise_for_status()

    key_text = _raw_key_text(report.raw)
    sealers = None
    if e2ee and report.signing_key is not None:
        # The first request's prompt keys, made now: attestation already
        # took milliseconds, the first token should not wait for them.
        sealers = prompt_sealers(report.signing_key, PROMPT_SEALERS)
        sealers.refill()
    return AttestedNode(
        base_url=base_url,
        model=model,
        signing_algo=report.signing_algo,
        signing_address=report.signing_address_text.lower(),
        signing_key=report.signing_key,
        signing_key_text=key_text,
        tee_hardware=report.tee_hardware,
        tee_provider=report.tee_provider,
        nonce=nonce.hex(),
        verdict=verdict,
        verified_at=now,
        sealers=sealers,
    )


def check_attestation(
    body: bytes,
    *,
    base_url: str,
    model: str,
    nonce: bytes,
    verifier: VerifierLike,
    e2ee: bool,
    now: float = 0.0,
) -> AttestedNode:
    """Steps 2-5 above, fetching through the verifier's sync getters. Returns the node, or raises.

    Raises :class:`~enclaved.errors.EvidenceParseError` for a malformed
    document, :class:`~enclaved.errors.NetworkError` when collateral or NRAS
    cannot be fetched, :class:`~enclaved.errors.VerificationError` /
    :class:`~enclaved.errors.PolicyError` (with ``.verdict``) when a check fails.
    """
    report = parse_attestation(body, verifier=verifier)
    return judge_attestation(
        report,
        base_url=base_url,
        model=model,
        nonce=nonce,
        verifier=verifier,
        e2ee=e2ee,
        fetched=fetch_for(verifier, report),
        now=now,
    )


def _raw_key_text(raw: Any) -> str | None:
    for name in ("signing_key", "signing_public_key"):
        value = raw.get(name) if hasattr(raw, "get") else None
        if isinstance(value, str) and value:
            return value.strip()
    return None


def _check_model(report: AttestationReport, model: str) -> Check:
    """``client.model``: the report is for the model we asked about."""
    cid = CheckId.CLIENT_MODEL
    if report.model is None:
        return Check.skipped(cid, "the report does not name its model", enforced=False)
    if report.model != model:
        return Check.failed(
            cid, f"the report is for model {report.model!r}, we asked for {model!r}"
        )
    return Check.passed(cid, f"the report is for {model}")


def _check_e2ee_key(report: AttestationReport) -> Check:
    """``client.e2ee_key``: the key we will encrypt to is the attested identity.

    The verifier's ``binding.signing_key`` row checks the same thing, but a
    policy may waive a *missing* key; for E2EE a key is not optional, so
    the client checks it itself and always enforces it.
    """
    from ..crypto import address_from_public_key

    cid = CheckId.CLIENT_E2EE_KEY
    if report.signing_algo != "ecdsa":
        return Check.failed(
            cid, f"E2EE needs an ecdsa (secp256k1) key, the report has {report.signing_algo}"
        )
    if report.signing_key is None:
        return Check.failed(cid, "the report carries no signing_key to encrypt to")
    try:
        derived = address_from_public_key(report.signing_key)
    except InvalidKeyError:
        return Check.failed(cid, "signing_key is not a valid secp256k1 point")
    if derived.lower() != report.signing_address_text.lower():
        return Check.failed(
            cid,
            f"signing_key hashes to {derived}, not to signing_address {report.signing_address_text}",
        )
    return Check.passed(cid, "the E2EE key is the attested signing key")


class AttestationCache:
    """Verified nodes per (base URL, model), for ``ttl`` seconds.

    Thread-safe (the sync transport may be shared by threads; the async one
    never awaits while holding the lock). Entries are dropped when they
    expire, or when the server says the pinned key is no longer valid
    (:meth:`invalidate`, on HTTP 421).
    """

    def __init__(self, ttl: float = 300.0, *, clock: Callable[[], float]) -> None:
        if ttl < 0:
            raise ConfigError("attestation_ttl must be >= 0")
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], AttestedNode] = {}

    @property
    def ttl(self) -> float:
        return self._ttl

    def get(self, base_url: str, model: str) -> AttestedNode | None:
        with self._lock:
            node = self._entries.get((base_url, model))
            if node is None:
                return None
            if self._clock() - node.verified_at >= self._ttl:
                del self._entries[(base_url, model)]
                return None
            return node

    def put(self, node: AttestedNode) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            self._entries[(node.base_url, node.model)] = node

    def invalidate(self, base_url: str, model: str, signing_key: bytes | None = None) -> None:
        """Forget the entry; with ``signing_key``, only if it still pins that key."""
        with self._lock:
            node = self._entries.get((base_url, model))
            if node is not None and (signing_key is None or node.signing_key == signing_key):
                del self._entries[(base_url, model)]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


__all__ = [
    "NONCE_BYTES",
    "AttestationCache",
    "AttestedNode",
    "VerifierLike",
    "afetch_for",
    "attestation_query",
    "check_attestation",
    "fetch_for",
    "judge_attestation",
    "new_nonce",
    "parse_attestation",
    "signature_query",
]
