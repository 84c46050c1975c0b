"""Step 8: the signature of the exact bytes, and the ACI receipt, stored before ``[DONE]``.

:func:`sign` signs ``sha256(request body) : sha256(response bytes)`` with the
node key and stores the record, bounded in time: a store that never answers
costs the signature, never the answer. :func:`forget` withdraws it when the
client left while it was stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import orjson

from ..aci import ReceiptHashes, sha256_tagged
from ..backends.base import ChatRequest
from ..node import Node
from ..signing import SignatureRecord
from .validate import Prepared

__all__ = ["STORE_TIMEOUT_SECONDS", "forget", "sign"]

log = logging.getLogger("enclaved.server")

#: How long a signature store may take to store or delete one record.
STORE_TIMEOUT_SECONDS = 5.0


async def sign(
    node: Node, prepared: Prepared, completion_id: str, response_sha256: str
) -> SignatureRecord | None:
    """Step 8: sign and store. A store failure costs the signature, not the answer."""
    record = node.signer.sign(
        request_id=completion_id,
        model=prepared.model.id,
        request_body=prepared.body,
        response_sha256=response_sha256,
    )
    if node.aci is not None:
        receipt = node.aci.receipt(
            receipt_id=completion_id,
            chat_id=completion_id,
            model=prepared.model.id,
            endpoint=prepared.endpoint,
            served_at=node.clock(),
            hashes=ReceiptHashes(
                received=sha256_tagged(prepared.body),
                forwarded=sha256_tagged(forwarded_bytes(prepared.request)),
                returned="sha256:" + response_sha256,
                cleartext=None if prepared.e2ee else "sha256:" + response_sha256,
            ),
        )
        record = dataclasses.replace(
            record, receipt=receipt, api_key_sha256=prepared.api_key_sha256
        )
    try:
        # Bounded: [DONE] waits for this, and a store that never answers
        # (a black-holed Redis) must not hold every answer back.
        await asyncio.wait_for(node.store.put(record), STORE_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure, reported by type only
        log.error("signature store failed for %s: %s", completion_id, type(exc).__name__)
        if node.metrics is not None:
            node.metrics.store_errors.inc()
        return None
    return record


def forwarded_bytes(request: ChatRequest) -> bytes:
    """The bytes a receipt's ``request.forwarded`` hashes: the plaintext request
    the engine is given (messages and parameters, E2EE removed), as one JSON
    object with sorted keys. The embedded engine takes no bytes; this is the
    document it is given, serialized one fixed way."""
    return orjson.dumps(
        {"messages": request.messages, **request.params}, option=orjson.OPT_SORT_KEYS
    )


async def forget(node: Node, record: SignatureRecord | None) -> None:
    """Withdraw a stored signature: the answer was not delivered after all."""
    if record is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(node.store.delete(record.request_id), STORE_TIMEOUT_SECONDS)
