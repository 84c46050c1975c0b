"""Interoperability: npm ``venice-e2ee`` 0.5.3 verifies our node's ACI report
and the receipts of its answers, with the node on the ``rev-a`` profile
(``[aci] revision = "rev-a"``), the revision that package implements.

The package fetches ``/v1/aci/attestation`` with its own nonce, recomputes
the keyset digest, the workload id, the statement and the endorsement, and
checks REPORTDATA; then ``verifyReceipt`` checks each answer's receipt
(from ``/tee/signature``, as from production) over the bytes it sent and
received, streamed and not. The quote is the simulated TEE's, which no
Intel DCAP verifier accepts: enclaved's own verifier checks it here against
the development root, and the package is told so (``requireDcap: false``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from server_fakes import TEE_MODEL, fake_node
from test_interop_seed_client import NODE_DIR, _node_env, node

__all__ = ["node"]

pytestmark = pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning")


def _run(node: str, origin: str) -> dict[str, Any]:
    done = subprocess.run(
        [node, "venice_e2ee_aci.mjs", origin, TEE_MODEL],
        cwd=NODE_DIR,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=_node_env(API_KEY="unused"),
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_venice_e2ee_verifies_the_rev_a_report_and_receipts(node: str, tmp_path: Path) -> None:
    with fake_node(tmp_path, aci={"revision": "rev-a"}) as n:
        run = _run(node, n.url)
        digest = n.app.state.node.aci.digest
    assert "error" not in run, run.get("error")
    att = run["attestation"]
    failed = [c for c in att["checks"] if not c["ok"]]
    assert failed == [], failed
    assert att["verified"] and att["nonceBound"]
    names = {c["name"] for c in att["checks"]}
    assert {"report_data_binds_keyset_and_nonce", "keyset_endorsement"} <= names
    assert run["report"]["workload_keyset_digest"] == digest
    for kind in ("complete", "streamed"):
        answer = run[kind]
        assert answer["status"] == 200
        assert answer["keysetDigestHeader"] == digest
        failed = [c for c in answer["checks"] if not c["ok"]]
        assert failed == [] and answer["verified"], (kind, failed)
        # The same receipt does not vouch for one more byte.
        assert answer["tamperedVerified"] is False
