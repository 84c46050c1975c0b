"""Error types, codes and the messages of PROTOCOL.md's E2EE error table.

An error document is ``{"error": {"message", "type", "param", "code"}}``;
``type`` and ``code`` are API (clients branch on them), the full table is
``docs/errors.md``. The messages below are PROTOCOL.md's, verbatim: other
clients of the protocol match on them.
"""

from __future__ import annotations

__all__ = [
    "AUTHENTICATION",
    "CODE_STALE_KEY",
    "ERROR_TYPES",
    "INVALID_REQUEST",
    "MSG_BAD_ALGO",
    "MSG_BAD_PUBLIC_KEY",
    "MSG_DECRYPT_FAILED",
    "MSG_HEADERS_TOGETHER",
    "MSG_NOT_HEX",
    "MSG_NOT_UTF8",
    "MSG_STALE_KEY",
    "MSG_STREAMING_REQUIRED",
    "NOT_FOUND",
    "RATE_LIMIT",
    "SERVER_ERROR",
]

# ``type`` values (OpenAI's vocabulary).
INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
SERVER_ERROR = "server_error"
RATE_LIMIT = "rate_limit_error"
#: The error types of docs/errors.md; mid-stream it is always ``server_error``.
ERROR_TYPES = frozenset({INVALID_REQUEST, AUTHENTICATION, NOT_FOUND, SERVER_ERROR, RATE_LIMIT})

#: The pinned model key is not the node's (HTTP 421; some servers send only the code).
CODE_STALE_KEY = "e2ee_attestation_stale"

# The messages of PROTOCOL.md's error table, verbatim.
MSG_HEADERS_TOGETHER = (
    "Invalid E2EE headers: X-Venice-TEE-Client-Pub-Key, X-Venice-TEE-Model-Pub-Key "
    "and X-Venice-TEE-Signing-Algo must be sent together"
)
MSG_BAD_ALGO = "Invalid X-Venice-TEE-Signing-Algo: must be 'ecdsa'"
MSG_BAD_PUBLIC_KEY = "Invalid public key"
MSG_STALE_KEY = (
    "The encryption key is no longer valid. Please refresh your attestation report and retry."
)
MSG_STREAMING_REQUIRED = "E2EE requires streaming"
MSG_NOT_HEX = "Encrypted field is not valid hex"
MSG_DECRYPT_FAILED = "Failed to decrypt field"
MSG_NOT_UTF8 = "Decrypted content is not valid UTF-8"
