"""The shared core (``enclaved.aci``) as the node tests use it: one place to adapt."""

from __future__ import annotations

import hashlib
from typing import Any

import enclaved.aci as core


def core_digest(keyset: dict[str, Any]) -> str:
    return str(core.node_core().keyset_digest(keyset))


def core_statement(revision: str, report: dict[str, Any], nonce: str | None) -> bytes:
    wid = report.get("workload_id")
    return bytes(core.node_core().statement(revision, report["workload_keyset_digest"], nonce, wid))


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def core_verify_receipt(
    revision: str,
    receipt: dict[str, Any],
    keyset: dict[str, Any],
    digest: str,
    sent: bytes,
    received: bytes,
) -> None:
    """Raise unless ``receipt`` is signed by a receipt key of ``keyset`` over the JCS
    form, names ``digest``, and hashes ``sent`` and ``received``."""
    core.verify_receipt_signature(revision, receipt, keyset)
    doc = dict(receipt)
    assert doc["workload_keyset_digest"] == digest
    events = {e["type"]: e for e in doc["event_log"]}
    assert doc["event_log"][0]["type"] == "request.received"
    if events["request.received"]["body_hash"] != _sha(sent):
        raise ValueError("request hash")
    returned = events["response.returned"]
    got = returned["wire_hash"] if revision == "rev-a" else returned["body_hash"]
    if got != _sha(received):
        raise ValueError("response hash")
