"""Server side: where attestation evidence comes from.

>>> from enclaved.evidence import EvidenceSource, SimulatedEvidence
"""

from __future__ import annotations

from .base import EvidenceSource
from .simulated_source import SimulatedEvidence

__all__ = ["EvidenceSource", "SimulatedEvidence"]
