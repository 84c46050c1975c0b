"""Per-API-key rate limits (``[rate_limits]``): requests and tokens per minute.

Each caller - an API key, known by its configured hash, or everyone together
when the node has no keys (``"anonymous"``) - has a request budget and a
token budget per fixed one-minute window (UTC minute boundaries). A chat
request is admitted when the window's requests are within the limit and its
tokens (prompt + completion of the answers already given, counted when each
answer ends) are below the limit; otherwise 429 ``rate_limited`` with
``Retry-After``. Every chat answer carries OpenAI's headers:
``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests``,
``x-ratelimit-reset-requests`` and the same three for ``tokens``.

The counters live in the node's memory, or in Redis when the signature store
is Redis, so that replicas behind a load balancer share one budget per key.
Redis keys carry a 16-hex-character prefix of the key's hash, never the key.
A limit of 0 (the default) is no limit; with both at 0 the feature is off
and costs nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..errors import NetworkError
from ..protocol.errors import RATE_LIMIT
from .errors import HTTPError

log = logging.getLogger("enclaved.server")

WINDOW_SECONDS = 60
#: Redis key prefix (the signature store's keys start with ``enclaved:sig:``).
REDIS_PREFIX = "enclaved:rl:"


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per minute; 0 = unlimited."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0

    @property
    def enabled(self) -> bool:
        return self.requests_per_minute > 0 or self.tokens_per_minute > 0


class Counter(Protocol):
    async def add(self, name: str, amount: int, ttl: int) -> int:
        """Add ``amount`` to counter ``name`` (expiring after ``ttl`` s); the new value."""
        ...

    async def get(self, name: str) -> int: ...


class MemoryCounter:
    """Counters in this process (one node)."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[int, int]] = {}  # name -> (value, window)

    async def add(self, name: str, amount: int, ttl: int) -> int:
        value = self._values.get(name, (0, 0))[0] + amount
        self._values[name] = (value, ttl)
        if len(self._values) > 100_000:  # old windows: drop them all but the live ones
            window = name.rsplit(":", 1)[1]
            self._values = {k: v for k, v in self._values.items() if k.endswith(":" + window)}
        return value

    async def get(self, name: str) -> int:
        return self._values.get(name, (0, 0))[0]


class RedisCounter:
    """Counters in Redis (replicas share them): INCRBY and EXPIRE in one transaction."""

    def __init__(self, url: str, *, client: Any = None) -> None:
        if client is None:
            import redis.asyncio as aioredis

            client = aioredis.from_url(url)
        self._redis: Any = client

    async def add(self, name: str, amount: int, ttl: int) -> int:
        from redis.exceptions import RedisError

        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incrby(REDIS_PREFIX + name, amount)
                pipe.expire(REDIS_PREFIX + name, ttl)
                value, _ = await pipe.execute()
            return int(value)
        except RedisError as exc:
            raise NetworkError(f"rate limits (redis): {type(exc).__name__}") from exc

    async def get(self, name: str) -> int:
        from redis.exceptions import RedisError

        try:
            value = await self._redis.get(REDIS_PREFIX + name)
        except RedisError as exc:
            raise NetworkError(f"rate limits (redis): {type(exc).__name__}") from exc
        return int(value or 0)

    async def close(self) -> None:
        await self._redis.aclose()


class RateLimiter:
    """The node's limits: ``default`` for every caller, ``per_key`` by key hash."""

    def __init__(
        self,
        default: Limits,
        per_key: Mapping[str, Limits],
        counter: Counter,
        clock: Callable[[], float],
    ) -> None:
        self._default = default
        self._per_key = dict(per_key)
        self._counter = counter
        self._clock = clock

    def limits(self, caller: str) -> Limits:
        return self._per_key.get(caller, self._default)

    def _window(self) -> tuple[int, float]:
        now = self._clock()
        window = int(now // WINDOW_SECONDS)
        return window, (window + 1) * WINDOW_SECONDS - now

    @staticmethod
    def _names(caller: str, window: int) -> tuple[str, str]:
        who = caller[:16]
        return f"r:{who}:{window}", f"t:{who}:{window}"

    async def admit(self, caller: str) -> dict[str, str]:
        """Admit one chat request of ``caller``: the response headers, or a 429."""
        limits = self.limits(caller)
        if not limits.enabled:
            return {}
        window, reset = self._window()
        requests_name, tokens_name = self._names(caller, window)
        ttl = WINDOW_SECONDS * 2
        tokens = await self._counter.get(tokens_name) if limits.tokens_per_minute else 0
        over_tokens = bool(limits.tokens_per_minute) and tokens >= limits.tokens_per_minute
        requests = 0
        if not over_tokens:
            requests = await self._counter.add(requests_name, 1, ttl)
        headers = _headers(limits, requests, tokens, reset)
        if over_tokens or (limits.requests_per_minute and requests > limits.requests_per_minute):
            what = "tokens" if over_tokens else "requests"
            retry = max(1, math.ceil(reset))
            raise HTTPError(
                429,
                f"Rate limit reached for {what} per minute; retry in {retry} s",
                code="rate_limited",
                type=RATE_LIMIT,
                headers={**headers, "Retry-After": str(retry)},
            )
        return headers

    async def spend(self, caller: str, tokens: int) -> None:
        """Count the tokens of an answer that has ended."""
        limits = self.limits(caller)
        if limits.tokens_per_minute and tokens > 0:
            window, _ = self._window()
            await self._counter.add(self._names(caller, window)[1], tokens, WINDOW_SECONDS * 2)


def _headers(limits: Limits, requests: int, tokens: int, reset: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    reset_text = f"{max(1, math.ceil(reset))}s"
    if limits.requests_per_minute:
        headers["x-ratelimit-limit-requests"] = str(limits.requests_per_minute)
        headers["x-ratelimit-remaining-requests"] = str(
            max(0, limits.requests_per_minute - requests)
        )
        headers["x-ratelimit-reset-requests"] = reset_text
    if limits.tokens_per_minute:
        headers["x-ratelimit-limit-tokens"] = str(limits.tokens_per_minute)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, limits.tokens_per_minute - tokens))
        headers["x-ratelimit-reset-tokens"] = reset_text
    return headers


async def spend_later(limiter: RateLimiter, caller: str, usage: Mapping[str, Any] | None) -> None:
    """Count an answer's tokens (prompt + completion) without failing the answer."""
    if not usage:
        return
    total = sum(
        v for k in ("prompt_tokens", "completion_tokens") if isinstance(v := usage.get(k), int)
    )
    try:
        await asyncio.wait_for(limiter.spend(caller, total), 5.0)
    except (NetworkError, TimeoutError) as exc:
        # The answer was given; a counter that cannot count under-counts.
        log.warning("rate limits: tokens not counted: %s", type(exc).__name__)
