"""A stand-in for NVML (the ``pynvml`` module), for tests only.

It answers the calls :class:`enclaved.evidence.nvidia_gpus.NvmlGpus` makes,
from the GPU evidence of a real production capture: each GPU's SPDM report
and certificate chain exactly as the capture carries them. A real GPU signs
over the nonce it is given; the stand-in cannot, so it answers the
captured report whatever the nonce - which is what a replaying or broken
driver would do, and what the node's self-check must catch.
"""

from __future__ import annotations

import base64
import json
import types
from typing import Any

NVML_CC_SYSTEM_FEATURE_ENABLED = 1
NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE = 1


def standin(
    payload: str, *, cc_feature: int = 1, ready: int = 1, count: int | None = None
) -> tuple[Any, bytes]:
    """An NVML module serving ``payload``'s GPUs, and the nonce they signed."""
    doc = json.loads(payload)
    gpus = [
        (base64.b64decode(e["evidence"]), base64.b64decode(e["certificate"]))
        for e in doc["evidence_list"]
    ]
    calls: list[str] = []

    def report(handle: int, nonce: bytes) -> Any:
        calls.append(f"report {handle}")
        evidence = gpus[handle][0]
        return types.SimpleNamespace(
            attestationReport=evidence, attestationReportSize=len(evidence)
        )

    def certificate(handle: int) -> Any:
        chain = gpus[handle][1]
        return types.SimpleNamespace(
            attestationCertChain=chain, attestationCertChainSize=len(chain)
        )

    module = types.SimpleNamespace(
        NVML_CC_SYSTEM_FEATURE_ENABLED=NVML_CC_SYSTEM_FEATURE_ENABLED,
        NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE=NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE,
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: len(gpus) if count is None else count,
        nvmlSystemGetConfComputeState=lambda: types.SimpleNamespace(ccFeature=cc_feature),
        nvmlSystemGetConfComputeGpusReadyState=lambda: ready,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetConfComputeGpuAttestationReport=report,
        nvmlDeviceGetConfComputeGpuCertificate=certificate,
        nvmlDeviceGetArchitecture=lambda handle: 9,  # HOPPER
        calls=calls,
    )
    return module, bytes.fromhex(doc["nonce"])
