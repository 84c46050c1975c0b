"""The one exception tree of enclaved.

Every error that enclaved raises on purpose is an :class:`Error`. The tree is
documented in ``docs/errors.md``; its shape is part of the public API::

    Error
    ├── ConfigError              a configuration file or option is invalid
    ├── CryptoError
    │   ├── InvalidKeyError      a public key is malformed or not on the curve
    │   └── DecryptionError      "failed to decrypt" - never says which check failed
    ├── AttestationError
    │   ├── EvidenceParseError   evidence is structurally malformed (never "forged")
    │   ├── VerificationError    a cryptographic or binding check failed (has .verdict)
    │   └── PolicyError          evidence verified, but a policy requirement is unmet,
    │                            or a policy file is invalid (has .verdict when known)
    ├── NetworkError             a transport failure talking to a server or a service
    └── APIError                 a server answered with an error document
        └── StaleAttestationError  the pinned model key is no longer valid (421)

Library exceptions are wrapped with ``raise ... from exc`` so the cause stays
visible to a debugger but never changes the type a caller catches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .attestation.checks import Verdict


class Error(Exception):
    """Root of every error enclaved raises on purpose."""

    def diagnostics(self) -> str:
        """A human-readable explanation, possibly multi-line."""
        return str(self)


class ConfigError(Error):
    """A configuration file or option is invalid."""


class CryptoError(Error):
    """A cryptographic operation failed."""


class InvalidKeyError(CryptoError):
    """A public key is malformed, of the wrong form, or not on the curve."""


class DecryptionError(CryptoError):
    """Decryption failed.

    Deliberately opaque: the message never says whether the length, the
    curve point, the key or the authentication tag was wrong.
    """

    def __init__(self, message: str = "failed to decrypt") -> None:
        super().__init__(message)


class AttestationError(Error):
    """Base of everything that goes wrong while checking an enclave."""


class EvidenceParseError(AttestationError):
    """Evidence is structurally malformed. Says nothing about authenticity."""


class _WithVerdict(AttestationError):
    def __init__(self, message: str, verdict: Verdict | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict

    def diagnostics(self) -> str:
        if self.verdict is None:
            return str(self)
        return f"{self}\n{self.verdict.table()}"


class VerificationError(_WithVerdict):
    """A signature, certificate chain, collateral or binding check failed."""


class PolicyError(_WithVerdict):
    """The evidence is authentic but does not satisfy the policy (or the policy is invalid)."""


class NetworkError(Error):
    """A transport failure: connection refused, timeout, TLS error."""


class APIError(Error):
    """A server answered with an OpenAI-style error document."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.body = body


class StaleAttestationError(APIError):
    """The server no longer holds the key the client pinned (HTTP 421)."""


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
]
