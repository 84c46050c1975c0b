"""Cross-checks between the quote, the replayed event log and the document's ``info``.

dstack-style deployments describe the application by its *compose hash*,
SHA-256 of the app compose document (``info.tcb_info.app_compose``). It is
bound to the TD twice:

1. the guest agent extends a ``compose-hash`` event into RTMR3 (trusted once
   :mod:`.eventlog` replayed the log against the quote), and
2. the host sets MRCONFIGID, a signed field of the quote, to
   ``0x01 || compose_hash (32 bytes) || 15 zero bytes`` when it creates the TD
   (seen in both production captures).

Check ids:

- ``measurements.compose_hash``: the RTMR3 compose-hash event equals what
  ``info`` claims (``info.compose_hash``, ``info.tcb_info.compose_hash``, and
  SHA-256 of ``info.tcb_info.app_compose``), so the compose document the
  server shows is the one that runs.
- ``measurements.mrconfigid``: MRCONFIGID = 0x01 || that compose hash || zeros.
- ``report.info``: every other measurement ``info`` states (``tcb_info.mrtd``,
  ``rtmr0-3``, ``os_image_hash``, ``app_id``, ``instance_id``) equals the
  quote or the replayed event. ``info`` is unauthenticated; a mismatch means
  the server misdescribes itself. Absent claims are not checked.

What is NOT checked here: whether the compose document is one you trust
(put its hash in ``Policy.compose_hash``), or what it contains.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .checks import Check, CheckId
from .eventlog import RuntimeFacts

#: MRCONFIGID layout in dstack: a type byte, the compose hash, zero padding.
MRCONFIGID_COMPOSE_PREFIX = b"\x01"


def expected_mrconfigid(compose_hash: bytes) -> bytes:
    """The MRCONFIGID a TD running ``compose_hash`` carries (48 bytes)."""
    return (MRCONFIGID_COMPOSE_PREFIX + compose_hash).ljust(48, b"\x00")


def _hex_claim(value: Any) -> bytes | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return bytes.fromhex(value[2:] if value[:2] in ("0x", "0X") else value)
    except ValueError:
        return b"<not hex: " + value.encode("utf-8", "replace")[:40] + b">"


def check_compose_hash(facts: RuntimeFacts | None, info: Mapping[str, Any]) -> Check:
    """``measurements.compose_hash``. Fails when RTMR3 holds more than one compose hash."""
    cid = CheckId.MEASUREMENTS_COMPOSE_HASH
    event = facts.compose_hash if facts is not None else None
    if event is None:
        return Check.skipped(cid, "no compose-hash event in RTMR3")
    if facts is not None and "compose-hash" in facts.repeated:
        # Which one would describe the app? Refuse to choose.
        return Check.failed(cid, "RTMR3 holds more than one compose-hash event")
    tcb = info.get("tcb_info") if isinstance(info.get("tcb_info"), Mapping) else {}
    assert isinstance(tcb, Mapping)
    claims: list[tuple[str, bytes | None]] = [
        ("info.compose_hash", _hex_claim(info.get("compose_hash"))),
        ("info.tcb_info.compose_hash", _hex_claim(tcb.get("compose_hash"))),
    ]
    app_compose = tcb.get("app_compose")
    if isinstance(app_compose, str):
        claims.append(
            (
                "sha256(info.tcb_info.app_compose)",
                hashlib.sha256(app_compose.encode("utf-8")).digest(),
            )
        )
    compared = [(name, value) for name, value in claims if value is not None]
    bad = [name for name, value in compared if not hmac.compare_digest(value, event)]
    if bad:
        return Check.failed(cid, f"compose-hash event {event.hex()} differs from {', '.join(bad)}")
    if not compared:
        return Check.passed(cid, f"compose-hash event {event.hex()} (info states none to compare)")
    return Check.passed(
        cid, f"compose-hash event {event.hex()} = {', '.join(n for n, _ in compared)}"
    )


def check_mrconfigid(facts: RuntimeFacts | None, mrconfigid: bytes) -> Check:
    """``measurements.mrconfigid``."""
    cid = CheckId.MEASUREMENTS_MRCONFIGID
    event = facts.compose_hash if facts is not None else None
    if event is None:
        return Check.skipped(cid, "no compose-hash event in RTMR3 to bind MRCONFIGID to")
    want = expected_mrconfigid(event)
    if not hmac.compare_digest(bytes(mrconfigid), want):
        return Check.failed(
            cid,
            f"MRCONFIGID is {bytes(mrconfigid).hex()}, "
            f"expected {want.hex()} (0x01 || compose hash)",
        )
    return Check.passed(cid, "MRCONFIGID = 0x01 || compose hash")


def check_info(
    info: Mapping[str, Any],
    *,
    quote_measurements: Mapping[str, bytes],
    facts: RuntimeFacts | None,
) -> Check:
    """``report.info``: the measurements ``info`` states agree with the evidence.

    ``quote_measurements`` maps ``mrtd``, ``rtmr0``..``rtmr3`` to the quote's
    values. Facts from the event log are compared only if ``facts`` is given
    (pass it only once the log has replayed).
    """
    cid = CheckId.REPORT_INFO
    tcb = info.get("tcb_info") if isinstance(info.get("tcb_info"), Mapping) else {}
    assert isinstance(tcb, Mapping)
    pairs: list[tuple[str, bytes | None, bytes | None]] = []
    for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"):
        pairs.append(
            (f"info.tcb_info.{name}", _hex_claim(tcb.get(name)), quote_measurements.get(name))
        )
    if facts is not None:
        for key, fact in (
            ("os_image_hash", facts.os_image_hash),
            ("app_id", facts.app_id),
            ("instance_id", facts.instance_id),
        ):
            for where in (f"info.{key}", f"info.tcb_info.{key}"):
                src = info if where.count(".") == 1 else tcb
                pairs.append((where, _hex_claim(src.get(key)), fact))
    compared = [(n, c, e) for n, c, e in pairs if c is not None and e is not None]
    bad = [n for n, c, e in compared if not hmac.compare_digest(c, e)]
    if bad:
        return Check.failed(cid, f"info misstates {', '.join(bad)}")
    if not compared:
        return Check.skipped(cid, "info states no measurements", enforced=False)
    return Check.passed(
        cid, f"{len(compared)} measurement(s) stated in info agree with the evidence"
    )


__all__ = ["check_compose_hash", "check_info", "check_mrconfigid", "expected_mrconfigid"]


# -- measuring a deployment before it runs (``enclaved measure``) --------------

#: The field of an app compose document that holds the docker-compose file,
#: and the field it follows in dstack's documents (all five captures).
COMPOSE_FILE_FIELD = "docker_compose_file"
_COMPOSE_FILE_AFTER = "runner"


def compose_hash(app_compose: bytes) -> bytes:
    """The compose hash of an app compose document: SHA-256 of its exact bytes.

    The hash is over the bytes the TD was given, so the document is hashed as
    it is, never re-serialized.
    """
    return hashlib.sha256(app_compose).digest()


def app_compose_document(docker_compose: str, settings: Mapping[str, Any]) -> bytes:
    """The app compose document dstack deploys for ``docker_compose`` with ``settings``.

    ``settings`` is the document without its ``docker_compose_file``
    (``manifest_version``, ``name``, ``runner``, ``kms_enabled``, ...), in
    the order the document lists them. The docker-compose text goes in
    verbatim after ``runner``, and the document is written the way dstack's
    tooling writes it (JSON, 4-space indent, UTF-8 unescaped): the form whose
    hash the production reports carry. Raises :class:`~enclaved.errors.ConfigError` for settings
    that cannot make a document.
    """
    if COMPOSE_FILE_FIELD in settings:
        raise ConfigError(f"the settings already hold a {COMPOSE_FILE_FIELD!r}")
    if _COMPOSE_FILE_AFTER not in settings:
        raise ConfigError(f"the settings have no {_COMPOSE_FILE_AFTER!r} (dstack: docker-compose)")
    doc: dict[str, Any] = {}
    for key, value in settings.items():
        doc[key] = value
        if key == _COMPOSE_FILE_AFTER:
            doc[COMPOSE_FILE_FIELD] = docker_compose
    return json.dumps(doc, indent=4, ensure_ascii=False).encode("utf-8")
