"""``GET /tee/attestation``: the node's evidence, bound to its key and a nonce.

Steps (PROTOCOL.md, "Attestation"):

1. ``model`` is required and served (404 ``Model <id> not found``) and
   supports TEE attestation (400 otherwise).
2. ``nonce``: hex (else ``Nonce must be hex-encoded``) of exactly 32 bytes
   (else ``Nonce must be 32 bytes (64 hex characters)``). An empty ``nonce=``
   is a 32-byte error, not "no nonce": a client that meant to send one must
   not get a server-chosen nonce silently. Without the parameter the server
   picks 32 random bytes and says ``nonce_source: "server"``.
3. REPORTDATA = signing address (20 bytes) || 12 zero bytes || nonce (32 bytes).
4. Quote and GPU evidence from the node's :class:`EvidenceSource`.
5. The node runs the project's own verifier on the document it is about to
   send, trusting what the evidence source says it should trust (the
   development root for the simulated TEE), and reports the outcome in
   ``verified`` and ``server_verification``. A verifier that cannot run
   gives ``verified: false``, never true.

The nonce is echoed exactly as sent (same case), because clients written
from the public document compare it with ``!==``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import NetworkError
from ..evidence.base import EvidenceSource
from ..protocol.routes import ACI_ATTESTATION, SDK_PREFIX
from .errors import SERVER_ERROR, HTTPError, missing_parameter, model_not_found
from .node import Node

if TYPE_CHECKING:  # pragma: no cover
    from .attestation_summary import ServerVerification

log = logging.getLogger("enclaved.server")
#: The node's own relaxations (``enclaved serve`` lets each distinct line through once).
policy_log = logging.getLogger("enclaved.server.policy")

MSG_NONCE_LENGTH = "Nonce must be 32 bytes (64 hex characters)"
MSG_NONCE_HEX = "Nonce must be hex-encoded"
TEE_PROVIDER = "enclaved"

_HEX = re.compile(r"[0-9a-fA-F]*")

#: ``verify(document, nonce, evidence, now) -> (verified, server_verification)``.
VerifyFn = Callable[
    [dict[str, Any], bytes, EvidenceSource, float], Awaitable[tuple[bool, Mapping[str, object]]]
]


def parse_nonce(value: str | None) -> tuple[bytes, str, str]:
    """Step 2: ``(nonce bytes, nonce text to echo, nonce_source)``."""
    if value is None:
        nonce = secrets.token_bytes(32)
        return nonce, nonce.hex(), "server"
    if not _HEX.fullmatch(value):
        raise HTTPError(400, MSG_NONCE_HEX, code="invalid_nonce", param="nonce")
    if len(value) != 64:
        raise HTTPError(400, MSG_NONCE_LENGTH, code="invalid_nonce", param="nonce")
    return bytes.fromhex(value), value, "client"


def report_data(signing_address: str, nonce: bytes) -> bytes:
    """Step 3: the 64 REPORTDATA bytes."""
    address = bytes.fromhex(signing_address[2:])
    if len(address) != 20 or len(nonce) != 32:
        raise ValueError("report data needs a 20-byte address and a 32-byte nonce")
    return address + bytes(12) + nonce


async def attestation_report(
    node: Node, model_id: str | None, nonce_param: str | None, *, verify: VerifyFn | None = None
) -> dict[str, Any]:
    """The full response document (every field of PROTOCOL.md's table)."""
    # 1.
    if not model_id:
        raise missing_parameter("model")
    model = node.model(model_id)
    backend = node.backends.get(model_id)
    if model is None or backend is None:
        raise model_not_found(model_id)
    if not model.capabilities.supports_tee_attestation:
        raise HTTPError(
            400,
            f"Model {model_id} does not support TEE attestation",
            code="tee_not_supported",
            param="model",
        )
    # 2.
    nonce, nonce_text, nonce_source = parse_nonce(nonce_param)
    # 3-4.
    key = node.key
    evidence = node.evidence
    expected = report_data(key.address, nonce)
    try:
        quote = await evidence.quote(expected)
        nvidia = await evidence.nvidia_payload(nonce)
    except (NetworkError, OSError) as exc:
        log.error("attestation: the evidence source failed: %s", exc)
        raise evidence_error("the TEE evidence source failed") from None
    problem = self_check(quote, expected, nvidia, nonce, evidence.event_log())
    if problem is not None:
        log.error("attestation: REFUSED to serve evidence that does not check out: %s", problem)
        raise evidence_error("the TEE evidence did not pass the node's own checks")

    doc: dict[str, Any] = {
        "verified": False,
        "nonce": nonce_text,
        "request_nonce": nonce_text,
        "nonce_source": nonce_source,
        "model": model.id,
        "model_name": backend.model_name,
        "upstream_model": backend.model_name,
        "tee_provider": TEE_PROVIDER,
        "tee_hardware": evidence.tee_hardware,
        "intel_quote": quote.hex(),
        "nvidia_payload": nvidia,
        "signing_key": key.public_key_hex,
        "signing_public_key": key.public_key_hex,
        "signing_address": key.address,
        "signing_algo": "ecdsa",
        "event_log": evidence.event_log(),
        "info": evidence.info(),
        "server_verification": None,
    }
    block = aci_block(node)
    if block is not None:
        doc["aci"] = block
    # 5.
    details: Mapping[str, object]
    try:
        verified, details = await (verify or verify_with_project_verifier)(
            doc, nonce, evidence, node.clock()
        )
    except Exception as exc:  # noqa: BLE001 - fail closed: a verifier that cannot run verifies nothing
        log.error("self-verification failed to run: %s", type(exc).__name__)
        verified, details = False, {"ok": False, "error": f"verifier failed: {type(exc).__name__}"}
    doc["verified"] = bool(verified)
    doc["server_verification"] = details
    return doc


def evidence_error(message: str) -> HTTPError:
    """500 ``evidence_error``: the node will not serve this report (docs/errors.md)."""
    return HTTPError(500, message, code="evidence_error", type=SERVER_ERROR)


def self_check(
    quote: bytes,
    expected_report_data: bytes,
    nvidia_payload: str | None,
    nonce: bytes,
    event_log: list[dict[str, Any]],
) -> str | None:
    """Step 4b: what the node checks before it serves evidence (``None``: passed).

    The quote's REPORTDATA is the one asked for (another writer, or a broken
    source, cannot make the node serve a report bound to something else),
    every GPU report carries the nonce, and the event log replays to the
    quote's RTMRs. The full verification (step 5) runs after; these are the
    checks whose failure means the evidence is not ours to serve.
    """
    import hmac

    from ..attestation import eventlog
    from ..attestation.tdx.parse import parse_quote
    from ..errors import EvidenceParseError

    try:
        parsed = parse_quote(quote)
    except EvidenceParseError as exc:
        return f"the quote does not parse: {exc}"
    if not hmac.compare_digest(parsed.report_data, expected_report_data):
        return "the quote's REPORTDATA is not the one asked for"
    if nvidia_payload is not None:
        from ..attestation.nvidia.parse import parse_nvidia_payload

        try:
            gpus = parse_nvidia_payload(nvidia_payload)
        except EvidenceParseError as exc:
            return f"the GPU evidence does not parse: {exc}"
        if gpus.nonce != nonce or any(g.spdm.request.nonce != nonce for g in gpus.gpus):
            return "the GPU evidence is for another nonce"
    try:
        entries = eventlog.parse_event_log(event_log)
    except EvidenceParseError as exc:
        return f"the event log does not parse: {exc}"
    if entries and eventlog.replay(entries) != tuple(parsed.body.rtmrs):
        return "the event log does not replay to the quote's RTMRs"
    return None


async def verify_with_project_verifier(
    doc: dict[str, Any], nonce: bytes, evidence: EvidenceSource, now: float
) -> tuple[bool, ServerVerification]:
    """Step 5 with :mod:`enclaved.attestation`: the same verifier clients run.

    Runs on a worker thread: quote verification is CPU work (signatures,
    certificate chain) that must not stall streams on the event loop.
    """
    return await asyncio.to_thread(_verify_sync, doc, nonce, evidence, now)


#: One Intel PCS source per evidence source, so that its in-memory collateral
#: cache lives as long as the node rather than one request (the verifier
#: keeps no process-wide default).
_PCS_SOURCES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _pcs_for(evidence: EvidenceSource) -> Any:
    from ..attestation.tdx import PcsCollateral

    try:
        return _PCS_SOURCES.setdefault(evidence, PcsCollateral())
    except TypeError:  # an evidence source that cannot be weakly referenced
        return PcsCollateral()


def _verify_sync(
    doc: dict[str, Any], nonce: bytes, evidence: EvidenceSource, now: float
) -> tuple[bool, ServerVerification]:
    import datetime

    from ..attestation import AttestationReport, Policy, Verifier
    from .attestation_summary import server_verification

    when = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    root = evidence.trust_root_pem
    # The development policy trusts only this node's development root (and says
    # so loudly); hardware evidence gets the strict policy and Intel's root.
    policy = Policy.development(root.decode()) if root else Policy.strict()
    # ``verified`` is what we are computing: the verifier must not read a
    # placeholder. The verifier plays the client here, and it knows the nonce
    # even when the server chose it, so freshness and the REPORTDATA nonce
    # binding are checked either way.
    report = AttestationReport.from_json({**doc, "verified": None, "nonce_source": "client"})
    collateral = evidence.collateral(when)
    if collateral is None and not policy.allow_missing_collateral:
        collateral = _pcs_for(evidence)
    verifier = Verifier(policy, collateral=collateral)
    # Intel PCS for hardware evidence (the sync getter: this is a worker thread).
    fetched = verifier.fetch(report)
    verdict = verifier.verify(report, nonce=nonce, now=when, fetched=fetched, warn=False)
    for relaxation in verdict.relaxations:  # logged, not warned: this is the node's own log
        policy_log.warning("INSECURE attestation policy: %s", relaxation)
    return verdict.ok, server_verification(verdict)


_NONCE = re.compile(r"[0-9a-f]{64}")


async def aci_report(node: Node, nonce: str | None) -> dict[str, Any]:
    """``GET /v1/aci/attestation``: the ACI report, its quote's REPORTDATA the
    statement hash of ``nonce`` (64 lowercase hex, or absent: the unchallenged form)."""
    aci = node.aci
    if aci is None:
        raise HTTPError(404, "This node serves no ACI report", code="not_found", type="not_found")
    if nonce is not None and not _NONCE.fullmatch(nonce):
        raise HTTPError(
            400,
            "nonce must be 64 lowercase hex characters (32 bytes)",
            code="invalid_nonce",
            param="nonce",
        )
    expected = aci.report_data(nonce)
    evidence = node.evidence
    try:
        quote = await evidence.quote(expected)
    except (NetworkError, OSError) as exc:
        log.error("aci attestation: the evidence source failed: %s", exc)
        raise evidence_error("the TEE evidence source failed") from None
    event_log = evidence.event_log()
    problem = self_check(quote, expected, None, b"", event_log)
    if problem is not None:
        log.error("aci attestation: REFUSED to serve evidence that does not check out: %s", problem)
        raise evidence_error("the TEE evidence did not pass the node's own checks")
    import json

    info = evidence.info()
    body = {
        "quote": quote.hex(),
        "quote_report_data": expected.hex(),
        # A JSON-encoded RTMR event array, as the dstack policy carries it.
        "event_log": json.dumps(event_log, separators=(",", ":")),
        "info": info,
        "tee_hardware": evidence.tee_hardware,
    }
    body.update(compose_evidence(info))
    return aci.report(nonce, body, "tdx", node.clock())


def compose_evidence(info: Mapping[str, Any]) -> dict[str, str]:
    """The booted ``app_compose`` and ``vm_config`` from an evidence source's
    ``info``, where it has them (dstack, the simulated TEE; not configfs):
    what lets a verifier match sha256(app_compose) to the measured
    compose-hash, and so the stated provenance to measurement."""
    tcb = info.get("tcb_info")
    tcb = tcb if isinstance(tcb, Mapping) else {}
    out: dict[str, str] = {}
    for name in ("app_compose", "vm_config"):
        value = tcb.get(name) or info.get(name)
        if isinstance(value, str) and value:
            out[name] = value
    return out


def aci_block(node: Node) -> dict[str, Any] | None:
    """What ``/tee/attestation`` carries of ACI: the version, the keyset and its digest
    (the legacy REPORTDATA binds the signing address, not these: fetch
    ``/v1/aci/attestation`` for a quote over the keyset)."""
    aci = node.aci
    if aci is None:
        return None
    block: dict[str, Any] = {"api_version": "aci/1"}
    if aci.workload_id is not None:
        block["workload_id"] = aci.workload_id
    block["workload_keyset_digest"] = aci.digest
    block["workload_keyset"] = aci.keyset
    block["attestation_path"] = SDK_PREFIX + ACI_ATTESTATION
    return block
