"""The simulated TEE as an :class:`~enclaved.evidence.base.EvidenceSource`.

Development only. Wraps :class:`enclaved.evidence.simulated.SimulatedTdx`,
which signs TDX-shaped quotes with a development key under a development
root CA kept in ``data_dir`` (``dev-root-ca.pem``). A quote from it proves
nothing about hardware: the verifier accepts it only under
``Policy.development(root)``, which says so every time.

No GPUs, so no NVIDIA evidence; no event log. Intel-format collateral
(TCB info, QE identity, CRLs) signed under the same development root is
made here, so the node's own verifier runs every collateral check rather
than skipping them; it is made once and renewed daily (signing it costs
about a millisecond).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from .. import __version__


class SimulatedEvidence:
    tee_hardware = "simulated"

    #: Renew the development collateral when it is this old.
    COLLATERAL_MAX_AGE = dt.timedelta(days=1)

    def __init__(self, tdx: Any) -> None:
        self._tdx = tdx
        self._collateral: tuple[dt.datetime, Any] | None = None
        root = tdx.root_pem
        self.trust_root_pem: bytes | None = root.encode() if isinstance(root, str) else bytes(root)

    @classmethod
    def load_or_create(cls, data_dir: Path | str, *, now: float | None = None) -> SimulatedEvidence:
        """The simulated TEE whose development root lives in ``data_dir``.

        ``now`` (seconds since the epoch) dates this process's certificates;
        tests inject it with the node's clock.
        """
        from .simulated import SimulatedTdx

        when = None if now is None else dt.datetime.fromtimestamp(now, tz=dt.UTC)
        return cls(SimulatedTdx.load_or_create(Path(data_dir), now=when))

    @property
    def root_path(self) -> Path:
        """Where the development root CA lives (to hand to ``enclaved verify --dev-root``)."""
        return Path(self._tdx.root_path)

    async def quote(self, report_data: bytes) -> bytes:
        # Signing one quote is a single ECDSA signature: cheap enough for the loop.
        return bytes(self._tdx.quote(report_data))

    async def nvidia_payload(self, nonce: bytes) -> str | None:
        return None

    def event_log(self) -> list[dict[str, Any]]:
        return []

    def info(self) -> dict[str, Any]:
        return {
            "app_name": "enclaved",
            "app_version": __version__,
            "tee_mode": "simulated",
            "warning": "SIMULATED TEE: development only, proves nothing about hardware",
        }

    def collateral(self, now: dt.datetime) -> Any:
        cached = self._collateral
        if cached is None or not (cached[0] <= now < cached[0] + self.COLLATERAL_MAX_AGE):
            cached = (now, self._tdx.collateral(now))
            self._collateral = cached
        return cached[1]
