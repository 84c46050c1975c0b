"""The HTTP headers of the protocol (PROTOCOL.md, "E2EE" and the end of it).

Request headers of E2EE, all three or none; and the response headers every
answer about a TEE model carries. HTTP header names are case-insensitive:
these are the spellings PROTOCOL.md uses.
"""

from __future__ import annotations

__all__ = [
    "ACI_KEYSET_DIGEST",
    "ACI_VERSION",
    "ALGO",
    "BINDING_HEADERS",
    "BINDING_SIGNATURE",
    "CLIENT_KEY",
    "E2EE_HEADERS",
    "ECDSA",
    "MODEL_KEY",
    "PROVIDER",
    "RECEIPT_ID",
    "RESPONSE_KEY",
    "TEE",
    "TEE_PROVIDER",
    "TEE_RESPONSE_HEADERS",
    "TEE_RESPONSE_HEADERS_RAW",
    "VERIFIED_ADDRESS",
    "VERIFIED_HARDWARE",
]

#: The client's session public key, uncompressed hex, 130 characters ``04...``.
CLIENT_KEY = "X-Venice-TEE-Client-Pub-Key"
#: The ``signing_key`` of the attestation the client pinned.
MODEL_KEY = "X-Venice-TEE-Model-Pub-Key"
#: The algorithm: only :data:`ECDSA` exists in this protocol.
ALGO = "X-Venice-TEE-Signing-Algo"
E2EE_HEADERS = (CLIENT_KEY, MODEL_KEY, ALGO)
ECDSA = "ecdsa"

#: Response headers of an authenticated E2EE stream (enclaved's extension, docs/server.md
#: "Authenticated E2EE streams"): the response's ephemeral public key, 130 lowercase hex
#: characters ``04...``, and the node's EIP-191 signature (``0x`` + 130 hex) over
#: :func:`enclaved.crypto.binding_text`. Both or neither.
RESPONSE_KEY = "X-Enclaved-E2EE-Response-Key"
BINDING_SIGNATURE = "X-Enclaved-E2EE-Binding-Signature"
BINDING_HEADERS = (RESPONSE_KEY, BINDING_SIGNATURE)

#: Response headers on TEE models.
TEE = "X-Venice-TEE"
TEE_PROVIDER = "X-Venice-TEE-Provider"
#: Who runs the TEE stack: this node.
PROVIDER = "enclaved"
TEE_RESPONSE_HEADERS = {TEE: "true", TEE_PROVIDER: PROVIDER}
#: The same, as ASGI header pairs (lowercase bytes), for the raw chat route.
TEE_RESPONSE_HEADERS_RAW = [
    (name.lower().encode(), value.encode()) for name, value in TEE_RESPONSE_HEADERS.items()
]

#: Attested Confidential Inference (docs/server.md): on every response, the
#: protocol version (``aci/1``) and the serving keyset's digest; on an answer,
#: the id of its receipt (``GET /v1/aci/receipts/{id}``). Unauthenticated hints.
ACI_VERSION = "X-ACI-Version"
ACI_KEYSET_DIGEST = "X-ACI-Keyset-Digest"
RECEIPT_ID = "X-Receipt-Id"

# Added by the enclaved client (the SDK's transport, the proxy) for its own
# caller, never sent by a node: what the client itself verified. A node's
# response carrying them has them removed first (client/_core.py).
VERIFIED_HARDWARE = "x-enclaved-tee-hardware"
VERIFIED_ADDRESS = "x-enclaved-signing-address"
