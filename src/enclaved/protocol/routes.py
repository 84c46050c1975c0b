"""Route paths and model-id prefixes (PROTOCOL.md, "Routes").

Every route lives under ``/api/v1`` (the documented prefix) and is
mirrored under ``/v1``, so that an OpenAI SDK pointed at ``.../v1`` works.
"""

from __future__ import annotations

__all__ = [
    "ACI_ATTESTATION",
    "ACI_RECEIPTS",
    "API_PREFIXES",
    "ATTESTATION",
    "CHAT",
    "E2EE_MODEL_PREFIX",
    "HEALTH",
    "MODELS",
    "READY",
    "SDK_PREFIX",
    "SIGNATURE",
    "TEE_MODEL_PREFIX",
]

API_PREFIXES = ("/api/v1", "/v1")
#: The prefix the OpenAI SDKs use, and the one links name.
SDK_PREFIX = API_PREFIXES[1]

#: Under a prefix.
MODELS = "/models"
CHAT = "/chat/completions"
ATTESTATION = "/tee/attestation"
SIGNATURE = "/tee/signature"
#: Attested Confidential Inference (``aci/1``): the report and the receipts.
ACI_ATTESTATION = "/aci/attestation"
ACI_RECEIPTS = "/aci/receipts"
#: At the top level only.
HEALTH = "/health"
READY = "/ready"

#: Models that accept E2EE (and plain TEE use without its headers).
E2EE_MODEL_PREFIX = "e2ee-"
#: Models that run in the TEE without client-side encryption.
TEE_MODEL_PREFIX = "tee-"
