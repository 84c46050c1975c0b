"""Where response signatures live: SQLite by default, Redis for replicas.

>>> from enclaved.server.store import SqliteStore, RedisStore, MemoryStore, open_store
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import SignatureStore
from .memory import MemoryStore
from .sqlite import SqliteStore

if TYPE_CHECKING:  # pragma: no cover
    from ..config import ServerConfig
    from .redis import RedisStore


def open_store(config: ServerConfig, *, clock: Callable[[], float] | None = None) -> SignatureStore:
    """The store the configuration names (``[signatures]``)."""
    import time

    sig = config.signatures
    if sig.kind == "redis":
        from .redis import RedisStore

        assert sig.url is not None
        return RedisStore(sig.url, sig.ttl_seconds)
    return SqliteStore(
        config.signature_db_path, ttl_seconds=sig.ttl_seconds, clock=clock or time.time
    )


def __getattr__(name: str) -> object:
    # Redis is imported only by those who use it.
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(name)


__all__ = ["MemoryStore", "RedisStore", "SignatureStore", "SqliteStore", "open_store"]
