"""TDX quotes from the Linux kernel's configfs-tsm interface: a plain TDX VM without dstack.

The kernel's TSM report interface (``Documentation/ABI/testing/configfs-tsm``)
lives under ``/sys/kernel/config/tsm/report``. One quote:

1. create a report entry (a directory) under the root;
2. check its ``provider`` is ``tdx_guest``;
3. write the 64 bytes of REPORTDATA to ``inblob``;
4. read ``generation``, read ``outblob`` (the TDX quote, made by the kernel
   on that read), read ``generation`` again: if it changed, another writer
   raced us on the entry and the quote may be over its REPORTDATA - retry;
5. remove the entry.

Access is serialized within the process. The file operations go through
:class:`Filesystem` so that a test can stand in for configfs (a plain
directory cannot make quotes); the root is configurable for the same reason.

What this source does not give: an event log (a plain TDX VM keeps it in
the ACPI CCEL table, which is not read yet) and deployment facts (no
compose hash): a client's event-log and compose rows cannot pass against it,
and the strict policy refuses it. The dstack source (:mod:`.dstack`) is the
complete one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import threading
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError, NetworkError

DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")
PROVIDER = "tdx_guest"
#: Tries when another writer changes the entry between our write and read.
RETRIES = 3


class Filesystem(Protocol):
    def mkdir(self, path: Path) -> None: ...
    def rmdir(self, path: Path) -> None: ...
    def read(self, path: Path) -> bytes: ...
    def write(self, path: Path, data: bytes) -> None: ...


class RealFilesystem:
    def mkdir(self, path: Path) -> None:
        path.mkdir()

    def rmdir(self, path: Path) -> None:
        path.rmdir()

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def write(self, path: Path, data: bytes) -> None:
        with open(path, "wb", buffering=0) as f:  # one write(2): configfs wants the blob whole
            f.write(data)


class ConfigfsTsm:
    """Quotes through configfs-tsm at ``root`` (default :data:`DEFAULT_ROOT`)."""

    def __init__(self, root: Path = DEFAULT_ROOT, *, fs: Filesystem | None = None) -> None:
        self.root = Path(root)
        self._fs: Filesystem = fs or RealFilesystem()
        self._lock = threading.Lock()

    def check(self) -> None:
        """Refuse to start unless the root exists and a report entry's provider is TDX."""
        try:
            entry = self._new_entry()
        except OSError as exc:
            raise ConfigError(
                f"tee = configfs: no configfs-tsm report interface at {self.root} ({exc.strerror})"
            ) from None
        try:
            provider = self._fs.read(entry / "provider").decode(errors="replace").strip()
        finally:
            self._remove(entry)
        if provider != PROVIDER:
            raise ConfigError(f"tee = configfs: the TSM provider is {provider!r}, not {PROVIDER!r}")

    def quote(self, report_data: bytes) -> bytes:
        """A TDX quote over ``report_data`` (64 bytes). Blocking: call it off the loop."""
        if len(report_data) != 64:
            raise NetworkError("configfs-tsm: REPORTDATA is 64 bytes")
        with self._lock:
            for _ in range(RETRIES):
                try:
                    quote = self._try(report_data)
                except OSError as exc:
                    raise NetworkError(f"configfs-tsm: {type(exc).__name__}") from exc
                if quote is not None:
                    return quote
        raise NetworkError("configfs-tsm: another writer changed the report entry on every try")

    def _try(self, report_data: bytes) -> bytes | None:
        entry = self._new_entry()
        try:
            provider = self._fs.read(entry / "provider").decode(errors="replace").strip()
            if provider != PROVIDER:
                raise NetworkError(f"configfs-tsm: provider {provider!r}, not {PROVIDER!r}")
            self._fs.write(entry / "inblob", report_data)
            before = self._fs.read(entry / "generation").strip()
            quote = self._fs.read(entry / "outblob")
            after = self._fs.read(entry / "generation").strip()
            return quote if before == after else None
        finally:
            self._remove(entry)

    def _new_entry(self) -> Path:
        entry = self.root / f"enclaved-{os.getpid()}-{secrets.token_hex(4)}"
        self._fs.mkdir(entry)
        return entry

    def _remove(self, entry: Path) -> None:
        try:
            self._fs.rmdir(entry)
        except OSError:
            pass  # a leftover entry costs the kernel nothing; the next one has its own name


class ConfigfsEvidence:
    """Evidence of a plain TDX VM: quotes from configfs-tsm; no event log, no GPUs."""

    tee_hardware = "intel-tdx"

    def __init__(
        self,
        tsm: ConfigfsTsm,
        *,
        trust_root_pem: bytes | None = None,
        collateral: Any = None,
    ) -> None:
        self._tsm = tsm
        self.trust_root_pem = trust_root_pem  # tests only; production: Intel's root
        self._collateral = collateral

    async def quote(self, report_data: bytes) -> bytes:
        return await asyncio.to_thread(self._tsm.quote, report_data)

    async def nvidia_payload(self, nonce: bytes) -> str | None:
        return None

    def event_log(self) -> list[dict[str, Any]]:
        return []

    def info(self) -> dict[str, Any]:
        return {"tee_mode": "configfs-tsm", "node_key_provider": "generated"}

    def collateral(self, now: dt.datetime) -> Any | None:
        return self._collateral(now) if self._collateral is not None else None
