"""Signature stores: SQLite (default, survives restarts), memory, Redis (replicas)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from enclaved.crypto import KeyPair
from enclaved.server.signing import ResponseSigner, SignatureRecord
from enclaved.server.store import MemoryStore, SignatureStore, SqliteStore

REDIS_URL = os.environ.get("ENCLAVED_TEST_REDIS_URL")


def _record(request_id: str = "chatcmpl-abc", model: str = "tee-x") -> SignatureRecord:
    return ResponseSigner(KeyPair.generate()).sign(
        request_id=request_id, model=model, request_body=b"{}", response_sha256="00" * 32
    )


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_record_json_round_trip() -> None:
    r = _record()
    assert SignatureRecord.from_json(r.to_json()) == r
    assert list(r.to_dict()) == [
        "text",
        "signature",
        "signing_address",
        "signing_algo",
        "request_id",
        "model",
    ]


async def _contract(store: SignatureStore) -> None:
    """What every store must do."""
    assert isinstance(store, SignatureStore)
    assert await store.get("chatcmpl-missing") is None
    a, b = _record("chatcmpl-a"), _record("chatcmpl-b", "e2ee-y")
    await store.put(a)
    await store.put(b)
    assert await store.get("chatcmpl-a") == a
    assert await store.get("chatcmpl-b") == b
    await store.delete("chatcmpl-a")
    assert await store.get("chatcmpl-a") is None
    assert await store.get("chatcmpl-b") == b
    await store.delete("chatcmpl-never")  # deleting nothing is fine


def test_memory_store() -> None:
    asyncio.run(_contract(MemoryStore()))


def test_sqlite_store(tmp_path: Path) -> None:
    async def run() -> None:
        store = SqliteStore(tmp_path / "deep" / "sigs.db")  # parent folders are made
        await _contract(store)
        await store.close()

    asyncio.run(run())


def test_sqlite_survives_reopen_and_uses_wal(tmp_path: Path) -> None:
    db = tmp_path / "sigs.db"
    rec = _record()

    async def write() -> None:
        s = SqliteStore(db)
        await s.put(rec)
        await s.close()

    async def read() -> SignatureRecord | None:
        s = SqliteStore(db)
        try:
            return await s.get(rec.request_id)
        finally:
            await s.close()

    asyncio.run(write())
    assert asyncio.run(read()) == rec
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_runs_off_the_event_loop(tmp_path: Path) -> None:
    seen: list[str] = []
    store = SqliteStore(tmp_path / "s.db")
    original = store._put

    def spy(record: SignatureRecord) -> None:
        seen.append(threading.current_thread().name)
        original(record)

    store._put = spy  # type: ignore[method-assign]

    async def run() -> None:
        await store.put(_record())
        await store.close()

    asyncio.run(run())
    assert (
        seen and seen[0].startswith("enclaved-sqlite") and seen[0] != threading.main_thread().name
    )


@pytest.mark.parametrize("factory", ["memory", "sqlite"])
def test_ttl(tmp_path: Path, factory: str) -> None:
    clock = Clock()
    store: SignatureStore = (
        MemoryStore(ttl_seconds=60, clock=clock)
        if factory == "memory"
        else SqliteStore(tmp_path / "t.db", ttl_seconds=60, clock=clock)
    )

    async def run() -> None:
        rec = _record()
        await store.put(rec)
        clock.t += 59
        assert await store.get(rec.request_id) == rec
        clock.t += 1
        assert await store.get(rec.request_id) is None
        await store.close()

    asyncio.run(run())


def test_sqlite_prunes_expired_rows_on_open(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    clock = Clock()

    async def run() -> None:
        s = SqliteStore(db, ttl_seconds=10, clock=clock)
        await s.put(_record("chatcmpl-old"))
        await s.close()
        clock.t += 100
        s = SqliteStore(db, ttl_seconds=10, clock=clock)
        await s.put(_record("chatcmpl-new"))
        await s.close()

    asyncio.run(run())
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT request_id FROM signatures")]
    assert ids == ["chatcmpl-new"]


def test_sqlite_corrupt_row_is_absent(tmp_path: Path) -> None:
    db = tmp_path / "c.db"

    async def put() -> None:
        s = SqliteStore(db)
        await s.put(_record("chatcmpl-x"))
        await s.close()

    asyncio.run(put())
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE signatures SET record = '{not json'")

    async def get() -> SignatureRecord | None:
        s = SqliteStore(db)
        try:
            return await s.get("chatcmpl-x")
        finally:
            await s.close()

    assert asyncio.run(get()) is None


@pytest.mark.redis
@pytest.mark.skipif(
    not REDIS_URL, reason="set ENCLAVED_TEST_REDIS_URL to a Redis server to run the Redis tests"
)
def test_redis_store() -> None:
    from enclaved.server.store import RedisStore

    assert REDIS_URL is not None

    async def run() -> None:
        store = RedisStore(REDIS_URL, ttl=60)
        await _contract(store)
        # A second client (another replica) sees the same records.
        rec = _record("chatcmpl-shared-" + os.urandom(8).hex())
        await store.put(rec)
        other = RedisStore(REDIS_URL, ttl=60)
        assert await other.get(rec.request_id) == rec
        ttl = await other._redis.ttl("enclaved:sig:" + rec.request_id)
        assert 0 < ttl <= 60
        await other.close()
        await store.close()

    asyncio.run(run())


@pytest.mark.redis
def test_redis_unreachable_is_a_network_error(unused_port: int) -> None:
    from enclaved.errors import NetworkError
    from enclaved.server.store import RedisStore

    async def run() -> None:
        store = RedisStore(f"redis://127.0.0.1:{unused_port}/0", ttl=60)
        with pytest.raises(NetworkError):
            await store.get("chatcmpl-x")
        await store.close()

    asyncio.run(run())
