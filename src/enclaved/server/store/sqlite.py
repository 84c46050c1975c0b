"""The default signature store: one SQLite file, survives restarts.

SQLite calls block, so every one runs on a single dedicated worker thread
(one connection, used only from that thread): the event loop never waits on
the disk, and the one writer never contends with itself. The database uses
WAL with ``synchronous=NORMAL``: a committed signature survives a crash of
the process (not necessarily a power loss right after it), and readers never
block the writer.

Entries older than ``ttl_seconds`` are treated as absent and pruned at open
and every :data:`PRUNE_EVERY` puts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from ..signing import SignatureRecord

T = TypeVar("T")

PRUNE_EVERY = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signatures (
    request_id TEXT PRIMARY KEY,
    stored_at  REAL NOT NULL,
    record     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS signatures_stored_at ON signatures (stored_at);
"""


class SqliteStore:
    def __init__(
        self,
        path: Path | str,
        *,
        ttl_seconds: float | None = 7 * 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._ttl = ttl_seconds
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enclaved-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._puts = 0

    # -- runs on the worker thread only ----------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
            self._prune()
        return self._conn

    def _prune(self) -> None:
        if self._ttl is not None and self._conn is not None:
            self._conn.execute(
                "DELETE FROM signatures WHERE stored_at < ?", (self._clock() - self._ttl,)
            )

    def _put(self, record: SignatureRecord) -> None:
        db = self._db()
        db.execute(
            "INSERT OR REPLACE INTO signatures (request_id, stored_at, record) VALUES (?, ?, ?)",
            (record.request_id, self._clock(), record.to_json().decode()),
        )
        self._puts += 1
        if self._puts % PRUNE_EVERY == 0:
            self._prune()

    def _get(self, request_id: str) -> SignatureRecord | None:
        row = (
            self._db()
            .execute("SELECT stored_at, record FROM signatures WHERE request_id = ?", (request_id,))
            .fetchone()
        )
        if row is None:
            return None
        stored_at, text = row
        if self._ttl is not None and self._clock() - stored_at >= self._ttl:
            return None
        try:
            return SignatureRecord.from_json(text)
        except (ValueError, KeyError, TypeError):  # a corrupt row is an absent row
            return None

    def _delete(self, request_id: str) -> None:
        self._db().execute("DELETE FROM signatures WHERE request_id = ?", (request_id,))

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the async interface -----------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def put(self, record: SignatureRecord) -> None:
        await self._run(self._put, record)

    async def get(self, request_id: str) -> SignatureRecord | None:
        return await self._run(self._get, request_id)

    async def delete(self, request_id: str) -> None:
        await self._run(self._delete, request_id)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)
