"""NVIDIA GPU evidence: parse it, verify it locally, and optionally ask NVIDIA (NRAS).

::

    from enclaved.attestation.nvidia import check_with_nras, parse_nvidia_payload, verify_gpus

    payload = parse_nvidia_payload(report["nvidia_payload"])
    checks = verify_gpus(payload, expected_nonce=nonce, now=datetime.now(timezone.utc))
    # optional, online: NVIDIA's own verdict (revocation, golden measurements)
    checks += check_with_nras(payload, expected_nonce=nonce, now=datetime.now(timezone.utc))

Check ids are documented in :mod:`.verify` (local) and :mod:`.nras` (online).
"""

from __future__ import annotations

from .nras import (
    NrasAnswer,
    NrasJwks,
    acheck_with_nras,
    check_with_nras,
    parse_nras_answer,
    parse_nras_jwks,
    verify_nras_answer,
)
from .parse import (
    GpuEvidence,
    MeasurementBlock,
    MeasurementRequest,
    MeasurementResponse,
    NvidiaPayload,
    OpaqueField,
    SpdmEvidence,
    parse_nvidia_payload,
    parse_spdm_evidence,
)
from .verify import (
    NVIDIA_DEVICE_ROOT_SHA256,
    GpuFacts,
    NvidiaFacts,
    gpu_facts,
    no_payload_check,
    nvidia_device_root,
    verify_gpus,
)

__all__ = [
    "NVIDIA_DEVICE_ROOT_SHA256",
    "GpuEvidence",
    "GpuFacts",
    "MeasurementBlock",
    "MeasurementRequest",
    "MeasurementResponse",
    "NrasAnswer",
    "NrasJwks",
    "NvidiaFacts",
    "NvidiaPayload",
    "OpaqueField",
    "SpdmEvidence",
    "acheck_with_nras",
    "check_with_nras",
    "gpu_facts",
    "no_payload_check",
    "nvidia_device_root",
    "parse_nras_answer",
    "parse_nras_jwks",
    "parse_nvidia_payload",
    "parse_spdm_evidence",
    "verify_gpus",
    "verify_nras_answer",
]
