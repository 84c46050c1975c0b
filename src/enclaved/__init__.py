"""enclaved: private LLM inference that proves itself.

The public surface is small; everything else lives in private modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    APIError,
    AttestationError,
    ConfigError,
    CryptoError,
    DecryptionError,
    Error,
    EvidenceParseError,
    InvalidKeyError,
    NetworkError,
    PolicyError,
    StaleAttestationError,
    VerificationError,
)

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AttestationError",
    "ConfigError",
    "CryptoError",
    "DecryptionError",
    "Error",
    "EvidenceParseError",
    "InvalidKeyError",
    "NetworkError",
    "PolicyError",
    "StaleAttestationError",
    "VerificationError",
    "__version__",
]
