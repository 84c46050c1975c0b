"""Check ids are defined once (``CheckId``) and documented once (``docs/verification.md``).

The enum and the document must name the same ids: a row the code can emit
that the document does not explain, or a documented row no code emits, fails
here. Per-GPU rows are documented as templates (``nvidia.gpu[i].cert_chain``)
and built by ``gpu_check_id`` / ``nras_gpu_check_id``.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from pathlib import Path

from attestation_captures import ALL

from enclaved.attestation import AttestationReport, Policy, Verifier
from enclaved.attestation.checks import (
    CheckId,
    GpuCheck,
    TcbStatus,
    gpu_check_id,
    nras_gpu_check_id,
)
from enclaved.attestation.policy import KNOWN_TCB_STATUSES
from enclaved.attestation.tdx import DirectoryCollateral
from enclaved.attestation.verifier import recorded_nras

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _documented_rows() -> set[str]:
    """The ids in the first column of the tables under "The checks, in order"."""
    text = (DOCS / "verification.md").read_text(encoding="utf-8")
    section = text.split("## The checks, in order", 1)[1].split("\n## ", 1)[0]
    ids: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            ids.update(re.findall(r"`([^`]+)`", first))
    return ids


def _templates() -> set[str]:
    return {gpu_check_id(0, g).replace("[0]", "[i]") for g in GpuCheck} | {
        nras_gpu_check_id(0).replace("[0]", "[i]")
    }


def test_the_enum_and_docs_verification_name_the_same_checks() -> None:
    verifier_ids = {c.value for c in CheckId if not c.startswith("client.")}
    assert _documented_rows() == verifier_ids | _templates()


def test_the_clients_own_rows_are_documented() -> None:
    text = (DOCS / "verification.md").read_text() + (DOCS / "client.md").read_text()
    for cid in CheckId:
        if cid.startswith("client."):
            assert f"`{cid}`" in text, cid


def test_ids_are_strings_on_the_wire() -> None:
    on_the_wire: str = CheckId.TDX_PCK_CHAIN
    assert on_the_wire == "tdx.pck.chain"
    assert f"{CheckId.TDX_PCK_CHAIN}" == str(CheckId.TDX_PCK_CHAIN) == "tdx.pck.chain"
    assert gpu_check_id(3, GpuCheck.SPDM_SIGNATURE) == "nvidia.gpu[3].spdm.signature"
    assert nras_gpu_check_id(1) == "nvidia.nras.gpu[1]"
    assert TcbStatus.UP_TO_DATE in KNOWN_TCB_STATUSES
    assert TcbStatus.TCB_NOT_SUPPORTED not in KNOWN_TCB_STATUSES


def _constant(at: dt.datetime) -> dt.datetime:
    return at


def test_every_row_of_the_captures_has_a_named_id() -> None:
    known = {c.value for c in CheckId}
    per_gpu = re.compile(
        r"nvidia\.(gpu\[\d+\]\.("
        + "|".join(re.escape(g) for g in GpuCheck)
        + r")|nras\.gpu\[\d+\])"
    )
    for capture in ALL:
        verifier = Verifier(
            Policy(require_nras=True),
            collateral=DirectoryCollateral(capture.responses),
            nras=recorded_nras(capture.folder),
            now=functools.partial(_constant, capture.at),
        )
        verdict = verifier.verify(AttestationReport.from_json(capture.doc()), nonce=capture.nonce)
        for row in verdict:
            assert row.id in known or per_gpu.fullmatch(row.id), row.id
            assert type(row.to_dict()["id"]) is str and type(row.to_dict()["kind"]) is str
