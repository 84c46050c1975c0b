"""A signature store shared by replicas: Redis, with a TTL per entry.

Keys are ``enclaved:sig:<request_id>``; values are the record's JSON. A
``put`` is one ``SET ... EX ttl``, so every replica that reads the same
Redis sees it as soon as ``put`` returns.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ...errors import NetworkError
from ..signing import SignatureRecord

KEY_PREFIX = "enclaved:sig:"


class RedisStore:
    def __init__(self, url: str, ttl: int = 7 * 24 * 3600, *, client: Any = None) -> None:
        self._ttl = int(ttl)
        self._redis: Any = client if client is not None else aioredis.from_url(url)

    async def put(self, record: SignatureRecord) -> None:
        try:
            await self._redis.set(KEY_PREFIX + record.request_id, record.to_json(), ex=self._ttl)
        except RedisError as exc:
            raise NetworkError(f"signature store (redis): {type(exc).__name__}") from exc

    async def get(self, request_id: str) -> SignatureRecord | None:
        try:
            value = await self._redis.get(KEY_PREFIX + request_id)
        except RedisError as exc:
            raise NetworkError(f"signature store (redis): {type(exc).__name__}") from exc
        if value is None:
            return None
        try:
            return SignatureRecord.from_json(value)
        except (ValueError, KeyError, TypeError):
            return None

    async def delete(self, request_id: str) -> None:
        try:
            await self._redis.delete(KEY_PREFIX + request_id)
        except RedisError as exc:
            raise NetworkError(f"signature store (redis): {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
