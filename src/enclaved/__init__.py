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
    "AsyncOpenAI",
    "AttestationError",
    "ConfigError",
    "CryptoError",
    "DecryptionError",
    "Error",
    "EvidenceParseError",
    "InvalidKeyError",
    "NetworkError",
    "OpenAI",
    "PolicyError",
    "StaleAttestationError",
    "VerificationError",
    "__version__",
]


if TYPE_CHECKING:  # pragma: no cover
    from .client import AsyncOpenAI, OpenAI


def __getattr__(name: str) -> Any:
    # The OpenAI drop-in, imported on first use: ``import enclaved`` must not
    # pull in httpx and the client stack (``enclaved serve`` never needs them).
    if name in ("OpenAI", "AsyncOpenAI"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
