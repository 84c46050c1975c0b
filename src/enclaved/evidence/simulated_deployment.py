"""What the simulated TD "booted" and "runs": its event log, app compose and ``info``.

NOT A TEE. Nothing here was measured by hardware; every value is a
development value computed in this process, and every label says so. The
point is that a report from the simulated TEE has the *shape* of a
production (dstack) report, so that the verifier's event-log and
compose-hash checks - ``eventlog.replay``, ``eventlog.rtmr3_digests``,
``measurements.compose_hash``, ``measurements.mrconfigid``, ``report.info``
- run against it exactly as against hardware (and pass), and a developer
sees what production evidence looks like.

How the values are made (deterministic: no randomness, no clock; the same
enclaved version and model ids give the same bytes):

1. **Boot events (RTMR0-2)**, standing in for firmware (RTMR0), boot loader
   and kernel (RTMR1), kernel command line and initrd (RTMR2). TCG event
   types as real firmware uses them; each payload is ASCII text saying it is
   a simulated development value (separators are the usual four zero
   bytes); digest = SHA-384(payload). The verifier treats boot events as
   opaque digests, as it does on hardware.
2. **The app compose document** (:func:`app_compose`): JSON describing the
   development deployment - ``name`` :data:`APP_NAME`, the enclaved version,
   the served model ids (sorted), ``tee_hardware: "simulated"``. The
   compose hash is SHA-256 of that text (UTF-8), as in dstack.
3. **Runtime events (RTMR3)**, in the order the dstack guest agent extends
   them (see the production captures): ``system-preparing``, ``app-id``,
   ``compose-hash``, ``instance-id``, ``boot-mr-done``, ``os-image-hash``,
   ``key-provider``, ``system-ready``; event type ``0x08000001`` and
   digest = SHA-384(event_type LE32 || ":" || name || ":" || payload).
4. **RTMR0-3** = the replay of 1 and 3 (``rtmr = SHA-384(rtmr || digest)``
   from zeros). They are computed from the log, never stated separately,
   so the quote and the log cannot drift apart.
5. **MRCONFIGID** = ``0x01 || compose hash || 15 zero bytes`` (what a dstack
   host sets when it creates the TD).
6. **info** (:meth:`SimulatedDeployment.info`): production's fields
   (``app_name``, ``app_id``, ``compose_hash``, ``device_id``,
   ``instance_id``, ``os_image_hash``, ``key_provider_info``,
   ``vm_config``, ``tcb_info{mrtd, rtmr0..3, compose_hash, device_id,
   os_image_hash, app_compose, event_log}``), led by ``tee_mode:
   "simulated"`` and a ``warning``.

Development identities (20 or 32 bytes of SHA-256 over a label):

=================  =================================================================
app-id             SHA-256(b"enclaved simulated TDX: app-id")[:20]
instance-id        SHA-256(b"enclaved simulated TDX: instance-id")[:20]
os-image-hash      SHA-256(b"enclaved simulated TDX: os-image")
device_id          SHA-256(b"enclaved simulated TDX: device-id")
key-provider       ``{"name":"none","id":"","note":"simulated TEE: no KMS"}``
=================  =================================================================

What this does NOT do: prove anything. The log replays to the quote's
RTMRs because the same process wrote both; a verifier trusts the quote (and
so the log) only under the development root, which ``Policy.development``
says, loudly, proves nothing about hardware.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .. import __version__
from ..attestation.eventlog import (
    DSTACK_RUNTIME_EVENT_TYPE,
    EventLogEntry,
    replay,
    runtime_event_digest,
)
from ..attestation.measurements import expected_mrconfigid

__all__ = [
    "APP_ID",
    "APP_NAME",
    "DEVICE_ID",
    "INSTANCE_ID",
    "OS_IMAGE_HASH",
    "SimulatedDeployment",
    "app_compose",
]

#: The app (and compose document) name of the development deployment.
APP_NAME = "enclaved-simulated"
#: What ``info.warning`` and the compose document say.
WARNING = "SIMULATED TEE: development only, proves nothing about hardware"


def _label(label: str) -> bytes:
    return hashlib.sha256(f"enclaved simulated TDX: {label}".encode()).digest()


APP_ID = _label("app-id")[:20]
INSTANCE_ID = _label("instance-id")[:20]
OS_IMAGE_HASH = _label("os-image")
DEVICE_ID = _label("device-id")
KEY_PROVIDER = b'{"name":"none","id":"","note":"simulated TEE: no KMS"}'

# TCG event types (TCG PC Client Platform Firmware Profile; UEFI events).
EV_SEPARATOR = 0x00000004
EV_EVENT_TAG = 0x00000006
EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_ACTION = 0x80000007

_SEPARATOR = bytes(4)

#: Step 1: ``(imr, event type, payload)``; digest = SHA-384(payload).
BOOT_EVENTS: tuple[tuple[int, int, bytes], ...] = (
    (0, EV_EFI_VARIABLE_DRIVER_CONFIG,
     b"enclaved simulated firmware: Secure Boot configuration (development value)"),
    (0, EV_PLATFORM_CONFIG_FLAGS,
     b"enclaved simulated firmware: ACPI tables (development value)"),
    (0, EV_SEPARATOR, _SEPARATOR),
    (1, EV_EFI_BOOT_SERVICES_APPLICATION,
     b"enclaved simulated boot loader and kernel image (development value)"),
    (1, EV_EFI_ACTION, b"enclaved simulated firmware: Exit Boot Services (development value)"),
    (1, EV_SEPARATOR, _SEPARATOR),
    (2, EV_EVENT_TAG, b"enclaved simulated kernel command line (development value)"),
    (2, EV_EVENT_TAG, b"enclaved simulated initrd (development value)"),
)  # fmt: skip


def app_compose(
    models: Iterable[str],
    version: str = __version__,
    provenance: Mapping[str, str] | None = None,
) -> str:
    """Step 2: the app compose document (JSON text) of a development deployment.

    ``provenance`` (the node's ``[aci]`` source provenance, the fields that are
    set) is named in the document as a real compose names its image, so that
    it is measured; absent, the document is what it always was."""
    doc: dict[str, Any] = {
        "manifest_version": 2,
        "name": APP_NAME,
        "runner": "enclaved serve",
        "tee_hardware": "simulated",
        "warning": WARNING,
        "enclaved_version": version,
        "models": sorted(set(models)),
        "kms_enabled": False,
        "gateway_enabled": False,
        "local_key_provider_enabled": False,
        "key_provider_id": "",
        "no_instance_id": False,
    }
    if provenance:
        doc["source_provenance"] = dict(provenance)
    return json.dumps(doc, indent=4)


def _runtime(name: str, payload: bytes) -> EventLogEntry:
    digest = runtime_event_digest(DSTACK_RUNTIME_EVENT_TYPE, name, payload)
    return EventLogEntry(3, DSTACK_RUNTIME_EVENT_TYPE, digest, name, payload)


@dataclasses.dataclass(frozen=True)
class SimulatedDeployment:
    """The simulated TD's event log, compose document and ``info`` for a set of models.

    Give the served model ids and the enclaved version; everything else is
    derived (see the module docstring). Frozen; cheap to build (a few dozen
    hashes).
    """

    models: tuple[str, ...] = ()
    version: str = __version__
    #: The stated source provenance the compose names (``[aci]``); empty: none.
    provenance: tuple[tuple[str, str], ...] = ()
    #: Step 2.
    app_compose: str = dataclasses.field(init=False)
    compose_hash: bytes = dataclasses.field(init=False)
    #: Steps 1 and 3, in extension order.
    event_log: tuple[EventLogEntry, ...] = dataclasses.field(init=False)
    #: Step 4.
    rtmrs: tuple[bytes, bytes, bytes, bytes] = dataclasses.field(init=False)
    #: Step 5.
    mrconfigid: bytes = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        models = tuple(sorted(set(self.models)))
        compose = app_compose(models, self.version, dict(self.provenance))
        compose_hash = hashlib.sha256(compose.encode("utf-8")).digest()
        boot = tuple(
            EventLogEntry(imr, etype, hashlib.sha384(payload).digest(), "", payload)
            for imr, etype, payload in BOOT_EVENTS
        )
        runtime = (
            _runtime("system-preparing", b""),
            _runtime("app-id", APP_ID),
            _runtime("compose-hash", compose_hash),
            _runtime("instance-id", INSTANCE_ID),
            _runtime("boot-mr-done", b""),
            _runtime("os-image-hash", OS_IMAGE_HASH),
            _runtime("key-provider", KEY_PROVIDER),
            _runtime("system-ready", b""),
        )
        log = boot + runtime
        for name, value in (
            ("models", models),
            ("app_compose", compose),
            ("compose_hash", compose_hash),
            ("event_log", log),
            ("rtmrs", replay(log)),
            ("mrconfigid", expected_mrconfigid(compose_hash)),
        ):
            object.__setattr__(self, name, value)

    def event_log_json(self) -> list[dict[str, Any]]:
        """The event log as served: a fresh list of ``{digest, event, event_payload,
        event_type, imr}`` (hex strings), in production's key order."""
        return [
            {
                "digest": e.digest.hex(),
                "event": e.event,
                "event_payload": e.event_payload.hex(),
                "event_type": e.event_type,
                "imr": e.imr,
            }
            for e in self.event_log
        ]

    def info(self, mrtd: bytes) -> dict[str, Any]:
        """Step 6: the report's ``info``, for a TD whose MRTD is ``mrtd``."""
        rtmrs = {f"rtmr{i}": r.hex() for i, r in enumerate(self.rtmrs)}
        vm_config = {
            "spec_version": 1,
            "os_image_hash": OS_IMAGE_HASH.hex(),
            "image": APP_NAME,
            "num_gpus": 0,
        }
        return {
            "tee_mode": "simulated",
            "warning": WARNING,
            "app_name": APP_NAME,
            "app_version": self.version,
            "app_id": APP_ID.hex(),
            "compose_hash": self.compose_hash.hex(),
            "device_id": DEVICE_ID.hex(),
            "instance_id": INSTANCE_ID.hex(),
            "os_image_hash": OS_IMAGE_HASH.hex(),
            "key_provider_info": KEY_PROVIDER.decode(),
            "vm_config": json.dumps(vm_config, separators=(",", ":")),
            "tcb_info": {
                "mrtd": mrtd.hex(),
                **rtmrs,
                "compose_hash": self.compose_hash.hex(),
                "device_id": DEVICE_ID.hex(),
                "os_image_hash": OS_IMAGE_HASH.hex(),
                "app_compose": self.app_compose,
                "event_log": self.event_log_json(),
            },
        }
