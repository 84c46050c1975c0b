"""An in-process store: for tests and throwaway nodes. Forgets on restart."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..signing import SignatureRecord


class MemoryStore:
    """A dict with a TTL. Not shared between processes."""

    def __init__(
        self, *, ttl_seconds: float | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._items: dict[str, tuple[float, SignatureRecord]] = {}

    async def put(self, record: SignatureRecord) -> None:
        self._items[record.request_id] = (self._clock(), record)

    async def get(self, request_id: str) -> SignatureRecord | None:
        item = self._items.get(request_id)
        if item is None:
            return None
        stored_at, record = item
        if self._ttl is not None and self._clock() - stored_at >= self._ttl:
            del self._items[request_id]
            return None
        return record

    async def delete(self, request_id: str) -> None:
        self._items.pop(request_id, None)

    async def close(self) -> None:
        self._items.clear()
