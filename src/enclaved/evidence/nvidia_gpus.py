"""NVIDIA GPU evidence from NVML, for a node whose GPUs run in confidential-computing mode.

For each GPU, NVML (``nvidia-ml-py``, the ``pynvml`` module) returns the
GPU's SPDM attestation report over a 32-byte nonce (the requester's
``GET_MEASUREMENTS`` and the GPU's signed ``MEASUREMENTS``) and its
attestation certificate chain (PEM). They are assembled into the protocol's
``nvidia_payload`` exactly as the production captures carry it::

    {"nonce": "<hex>", "evidence_list": [{"arch": "HOPPER",
      "certificate": "<base64 of the PEM chain>",
      "evidence": "<base64 of the SPDM report>"}, ...], "arch": "HOPPER"}

At start (:meth:`NvmlGpus.start`) the node refuses to serve unless there is
at least one GPU, the system's confidential-computing feature is on, and
the GPUs' ready state is set (the driver accepts work): a node configured
for GPUs that cannot attest them must not start. NVML calls block: they run
on a worker thread, one GPU at a time, under a lock (NVML's attestation
calls are not meant to overlap).
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

from ..errors import ConfigError, NetworkError

#: NVML architecture numbers as the payload names them.
_ARCH_NAMES = {7: "VOLTA", 8: "AMPERE", 9: "HOPPER", 10: "BLACKWELL"}


class NvmlGpus:
    """The node's GPUs through ``nvml`` (the ``pynvml`` module; tests inject a stand-in)."""

    def __init__(self, nvml: Any | None = None) -> None:
        if nvml is None:
            try:
                import pynvml  # type: ignore[import-untyped]  # NVIDIA ships no type information
            except ImportError as exc:
                raise ConfigError(
                    "gpus = true needs NVIDIA's NVML bindings: pip install 'enclaved[dstack]'"
                ) from exc
            nvml = pynvml
        self._nvml: Any = nvml
        self._lock = threading.Lock()
        self.count = 0

    def start(self) -> None:
        """Initialise NVML and check the GPUs can attest; a :class:`ConfigError` says why not."""
        nvml = self._nvml
        try:
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            state = nvml.nvmlSystemGetConfComputeState()
            ready = nvml.nvmlSystemGetConfComputeGpusReadyState()
        except Exception as exc:
            raise ConfigError(f"gpus = true: NVML failed ({type(exc).__name__})") from exc
        if count == 0:
            raise ConfigError("gpus = true: no NVIDIA GPU found")
        if state.ccFeature != nvml.NVML_CC_SYSTEM_FEATURE_ENABLED:
            raise ConfigError(
                "gpus = true: the GPUs are not in confidential-computing mode (CC feature off)"
            )
        if ready != nvml.NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE:
            raise ConfigError(
                "gpus = true: the GPUs' confidential-computing ready state is not set "
                "(nvidia-smi conf-compute -srs 1, after attesting them)"
            )
        self.count = count

    def payload(self, nonce: bytes) -> str:
        """The ``nvidia_payload`` for ``nonce`` (32 bytes). Blocking: call it off the loop."""
        if len(nonce) != 32:
            raise NetworkError("GPU evidence needs a 32-byte nonce")
        nvml = self._nvml
        entries = []
        arch = ""
        with self._lock:
            try:
                for index in range(self.count):
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                    report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
                    cert = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
                    arch = _ARCH_NAMES.get(int(nvml.nvmlDeviceGetArchitecture(handle)), "UNKNOWN")
                    evidence = bytes(report.attestationReport[: report.attestationReportSize])
                    chain = bytes(cert.attestationCertChain[: cert.attestationCertChainSize])
                    entries.append(
                        {
                            "arch": arch,
                            "certificate": base64.b64encode(chain).decode(),
                            "evidence": base64.b64encode(evidence).decode(),
                        }
                    )
            except Exception as exc:
                raise NetworkError(f"NVML attestation failed ({type(exc).__name__})") from exc
        return json.dumps({"nonce": nonce.hex(), "evidence_list": entries, "arch": arch})
