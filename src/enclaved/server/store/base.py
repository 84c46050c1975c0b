"""The signature store interface.

A store maps a completion id (``chatcmpl-...``) to its
:class:`~enclaved.server.signing.SignatureRecord`. Ids are random and
unguessable; a store does not authenticate readers (the route does).

Implementations must not block the event loop, must treat a corrupt or
expired entry as absent, and must make a ``put`` visible to every later
``get`` (on every replica, for shared stores) once it returns.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..signing import SignatureRecord


@runtime_checkable
class SignatureStore(Protocol):
    async def put(self, record: SignatureRecord) -> None:
        """Store ``record`` under ``record.request_id`` (replacing any earlier one)."""

    async def get(self, request_id: str) -> SignatureRecord | None:
        """The record for ``request_id``, or ``None``."""

    async def delete(self, request_id: str) -> None:
        """Forget ``request_id`` (used when a response could not be delivered)."""

    async def close(self) -> None:
        """Release connections and threads. The store is unusable afterwards."""
