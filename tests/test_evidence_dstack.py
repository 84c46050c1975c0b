"""The node on a dstack CVM: evidence and keys from the guest agent (``--tee dstack``).

A stand-in agent (tests/dstack_agent.py) serves the guest agent's API on a
Unix socket from the simulated TDX; the node talks to it through
``dstack-sdk`` as on a real CVM. What must hold: the served report is the
agent's quote and event log, verifies with every production row present, and
is bound to a node key the KMS derived (the same on every replica); evidence
that does not check out is never served.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import running_server, wait_until_healthy
from dstack_agent import Agent, running_agent
from dstack_sdk import DstackClient
from server_fakes import E2EE_MODEL, fake_backends, fake_config

import enclaved
from enclaved.attestation import AttestationReport, Policy, Verifier
from enclaved.attestation.policy import InsecurePolicyWarning
from enclaved.client import last_attestation, last_signature
from enclaved.crypto import KeyPair
from enclaved.errors import ConfigError
from enclaved.evidence import dstack
from enclaved.evidence.dstack import KMS_KEY_PATH, KMS_KEY_PURPOSE, DstackEvidence
from enclaved.evidence.simulated import SimulatedTdx
from enclaved.evidence.simulated_deployment import SimulatedDeployment
from enclaved.server.app import build_evidence, create_app

NONCE = "ab" * 32


@pytest.fixture(autouse=True)
def _quiet_dev_policy() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePolicyWarning)
        yield


@pytest.fixture
def tdx(tmp_path: Path) -> SimulatedTdx:
    return SimulatedTdx.load_or_create(tmp_path / "root")


def _evidence(agent: Agent, tdx: SimulatedTdx) -> DstackEvidence:
    # As on a CVM, but trusting the stand-in's development root (tests only).
    return DstackEvidence(
        DstackClient(str(agent.socket_path)),
        trust_root_pem=bytes(tdx.root_pem),
        collateral=tdx.collateral,
    )


def _serve(tmp_path: Path, evidence: DstackEvidence) -> Any:
    return create_app(
        fake_config(tmp_path, tee="dstack"), evidence=evidence, backends=fake_backends()
    )


def test_a_dstack_node_is_attested_chatted_with_and_keyed_by_the_kms(
    tmp_path: Path, tdx: SimulatedTdx
) -> None:
    deployment = SimulatedDeployment(models=(E2EE_MODEL,))
    with running_agent(tmp_path, tdx, deployment) as agent:
        app = _serve(tmp_path, _evidence(agent, tdx))
        kms_key = KeyPair(agent.kms_key(KMS_KEY_PATH, KMS_KEY_PURPOSE))
        with running_server(app) as url:
            doc = httpx.get(
                f"{url}/v1/tee/attestation", params={"model": E2EE_MODEL, "nonce": NONCE}
            ).json()
            client = enclaved.OpenAI(
                base_url=url + "/v1", api_key="k", trust_root=str(tdx.root_path), max_retries=0
            )
            reply = client.chat.completions.create(
                model=E2EE_MODEL, messages=[{"role": "user", "content": "hello"}]
            )
            node = last_attestation(client)
            signature = last_signature(client)
    assert reply.choices[0].message.content
    # The node key is the KMS's: every replica of the app signs with it.
    assert doc["signing_address"] == kms_key.address
    assert node is not None and node.signing_address == kms_key.address
    assert node.tee_hardware == "intel-tdx" and node.verdict.ok
    assert signature is not None and signature.ok
    # The report is the agent's: its event log and info, as production serves them.
    assert doc["tee_hardware"] == "intel-tdx" and doc["verified"] is True
    assert doc["event_log"] == deployment.event_log_json()
    assert doc["info"]["compose_hash"] == deployment.compose_hash.hex()
    assert doc["info"]["tcb_info"]["app_compose"] == deployment.app_compose
    assert doc["info"]["node_key_provider"] == "dstack-kms"
    assert agent.calls.count("GetKey") == 1 and "GetQuote" in agent.calls


def test_the_served_report_verifies_with_every_production_row(
    tmp_path: Path, tdx: SimulatedTdx
) -> None:
    deployment = SimulatedDeployment(models=(E2EE_MODEL,))
    with (
        running_agent(tmp_path, tdx, deployment) as agent,
        running_server(_serve(tmp_path, _evidence(agent, tdx))) as url,
    ):
        body = httpx.get(
            f"{url}/v1/tee/attestation", params={"model": E2EE_MODEL, "nonce": NONCE}
        ).content
    now = dt.datetime.now(dt.UTC)
    verifier = Verifier(
        Policy.development(bytes(tdx.root_pem).decode()), collateral=tdx.collateral(now)
    )
    verdict = verifier.verify(
        AttestationReport.from_json(body), nonce=bytes.fromhex(NONCE), now=now
    )
    assert verdict.ok, verdict.table()
    passed = {c.id for c in verdict.checks if c.status.value == "pass"}
    for row in (
        "tdx.quote.signature",
        "tdx.pck.chain",
        "binding.report_data.identity",
        "binding.report_data.nonce",
        "eventlog.replay",
        "measurements.compose_hash",
        "measurements.mrconfigid",
    ):
        assert row in passed, (row, verdict.table())


@pytest.mark.parametrize("knob", ["wrong_report_data", "extra_event"])
def test_evidence_that_does_not_check_out_is_never_served(
    tmp_path: Path, tdx: SimulatedTdx, knob: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        running_agent(tmp_path, tdx, SimulatedDeployment(), **{knob: True}) as agent,
        running_server(_serve(tmp_path, _evidence(agent, tdx))) as url,
    ):
        r = httpx.get(f"{url}/v1/tee/attestation", params={"model": E2EE_MODEL, "nonce": NONCE})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "evidence_error"
    assert "intel_quote" not in r.text
    assert any("REFUSED to serve evidence" in m for m in caplog.messages)


def test_an_agent_that_stops_answering_is_a_500_not_a_report(
    tmp_path: Path, tdx: SimulatedTdx
) -> None:
    with running_agent(tmp_path, tdx, SimulatedDeployment()) as agent:
        evidence = _evidence(agent, tdx)
        app = _serve(tmp_path, evidence)
    # the agent is gone; the node is not
    with running_server(app) as url:
        r = httpx.get(f"{url}/v1/tee/attestation", params={"model": E2EE_MODEL, "nonce": NONCE})
    assert r.status_code == 500 and r.json()["error"]["code"] == "evidence_error"


def test_tee_dstack_without_an_agent_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(dstack.SIMULATOR_ENV, str(tmp_path / "no.sock"))
    with pytest.raises(ConfigError, match="no dstack guest agent"):
        build_evidence(fake_config(tmp_path, tee="dstack"))


def test_tee_auto_never_falls_back_to_the_simulated_tee(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(dstack.SIMULATOR_ENV, str(tmp_path / "no.sock"))
    with pytest.raises(ConfigError, match="--tee simulated"):
        build_evidence(fake_config(tmp_path, tee="auto"))


def test_tee_auto_picks_dstack_when_its_agent_answers(
    tmp_path: Path, tdx: SimulatedTdx, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_agent(tmp_path, tdx, SimulatedDeployment()) as agent:
        monkeypatch.setenv(dstack.SIMULATOR_ENV, str(agent.socket_path))
        evidence = build_evidence(fake_config(tmp_path, tee="auto"))
    assert isinstance(evidence, DstackEvidence) and evidence.tee_hardware == "intel-tdx"
    assert evidence.trust_root_pem is None  # production: Intel's root, not a development one


def test_an_unknown_tee_mode_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="one of: simulated, dstack, configfs, auto"):
        fake_config(tmp_path, tee="sev")


@pytest.mark.model
def test_enclaved_serve_tee_dstack_uses_the_agent_and_the_kms_key(
    tmp_path: Path, tdx: SimulatedTdx
) -> None:
    # The command an operator runs (deploy/dstack), against the stand-in agent.
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with running_agent(tmp_path, tdx, SimulatedDeployment()) as agent:
        env = {**os.environ, dstack.SIMULATOR_ENV: str(agent.socket_path)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "enclaved", "serve", "--tee", "dstack", "--port", str(port)]
            + ["--data-dir", str(tmp_path / "data")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until_healthy(port, proc)
            doc = httpx.get(
                f"http://127.0.0.1:{port}/v1/tee/attestation",
                params={"model": "e2ee-smollm2-135m", "nonce": NONCE},
            ).json()
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    kms_key = KeyPair(agent.kms_key(KMS_KEY_PATH, KMS_KEY_PURPOSE))
    assert doc["signing_address"] == kms_key.address, err
    assert doc["tee_hardware"] == "intel-tdx" and doc["info"]["node_key_provider"] == "dstack-kms"
    # On dstack the node trusts Intel's root only: the stand-in's quote does not verify.
    assert doc["verified"] is False
    assert "SIMULATED" not in err


# -- GPUs (NVML) -------------------------------------------------------------------


def _venice_payload() -> str:
    from conftest import CAPTURES

    body = next(CAPTURES.glob("venice_*/responses/0001_*.body")).read_bytes()
    import json

    payload: str = json.loads(body)["nvidia_payload"]
    return payload


def test_gpu_evidence_is_assembled_as_production_carries_it(
    tmp_path: Path, tdx: SimulatedTdx
) -> None:
    import json

    from nvml_standin import standin

    from enclaved.evidence.nvidia_gpus import NvmlGpus

    captured = _venice_payload()
    nvml, signed_nonce = standin(captured)
    gpus = NvmlGpus(nvml)
    gpus.start()
    with running_agent(tmp_path, tdx, SimulatedDeployment()) as agent:
        evidence = _evidence(agent, tdx)
        evidence.gpus = gpus
        with running_server(_serve(tmp_path, evidence)) as url:
            ok = httpx.get(
                f"{url}/v1/tee/attestation",
                params={"model": E2EE_MODEL, "nonce": signed_nonce.hex()},
            )
            stale = httpx.get(
                f"{url}/v1/tee/attestation", params={"model": E2EE_MODEL, "nonce": NONCE}
            )
    served = json.loads(ok.json()["nvidia_payload"])
    want = json.loads(captured)
    assert served["nonce"] == signed_nonce.hex() and served["arch"] == "HOPPER"
    assert [(e["arch"], e["certificate"], e["evidence"]) for e in served["evidence_list"]] == [
        (e["arch"], e["certificate"], e["evidence"]) for e in want["evidence_list"]
    ]
    assert list(served) == ["nonce", "evidence_list", "arch"]
    # GPU reports over another nonce than the request's are never served.
    assert stale.status_code == 500 and stale.json()["error"]["code"] == "evidence_error"
    assert len(nvml.calls) == 2 * len(want["evidence_list"])  # one GPU at a time, each asked


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"count": 0}, "no NVIDIA GPU found"),
        ({"cc_feature": 0}, "not in confidential-computing mode"),
        ({"ready": 0}, "ready state is not set"),
    ],
)
def test_gpus_that_cannot_attest_stop_the_start(knobs: dict[str, int], message: str) -> None:
    from nvml_standin import standin

    from enclaved.evidence.nvidia_gpus import NvmlGpus

    nvml, _ = standin(_venice_payload(), **knobs)
    with pytest.raises(ConfigError, match=message):
        NvmlGpus(nvml).start()


def test_gpus_need_a_hardware_tee(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a hardware TEE"):
        build_evidence(fake_config(tmp_path, gpus=True))
