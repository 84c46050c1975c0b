"""Where a serving node's attestation evidence comes from.

An :class:`EvidenceSource` produces what ``GET /tee/attestation`` reports
about the machine: a TDX quote over a given REPORTDATA, NVIDIA GPU evidence
for a nonce, the event log and deployment facts. Sources: the simulated TEE
(development, :mod:`enclaved.evidence.simulated_source`) and the dstack
guest agent on a TDX CVM (:mod:`enclaved.evidence.dstack`).

A source does not verify anything; the server runs the project's verifier
on what the source returns, trusting :attr:`EvidenceSource.trust_root_pem`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class EvidenceSource(Protocol):
    #: ``"intel-tdx"`` on hardware, ``"simulated"`` in development mode.
    tee_hardware: str

    #: The root certificate (PEM) the node's own verifier must trust for
    #: these quotes: the development root for the simulated TEE; ``None``
    #: for hardware, whose quotes chain to Intel's SGX root CA.
    trust_root_pem: bytes | None

    async def quote(self, report_data: bytes) -> bytes:
        """A TDX quote (raw bytes) whose REPORTDATA is ``report_data`` (64 bytes)."""
        ...

    async def nvidia_payload(self, nonce: bytes) -> str | None:
        """NVIDIA GPU evidence for ``nonce``: the protocol's JSON string; ``None`` without GPUs."""
        ...

    def event_log(self) -> list[dict[str, Any]]:
        """Event log entries: ``imr``, ``event_type``, ``digest``, ``event``, ``event_payload``."""
        ...

    def info(self) -> dict[str, Any]:
        """Deployment facts (``app_name``, ``compose_hash``, ``tcb_info``...) where known."""
        ...

    def collateral(self, now: datetime) -> Any | None:
        """Intel collateral (:class:`enclaved.attestation.tdx.Collateral`) for the
        node's own verifier, where the source has it: the simulated TEE signs its
        own under the development root. ``None``: the verifier fetches it from
        Intel PCS."""
        ...
