"""``server_verification`` (server/attestation_summary.py): the node's verdict on the wire.

The files in ``tests/data/server_verification/`` were written by the
summary as it was before it moved out of the verifier and became typed
(commit f90f664): the summary must keep producing them byte for byte,
``nvidia: null`` for a report without GPUs included.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from attestation_captures import NEAR, VENICE, Capture

from enclaved.attestation import AttestationReport, AttestationVerdict, Policy, Verifier
from enclaved.attestation.tdx import DirectoryCollateral
from enclaved.server.attestation_summary import server_verification

GOLDEN = Path(__file__).parent / "data" / "server_verification"


def verify(
    c: Capture,
    *,
    nonce: bytes | None = None,
    policy: Policy | None = None,
    collateral: bool = True,
    gpus: bool = True,
) -> AttestationVerdict:
    doc = c.doc()
    if not gpus:
        doc["nvidia_payload"] = None
    verifier = Verifier(
        policy or Policy.strict(),
        collateral=DirectoryCollateral(c.responses) if collateral else None,
        now=lambda: c.at,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verdict = verifier.verify(
            AttestationReport.from_json(doc), nonce=c.nonce if nonce is None else nonce
        )
    verdict.duration_ms = 0  # the one field that depends on the machine
    return verdict


CASES: dict[str, Any] = {
    "venice": lambda: verify(VENICE),
    "venice_wrong_nonce": lambda: verify(VENICE, nonce=bytes(32)),
    "venice_no_collateral_allowed": lambda: verify(
        VENICE, policy=Policy(allow_missing_collateral=True), collateral=False
    ),
    "neardirect": lambda: verify(NEAR),
    "neardirect_no_gpus_allowed": lambda: verify(
        NEAR, policy=Policy(allow_missing_nvidia=True), gpus=False
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_summary_is_byte_identical_to_the_recorded_one(name: str) -> None:
    text = json.dumps(server_verification(CASES[name]()), indent=1) + "\n"
    assert text == (GOLDEN / f"{name}.json").read_text()


def test_no_gpus_is_null_not_invalid() -> None:
    sv = server_verification(CASES["neardirect_no_gpus_allowed"]())
    assert sv["nvidia"] is None and sv["nvidiaNonceBinding"] is None


def test_server_verification_shape() -> None:
    verdict = verify(VENICE)
    sv = server_verification(verdict)
    prod = VENICE.doc()["server_verification"]
    assert sv["ok"] is True
    assert sv["tdx"]["valid"] and sv["tdx"]["signatureValid"] and sv["tdx"]["certificateChainValid"]
    assert sv["tdx"]["reportData"] == prod["tdx"]["reportData"]
    assert sv["tdx"]["measurements"] == prod["tdx"]["measurements"]
    assert sv["tdx"]["crlCheck"] == prod["tdx"]["crlCheck"]
    assert sv["signingAddressBinding"] == {
        **prod["signingAddressBinding"],
        "signingKeyMatches": True,
    }
    assert sv["nonceBinding"] == prod["nonceBinding"]
    assert sv["nvidiaNonceBinding"] == prod["nvidiaNonceBinding"]
    assert sv["nvidia"] is not None
    assert sv["nvidia"]["valid"] and sv["nvidia"]["signatureVerified"]
    assert sv["verifiedAt"] == "2026-04-24T01:58:41.564Z"
    assert len(sv["checks"]) == len(verdict)
    json.dumps(sv)  # serializable as is
    bad = server_verification(verify(VENICE, nonce=bytes(32)))
    assert bad["ok"] is False and bad["nonceBinding"]["bound"] is False
