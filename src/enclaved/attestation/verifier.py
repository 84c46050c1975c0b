"""An attestation report in, a verdict out: the one verifier everything uses.

The client SDK, the CLI, the proxy and the server's own ``verified`` /
``server_verification`` all call :meth:`Verifier.verify`. It runs, in order:

1. the document: the echoed nonce (``report.nonce``) and the server's own
   ``verified`` claim (``report.verified_flag``, informational only);
2. TDX: parse the quote (:func:`.tdx.parse_quote`), then verify its
   signatures, its PCK chain to the policy's trust roots, and Intel's
   collateral for the quote's FMSPC (:func:`.tdx.verify_quote`, ``tdx.*``),
   plus the quote version the policy accepts (``policy.quote_version``);
3. TD attributes (``policy.td_attributes.*``: debug off ...);
4. REPORTDATA binding (``binding.report_data.identity`` / ``.nonce``);
5. the signing key hashes to the bound address (``binding.signing_key``);
6. the event log replays to the quote's RTMRs, its runtime events recompute
   (``eventlog.*``), the compose hash is bound to ``info`` and MRCONFIGID
   (``measurements.*``), ``info`` states the truth (``report.info``), and the
   measurements are in the policy's allowlists (``policy.mrtd`` ...);
7. NVIDIA: every GPU's certificate chain, SPDM signature and nonce, for the
   *same* client nonce (``nvidia.*``), and the policy's GPU count and
   architecture (``policy.nvidia.*``);
8. optionally NVIDIA's attestation service (``nvidia.nras*``);

then lets the policy mark each failed or skipped row enforced or not
(:meth:`.Policy.enforce`) and returns the :class:`AttestationVerdict`.

Failed checks never raise: they are rows. Raising is for evidence that is
structurally malformed (:class:`~enclaved.errors.EvidenceParseError`: a
quote or GPU payload that does not parse is not "forged", it is garbage),
and for a network failure while fetching collateral or asking NRAS
(:class:`~enclaved.errors.NetworkError`: never reported as "invalid").
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError, EvidenceParseError
from . import binding, eventlog, measurements
from .checks import Check, Status, Verdict
from .document import AttestationReport
from .eventlog import RuntimeFacts
from .policy import Policy


def utcnow() -> datetime:
    return datetime.now(UTC)


class NrasCheck(Protocol):
    """What :class:`Verifier` calls for the optional NRAS step.

    :func:`enclaved.attestation.nvidia.nras.check_with_nras` fits (with its
    ``client``/``jwks`` bound by :func:`functools.partial`), as does
    :func:`recorded_nras`.
    """

    def __call__(self, payload: Any, *, expected_nonce: bytes, now: datetime) -> list[Check]: ...


@dataclasses.dataclass
class AttestationVerdict(Verdict):
    """A :class:`~.checks.Verdict` plus the facts it was reached on.

    The facts (measurements, REPORTDATA, GPU count...) are what the evidence
    *says*; trust them only when :attr:`ok` is true.
    """

    #: The client nonce checked, or ``None`` (freshness not checked).
    nonce: bytes | None = None
    verified_at: datetime | None = None
    duration_ms: int = 0
    #: Active relaxations of the policy used (empty for a strict policy).
    relaxations: list[str] = dataclasses.field(default_factory=list)
    report: AttestationReport | None = None
    #: Quote fields by spec name (``mrtd``, ``rtmr0``.., ``report_data``, ``td_attributes``...).
    quote_fields: dict[str, bytes] = dataclasses.field(default_factory=dict)
    tcb_status: str | None = None
    runtime_facts: RuntimeFacts | None = None
    gpu_count: int = 0
    gpu_architectures: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        doc = super().to_dict()
        doc["freshness_checked"] = self.nonce is not None
        doc["relaxations"] = list(self.relaxations)
        return doc


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


#: ``collateral=AUTO`` (the default): Intel PCS when the policy needs
#: collateral, none when it allows missing collateral (so the development
#: policy never touches the network).
AUTO: Any = _Auto()
_default_pcs: Any = None


def _shared_pcs() -> Any:
    """One PCS client per process, so its in-memory collateral cache is shared."""
    global _default_pcs
    if _default_pcs is None:
        _default_pcs = pcs_collateral()
    return _default_pcs


class Verifier:
    """Verifies attestation reports under one policy.

    ``collateral`` is where Intel's collateral comes from:
    :class:`.tdx.DirectoryCollateral` for a recorded capture,
    :class:`.tdx.PcsCollateral` for Intel PCS, a ready
    :class:`.tdx.Collateral`, ``None`` for none (the collateral rows are then
    skipped, enforced unless the policy says ``allow_missing_collateral``),
    or :data:`AUTO` (the default: Intel PCS, shared per process, unless the
    policy allows missing collateral). ``nras`` is the optional NVIDIA
    attestation-service step. ``now`` is the clock (inject it in tests).

    >>> v = Verifier(Policy.strict(), collateral=DirectoryCollateral(d))  # doctest: +SKIP
    >>> verdict = v.verify(report, nonce=my_nonce)  # doctest: +SKIP
    """

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        collateral: Any | None = AUTO,
        nras: NrasCheck | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.policy = policy if policy is not None else Policy.strict()
        if collateral is AUTO:
            collateral = None if self.policy.allow_missing_collateral else _shared_pcs()
        self.collateral = collateral
        self.nras = nras
        self.now = now

    def verify(
        self,
        report: AttestationReport,
        *,
        nonce: bytes | None,
        now: datetime | None = None,
        warn: bool = True,
    ) -> AttestationVerdict:
        """Check ``report`` against the ``nonce`` the client sent (``None``: freshness unchecked).

        ``now`` overrides the verifier's clock for this call. ``warn=False``
        is for a caller that reports ``verdict.relaxations`` itself (a node
        logs its own): no :class:`InsecurePolicyWarning` is issued. Raises
        :class:`~enclaved.errors.EvidenceParseError` for a quote or GPU payload
        that does not parse, :class:`~enclaved.errors.NetworkError` when
        collateral or NRAS cannot be fetched, and ``ValueError`` for a nonce
        that is not 32 bytes or a naive clock (caller bugs, not evidence).
        """
        from .nvidia import gpu_facts, no_payload_check, parse_nvidia_payload, verify_gpus
        from .tdx import parse_quote, verify_quote

        started = time.monotonic()
        policy = self.policy
        now = now if now is not None else self.now()
        if now.tzinfo is None:
            raise ValueError("the verifier's clock must return timezone-aware datetimes")
        if nonce is not None and len(nonce) != binding.NONCE_SIZE:
            raise ValueError("nonce must be 32 bytes")
        verdict = AttestationVerdict(
            nonce=nonce,
            verified_at=now,
            report=report,
            relaxations=policy.warn_relaxations() if warn else policy.relaxations(),
        )
        rows: list[Check] = []

        # 1. The document.
        rows.append(binding.check_nonce_echo(report, nonce))
        rows.append(binding.check_verified_flag(report))

        # 2. TDX. A quote that does not parse raises EvidenceParseError.
        quote = parse_quote(report.intel_quote)
        verdict.quote_fields = _quote_fields(quote)
        collateral, why_none = self._collateral_for(quote)
        tdx_rows = verify_quote(
            quote, trust_roots=policy.trust_roots(), collateral=collateral, now=now
        )
        if why_none:
            tdx_rows = [
                dataclasses.replace(c, reason=why_none)
                if c.status is Status.SKIPPED and c.reason == "no collateral"
                else c
                for c in tdx_rows
            ]
        rows.extend(tdx_rows)
        verdict.tcb_status = _tcb_status(quote, collateral)
        rows.append(policy.check_quote_version(quote.version))

        # 3. TD attributes.
        rows.extend(policy.check_td_attributes(quote.td_attributes))

        # 4-5. REPORTDATA binding and the signing key.
        rows.extend(binding.check_all(report, quote.report_data, nonce))

        # 6. Event log, runtime facts, measurements.
        replay = eventlog.check_replay(report.event_log, quote.rtmrs)
        digests = eventlog.check_runtime_digests(report.event_log)
        rows += [replay, digests]
        facts: RuntimeFacts | None = None
        if replay.status is Status.PASS and digests.status is Status.PASS:
            # Only a log that replays to the quote, with recomputed runtime
            # digests, is a source of facts.
            facts = eventlog.runtime_facts(report.event_log)
        verdict.runtime_facts = facts
        rows.append(measurements.check_compose_hash(facts, report.info))
        rows.append(measurements.check_mrconfigid(facts, quote.mrconfigid))
        rows.append(
            measurements.check_info(
                report.info, quote_measurements=verdict.quote_fields, facts=facts
            )
        )
        rows.extend(
            policy.check_measurements(
                {
                    "mrtd": quote.mrtd,
                    "rtmr0": quote.rtmrs[0],
                    "rtmr1": quote.rtmrs[1],
                    "rtmr2": quote.rtmrs[2],
                    "mrseam": quote.mrseam,
                    "compose_hash": facts.compose_hash if facts else None,
                    "os_image_hash": facts.os_image_hash if facts else None,
                    "app_id": facts.app_id if facts else None,
                }
            )
        )

        # 7. NVIDIA, for the same nonce as the quote.
        gpu_nonce = _effective_nonce(report, quote.report_data, nonce)
        payload = None
        if report.nvidia_payload is None:
            rows.append(no_payload_check())
        else:
            payload = parse_nvidia_payload(report.nvidia_payload)
            rows.extend(verify_gpus(payload, expected_nonce=gpu_nonce, now=now))
            gf = gpu_facts(payload)
            verdict.gpu_count = gf.gpu_count
            verdict.gpu_architectures = [g.arch for g in gf.gpus]
            rows.extend(policy.check_nvidia_gpus(verdict.gpu_architectures))

        # 8. NRAS (optional; a network failure raises NetworkError).
        if payload is not None and self.nras is not None:
            rows.extend(self.nras(payload, expected_nonce=gpu_nonce, now=now))
        elif policy.require_nras:
            why = "no GPU evidence" if payload is None else "no NRAS client configured"
            rows.append(Check.skipped("nvidia.nras", why))

        # Enforcement, by the policy.
        verdict.extend(
            policy.enforce(c, nonce_given=nonce is not None, tcb_status=verdict.tcb_status)
            for c in rows
        )
        verdict.duration_ms = int((time.monotonic() - started) * 1000)
        return verdict

    def _collateral_for(self, quote: Any) -> tuple[Any | None, str | None]:
        """The quote's collateral from the source, by the PCK leaf's FMSPC and CA."""
        from .tdx import collateral_for

        if self.collateral is None:
            return None, "no collateral source configured"
        if not hasattr(self.collateral, "get"):
            return self.collateral, None  # already a Collateral
        try:
            return collateral_for(quote, self.collateral), None
        except ConfigError as exc:
            # A recorded directory without this FMSPC: the collateral is
            # missing, which the policy judges like any missing collateral.
            return None, f"no collateral: {exc}"


def verify_attestation(
    doc: AttestationReport | Mapping[str, Any] | bytes | str,
    *,
    nonce: bytes | str | None,
    policy: Policy | None = None,
    collateral: Any | None = AUTO,
    nras: NrasCheck | None = None,
    now: Callable[[], datetime] | datetime | None = None,
) -> AttestationVerdict:
    """Parse and verify in one call. ``nonce`` may be bytes or hex; ``now`` a fixed time.

    ``collateral`` as for :class:`Verifier` (default: Intel PCS unless the
    policy allows missing collateral).

    >>> verdict = verify_attestation(body, nonce=my_nonce)  # doctest: +SKIP
    >>> verdict.raise_for_status()  # doctest: +SKIP
    """
    report = doc if isinstance(doc, AttestationReport) else AttestationReport.from_json(doc)
    if isinstance(nonce, str):
        nonce = bytes.fromhex(nonce)
    clock: Callable[[], datetime]
    if isinstance(now, datetime):
        fixed = now
        clock = lambda: fixed
    else:
        clock = now or utcnow
    return Verifier(policy, collateral=collateral, nras=nras, now=clock).verify(report, nonce=nonce)


# --- helpers ------------------------------------------------------------------


def _quote_fields(quote: Any) -> dict[str, bytes]:
    body = quote.body
    fields = {
        "mrtd": quote.mrtd,
        "rtmr0": quote.rtmrs[0],
        "rtmr1": quote.rtmrs[1],
        "rtmr2": quote.rtmrs[2],
        "rtmr3": quote.rtmrs[3],
        "mrconfigid": quote.mrconfigid,
        "mrseam": quote.mrseam,
        "report_data": quote.report_data,
        "td_attributes": quote.td_attributes,
    }
    for name in ("mrowner", "mrownerconfig", "xfam", "tee_tcb_svn"):
        value = getattr(body, name, None)
        if isinstance(value, bytes):
            fields[name] = value
    return fields


def _tcb_status(quote: Any, collateral: Any | None) -> str | None:
    """Intel's TCB status for the quote, for the policy's ``allow_tcb_statuses``."""
    if collateral is None:
        return None
    from .tdx import tcb_status

    try:
        return str(tcb_status(quote, collateral).status)
    except EvidenceParseError:
        return None  # the tdx.tcb.status row already failed with the reason


def _effective_nonce(report: AttestationReport, report_data: bytes, nonce: bytes | None) -> bytes:
    """The nonce GPU evidence must carry: the client's, else the quote-bound one.

    Without a client nonce there is no freshness to prove; binding the GPUs
    to the same nonce as the (signed) quote still proves they were attested
    together.
    """
    if nonce is not None:
        return nonce
    return bytes(report_data[32:64])


# --- collateral and NRAS sources for the CLI and tests ------------------------------


def directory_collateral(path: Path) -> Any:
    """Collateral recorded in a directory (a capture's ``responses/``)."""
    from .tdx import DirectoryCollateral

    return DirectoryCollateral(path)


def pcs_collateral(base_url: str | None = None) -> Any:
    """Collateral from Intel PCS (``base_url`` overrides Intel's)."""
    from .tdx import PcsCollateral

    return PcsCollateral(base_url) if base_url else PcsCollateral()


def recorded_nras(path: Path) -> NrasCheck:
    """An NRAS step that verifies an answer recorded in ``path`` instead of asking NVIDIA.

    Reads the ``*nras*attest_gpu*.body`` and ``*jwks*.body`` files a capture
    holds. The recorded answer is checked exactly as a live one is (JWS
    signatures under the recorded JWKS, nonce, times at ``now``).
    """
    from .nvidia.nras import parse_nras_answer, parse_nras_jwks, verify_nras_answer

    folder = path / "responses" if (path / "responses").is_dir() else path
    answers = sorted(folder.glob("*nras*attest_gpu*.body"))
    jwks_files = sorted(folder.glob("*nras*jwks*.body"))
    if not answers or not jwks_files:
        raise ConfigError(f"{folder}: no recorded NRAS answer and JWKS")
    answer = parse_nras_answer(answers[0].read_bytes())
    jwks = parse_nras_jwks(jwks_files[0].read_bytes())

    def check(payload: Any, *, expected_nonce: bytes, now: datetime) -> list[Check]:
        return verify_nras_answer(
            answer, jwks=jwks, expected_nonce=expected_nonce, now=now, payload=payload
        )

    return check


def online_nras() -> NrasCheck:
    """The live NRAS step (network; raises NetworkError when unreachable)."""
    from .nvidia.nras import check_with_nras

    def check(payload: Any, *, expected_nonce: bytes, now: datetime) -> list[Check]:
        return check_with_nras(payload, expected_nonce=expected_nonce, now=now)

    return check


# --- the server's ``server_verification`` --------------------------------------------


def _row_ok(verdict: Verdict, *ids: str) -> bool:
    rows = [verdict.get(i) for i in ids]
    return all(r is not None and r.status is Status.PASS for r in rows)


def server_verification(verdict: Verdict) -> dict[str, Any]:
    """Summarize a verdict as the ``server_verification`` field, factor by factor.

    Same shape as the production service's (``tdx{valid, signatureValid,
    certificateChainValid, ...}``, ``nvidia{...}``, ``signingAddressBinding``,
    ``nonceBinding``, ``verifiedAt``), plus ``ok`` and our own ``checks``
    list, so a client can see exactly which rows held.

    Without GPU evidence ``nvidia`` and ``nvidiaNonceBinding`` are ``null``
    (not applicable), never ``valid: false``: clients written for the
    production service (the npm ``venice-e2ee``) read ``nvidia.valid ==
    false`` as a failed GPU attestation and refuse the node.
    """

    def prefixed(prefix: str) -> list[Check]:
        return [c for c in verdict if c.id.startswith(prefix)]

    tdx_rows = prefixed("tdx.") + prefixed("policy.td_attributes")
    fields: Mapping[str, bytes] = getattr(verdict, "quote_fields", {}) or {}
    crl = verdict.get("tdx.collateral.pck_crl")
    nvidia_rows = [c for c in prefixed("nvidia.") if not c.id.startswith("nvidia.nras")]
    nvidia_present = any(c.status is not Status.SKIPPED for c in nvidia_rows)
    report = getattr(verdict, "report", None)
    rd = fields.get("report_data", b"")
    verified_at = getattr(verdict, "verified_at", None)

    out: dict[str, Any] = {
        "ok": verdict.ok,
        "tdx": {
            "valid": bool(tdx_rows) and all(c.ok for c in tdx_rows),
            "signatureValid": _row_ok(verdict, "tdx.quote.signature", "tdx.qe_report.signature"),
            "certificateChainValid": _row_ok(verdict, "tdx.pck.chain"),
            "rootCaPinned": _row_ok(verdict, "tdx.pck.chain"),
            "attestationKeyMatch": _row_ok(verdict, "tdx.qe_report.binding"),
            "tcbStatus": getattr(verdict, "tcb_status", None),
            "debug": (
                verdict.get("policy.td_attributes.debug") is not None
                and not _row_ok(verdict, "policy.td_attributes.debug")
            ),
            "reportData": rd.hex() if rd else None,
            "measurements": {
                "mrtd": _hex(fields.get("mrtd")),
                "mrconfigid": _hex(fields.get("mrconfigid")),
                "mrowner": _hex(fields.get("mrowner")),
                "mrownerconfig": _hex(fields.get("mrownerconfig")),
                "rtmr0": _hex(fields.get("rtmr0")),
                "rtmr1": _hex(fields.get("rtmr1")),
                "rtmr2": _hex(fields.get("rtmr2")),
                "rtmr3": _hex(fields.get("rtmr3")),
                "tdAttributes": _hex(fields.get("td_attributes")),
                "xfam": _hex(fields.get("xfam")),
            },
            "crlCheck": {
                "checked": crl is not None and crl.status is not Status.SKIPPED,
                "revoked": crl is not None and crl.status is Status.FAIL,
            },
        },
        "nvidia": {
            "valid": nvidia_present and all(c.ok for c in nvidia_rows),
            "present": nvidia_present,
            "signatureVerified": nvidia_present
            and all(
                c.status is Status.PASS for c in nvidia_rows if c.id.endswith(".spdm.signature")
            ),
            "certificateChainStatus": {
                "valid": nvidia_present
                and all(
                    c.status is Status.PASS for c in nvidia_rows if c.id.endswith(".cert_chain")
                ),
            },
            "gpuCount": getattr(verdict, "gpu_count", 0),
            "architectures": sorted(set(getattr(verdict, "gpu_architectures", []))),
        },
        "signingAddressBinding": {
            "bound": _row_ok(verdict, "binding.report_data.identity"),
            "reportDataAddress": _report_data_identity(report, rd),
            "signingKeyMatches": _row_ok(verdict, "binding.signing_key"),
        },
        "nonceBinding": {"bound": _row_ok(verdict, "binding.report_data.nonce"), "method": "raw"},
        "nvidiaNonceBinding": {
            "bound": nvidia_present
            and all(c.status is Status.PASS for c in nvidia_rows if c.id.endswith(".nonce")),
            "method": "nvidia_payload",
        },
        "eventLog": {
            "replayed": _row_ok(verdict, "eventlog.replay"),
            "runtimeDigests": _row_ok(verdict, "eventlog.rtmr3_digests"),
            "composeHashBound": _row_ok(
                verdict, "measurements.compose_hash", "measurements.mrconfigid"
            ),
        },
        "verifiedAt": _iso_ms(verified_at) if verified_at else None,
        "verificationDurationMs": getattr(verdict, "duration_ms", 0),
        "relaxations": list(getattr(verdict, "relaxations", [])),
        "checks": [c.to_dict() for c in verdict],
    }
    if not nvidia_present:
        out["nvidia"] = out["nvidiaNonceBinding"] = None
    return out


def _report_data_identity(report: AttestationReport | None, rd: bytes) -> str | None:
    """What REPORTDATA[0:32] holds, in the form the document uses for the identity."""
    if not rd:
        return None
    if (
        report is not None
        and report.signing_algo == "ecdsa"
        and report.tls_cert_fingerprint is None
    ):
        return "0x" + rd[:20].hex()
    return rd[:32].hex()


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _iso_ms(when: datetime) -> str:
    """``2026-04-24T01:58:32.849Z``, the production service's format."""
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


__all__ = [
    "AUTO",
    "AttestationVerdict",
    "NrasCheck",
    "Verifier",
    "directory_collateral",
    "online_nras",
    "pcs_collateral",
    "recorded_nras",
    "server_verification",
    "utcnow",
    "verify_attestation",
]
