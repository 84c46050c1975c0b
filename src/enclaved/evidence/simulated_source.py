"""The simulated TEE as an :class:`~enclaved.evidence.base.EvidenceSource`.

Development only. Wraps :class:`enclaved.evidence.simulated.SimulatedTdx`,
which signs TDX-shaped quotes with a development key under a development
root CA kept in ``data_dir`` (``dev-root-ca.pem``). A quote from it proves
nothing about hardware: the verifier accepts it only under
``Policy.development(root)``, which says so every time.

No GPUs, so no NVIDIA evidence. The event log, the app compose document
and ``info`` come from a
:class:`~enclaved.evidence.simulated_deployment.SimulatedDeployment` of the
served model ids: simulated boot events and dstack-style runtime events
whose replay gives the quote's RTMR0-3, a compose hash bound to RTMR3 and
MRCONFIGID, and an ``info`` shaped like production's (led by ``tee_mode:
"simulated"`` and a warning). Every quote is signed over the RTMRs and
MRCONFIGID of that deployment, so the verifier's event-log and compose
checks run and pass, as they must on hardware.

Intel-format collateral (TCB info, QE identity, CRLs) signed under the same
development root is made here, so the node's own verifier runs every
collateral check rather than skipping them; it is made once and renewed
daily (signing it costs about a millisecond).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .simulated_deployment import SimulatedDeployment


class SimulatedEvidence:
    """Evidence from :class:`~enclaved.evidence.simulated.SimulatedTdx` (``tdx``)
    for ``deployment`` (default: no models)."""

    tee_hardware = "simulated"

    #: Renew the development collateral when it is this old.
    COLLATERAL_MAX_AGE = dt.timedelta(days=1)

    def __init__(self, tdx: Any, deployment: SimulatedDeployment | None = None) -> None:
        self._tdx = tdx
        self.deployment = deployment if deployment is not None else SimulatedDeployment()
        #: The TD values every quote carries: the TEE's, with the RTMRs and
        #: MRCONFIGID this deployment's event log gives.
        self.td = tdx.td.running(self.deployment)
        self._collateral: tuple[dt.datetime, Any] | None = None
        root = tdx.root_pem
        self.trust_root_pem: bytes | None = root.encode() if isinstance(root, str) else bytes(root)

    @classmethod
    def load_or_create(
        cls,
        data_dir: Path | str,
        *,
        now: float | None = None,
        models: Iterable[str] = (),
        provenance: Mapping[str, str] | None = None,
    ) -> SimulatedEvidence:
        """The simulated TEE whose development root lives in ``data_dir``.

        ``now`` (seconds since the epoch) dates this process's certificates;
        tests inject it with the node's clock. ``models`` (the served model
        ids) go into the simulated app compose document, and so into the
        compose hash, RTMR3 and MRCONFIGID, and so does ``provenance`` (the
        node's ``[aci]`` source provenance) when given.
        """
        from .simulated import SimulatedTdx

        when = None if now is None else dt.datetime.fromtimestamp(now, tz=dt.UTC)
        return cls(
            SimulatedTdx.load_or_create(Path(data_dir), now=when),
            SimulatedDeployment(
                models=tuple(models), provenance=tuple(sorted((provenance or {}).items()))
            ),
        )

    @property
    def root_path(self) -> Path:
        """Where the development root CA lives (to hand to ``enclaved verify --dev-root``)."""
        return Path(self._tdx.root_path)

    async def quote(self, report_data: bytes) -> bytes:
        # Signing one quote is a single ECDSA signature: cheap enough for the loop.
        return bytes(self._tdx.quote(report_data, td=self.td))

    async def nvidia_payload(self, nonce: bytes) -> str | None:
        return None

    def event_log(self) -> list[dict[str, Any]]:
        return self.deployment.event_log_json()

    def info(self) -> dict[str, Any]:
        return self.deployment.info(mrtd=bytes(self.td.mrtd))

    def collateral(self, now: dt.datetime) -> Any:
        cached = self._collateral
        if cached is None or not (cached[0] <= now < cached[0] + self.COLLATERAL_MAX_AGE):
            cached = (now, self._tdx.collateral(now))
            self._collateral = cached
        return cached[1]
