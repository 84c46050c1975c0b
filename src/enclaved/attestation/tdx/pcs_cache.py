"""Intel PCS collateral on disk: one JSON file per (FMSPC, PCK CA).

Each file holds when it was fetched and the collateral as Intel served it
(:meth:`.collateral.Collateral.to_json`). Whether an entry is still usable
is :class:`~.pcs.PcsCollateral`'s decision; this module only reads and
writes, atomically (write, then rename), and treats an unreadable file as
absent.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from pathlib import Path

from ...errors import EvidenceParseError
from .collateral import Collateral, _parse_time

__all__ = ["DiskCache"]

logger = logging.getLogger("enclaved.attestation.tdx.collateral")


class DiskCache:
    """Collateral files under ``directory``, named ``tdx-collateral-<fmspc>-<ca>.json``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, fmspc_hex: str, ca: str) -> Path:
        return self.directory / f"tdx-collateral-{fmspc_hex}-{ca}.json"

    def load(self, fmspc_hex: str, ca: str) -> tuple[dt.datetime, Collateral] | None:
        """(fetched at, collateral), or ``None`` when there is no readable entry."""
        path = self.path(fmspc_hex, ca)
        if not path.exists():
            return None
        try:
            d = json.loads(path.read_text())
            fetched_at = _parse_time(d["fetched_at"], "cache fetched_at")
            return fetched_at, Collateral.from_json(d["collateral"])
        except (OSError, ValueError, KeyError, TypeError, EvidenceParseError):
            logger.warning("ignoring unreadable collateral cache %s", path)
            return None

    def store(self, fmspc_hex: str, ca: str, fetched_at: dt.datetime, c: Collateral) -> None:
        path = self.path(fmspc_hex, ca)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = json.dumps({"fetched_at": fetched_at.isoformat(), "collateral": c.to_json()})
        # Write-then-rename: a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(doc)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
