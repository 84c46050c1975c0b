"""The client side: an OpenAI drop-in that verifies the enclave and encrypts end to end.

Public surface:

- :func:`OpenAI` / :func:`AsyncOpenAI`: the official ``openai`` clients over
  an enclaved transport (:mod:`.sdk`);
- :class:`EnclavedTransport` / :class:`AsyncEnclavedTransport`: the httpx
  transports themselves, for any httpx-based code (:mod:`.transport`);
- :func:`last_attestation` / :func:`last_signature` / :func:`last_keyset` /
  :func:`last_receipt`: what the client last verified, for display;
- :class:`AttestedNode`, :class:`SignatureCheck`, :class:`EstablishedKeyset`,
  :class:`ReceiptCheck`: those results.

The local proxy lives in :mod:`enclaved.client.proxy` (imports Starlette).
"""

from __future__ import annotations

from ._aci import EstablishedKeyset, ReceiptCheck
from ._attest import AttestationCache, AttestedNode
from ._signature import SignatureCheck
from .sdk import (
    AsyncOpenAI,
    OpenAI,
    last_attestation,
    last_keyset,
    last_receipt,
    last_signature,
    transport_of,
)
from .transport import AsyncEnclavedTransport, EnclavedTransport, build_policy

__all__ = [
    "AsyncEnclavedTransport",
    "AsyncOpenAI",
    "AttestationCache",
    "AttestedNode",
    "EnclavedTransport",
    "EstablishedKeyset",
    "OpenAI",
    "ReceiptCheck",
    "SignatureCheck",
    "build_policy",
    "last_attestation",
    "last_keyset",
    "last_receipt",
    "last_signature",
    "transport_of",
]
