"""The production captures in ``shared/testdata/captures``, for the attestation tests.

Each capture: the attestation report as served, the nonce that was sent, the
capture time (verify at it: the certificates and collateral have expired
since), and the ``responses/`` folder with Intel's collateral and NVIDIA's
NRAS answer recorded at the same moment.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from conftest import CAPTURES

# TDX quote v4: a 48-byte header, then the TD report. Offsets into the quote.
TD = 48
TD_ATTRIBUTES = TD + 120
XFAM = TD + 128
MRTD = TD + 136
MRCONFIGID = TD + 184
RTMR0 = TD + 328
RTMR3 = TD + 472
REPORT_DATA = TD + 520
SIGNED_END = TD + 584


@dataclasses.dataclass(frozen=True)
class Capture:
    name: str
    folder: Path

    @property
    def responses(self) -> Path:
        return self.folder / "responses"

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.folder / "manifest.json").read_text())  # type: ignore[no-any-return]

    @property
    def nonce(self) -> bytes:
        return bytes.fromhex(self.manifest["nonce_hex"])

    @property
    def at(self) -> datetime:
        return datetime.fromisoformat(self.manifest["captured_at"])

    @property
    def report_path(self) -> Path:
        return next(self.responses.glob("0001_*.body"))

    def doc(self) -> dict[str, Any]:
        """A fresh copy of the report document (mutate it freely)."""
        return json.loads(self.report_path.read_bytes())  # type: ignore[no-any-return]


VENICE = Capture("venice", next(CAPTURES.glob("venice_*")))
NEAR = Capture("neardirect", next(CAPTURES.glob("neardirect_*")))
ALL = [VENICE, NEAR]


def flip(hex_text: str, offset: int, mask: int = 0x01) -> str:
    """``hex_text`` with the byte at ``offset`` XORed with ``mask``."""
    raw = bytearray(bytes.fromhex(hex_text))
    raw[offset] ^= mask
    return raw.hex()


def simulated_report(tmp_path: Path, *, debug: bool = False) -> tuple[dict[str, Any], bytes, str]:
    """A report from enclaved's simulated TEE: (document, nonce, development root PEM).

    Its quote is validly signed under a development root created in
    ``tmp_path``; ``debug=True`` signs one with TD_ATTRIBUTES.DEBUG set. It
    carries the default simulated deployment's event log and ``info``, as
    ``enclaved serve`` does.
    """
    from enclaved.crypto import KeyPair
    from enclaved.evidence.simulated import SimulatedTd, SimulatedTdx
    from enclaved.evidence.simulated_deployment import SimulatedDeployment

    attrs = (1 << 28) | (1 if debug else 0)
    tee = SimulatedTdx.load_or_create(
        tmp_path, td=SimulatedTd(td_attributes=attrs.to_bytes(8, "little"))
    )
    key = KeyPair.generate()
    nonce = bytes(range(32))
    report_data = bytes.fromhex(key.address[2:]) + bytes(12) + nonce
    doc = {
        "intel_quote": tee.quote(report_data).hex(),
        "signing_key": key.public_key_hex,
        "signing_address": key.address,
        "signing_algo": "ecdsa",
        "nonce": nonce.hex(),
        "nonce_source": "client",
        "tee_hardware": "simulated",
        "event_log": SimulatedDeployment().event_log_json(),
        "info": SimulatedDeployment().info(tee.td.mrtd),
    }
    return doc, nonce, tee.root_pem.decode()
