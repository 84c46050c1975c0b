"""An attestation report in, a verdict out: the one verifier everything uses.

The client SDK, the CLI, the proxy and the server's own ``verified`` (and its
``server_verification``, :mod:`enclaved.server.attestation_summary`) all
call :meth:`Verifier.verify`. It runs, in order:

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

Verification is pure; the network is a getter. What the services say
(Intel's collateral for the quote's platform, NRAS's answer for the GPUs)
is gathered first, by :meth:`Verifier.fetch` through sync getters or by
:meth:`Verifier.afetch` through async ones, into a :class:`Fetched`; then
:meth:`Verifier.verify` is a function of (report, :class:`Fetched`, nonce,
time) that opens no socket. The async client awaits ``afetch`` and so never
blocks its event loop on Intel or NVIDIA (go-tdx-guest's ``HTTPSGetter``,
httpx's ``Client`` / ``AsyncClient``).

Failed checks never raise: they are rows. Raising is for evidence that is
structurally malformed (:class:`~enclaved.errors.EvidenceParseError`: a
quote or GPU payload that does not parse is not "forged", it is garbage),
and for a network failure while fetching collateral or asking NRAS
(:class:`~enclaved.errors.NetworkError`, from ``fetch`` / ``afetch``:
never reported as "invalid").
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigError, EvidenceParseError
from . import binding, eventlog, measurements
from .checks import Check, CheckId, Status, Verdict
from .document import AttestationReport
from .eventlog import RuntimeFacts
from .policy import Policy

if TYPE_CHECKING:  # pragma: no cover
    from .nvidia.nras import NrasEvidence
    from .nvidia.parse import NvidiaPayload
    from .tdx.collateral import Collateral
    from .tdx.parse import Quote


def utcnow() -> datetime:
    return datetime.now(UTC)


class NrasSource(Protocol):
    """Where NRAS's answer for a payload comes from, sync and async.

    :func:`online_nras` (the live service, :class:`.nvidia.nras.NrasService`)
    and :func:`recorded_nras` (a capture) fit. Either raises
    :class:`~enclaved.errors.NetworkError` when the service cannot be asked.
    """

    def fetch(self, payload: NvidiaPayload) -> NrasEvidence: ...

    async def afetch(self, payload: NvidiaPayload) -> NrasEvidence: ...


class Binder(Protocol):
    """What a service binds in REPORTDATA, and the nonce its GPUs carry.

    :data:`PROTOCOL_BINDER` is PROTOCOL.md's (:mod:`.binding`); the other
    services' are in :mod:`.formats`.
    """

    def echo(self, report: AttestationReport, nonce: bytes | None) -> Check: ...

    def rows(
        self, report: AttestationReport, report_data: bytes, nonce: bytes | None
    ) -> list[Check]: ...

    def gpu_nonce(
        self, report: AttestationReport, report_data: bytes, nonce: bytes | None
    ) -> bytes: ...


class _ProtocolBinder:
    """PROTOCOL.md's layout: :mod:`.binding`."""

    def echo(self, report: AttestationReport, nonce: bytes | None) -> Check:
        return binding.check_nonce_echo(report, nonce)

    def rows(
        self, report: AttestationReport, report_data: bytes, nonce: bytes | None
    ) -> list[Check]:
        return binding.check_all(report, report_data, nonce)

    def gpu_nonce(
        self, report: AttestationReport, report_data: bytes, nonce: bytes | None
    ) -> bytes:
        return _effective_nonce(report, report_data, nonce)


PROTOCOL_BINDER: Binder = _ProtocolBinder()


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What the services said about one report: the inputs :meth:`Verifier.verify` needs
    besides the report, the nonce and the time.

    Made by :meth:`Verifier.fetch` / :meth:`Verifier.afetch`; build one by
    hand to verify against collateral and an NRAS answer you hold.
    """

    #: Intel's collateral for the quote's platform, or ``None``.
    collateral: Collateral | None = None
    #: Why there is no collateral (the reason on the skipped collateral rows).
    collateral_note: str | None = None
    #: NRAS's answer and keys for the report's GPU payload, or ``None``.
    nras: NrasEvidence | None = None


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
#: collateral (a :class:`.tdx.PcsCollateral` of the verifier's own, with its
#: own in-memory cache), none when it allows missing collateral (so the
#: development policy never touches the network).
AUTO: Any = _Auto()


class Verifier:
    """Verifies attestation reports under one policy.

    ``collateral`` is where Intel's collateral comes from:
    :class:`.tdx.DirectoryCollateral` for a recorded capture,
    :class:`.tdx.PcsCollateral` for Intel PCS, a ready
    :class:`.tdx.Collateral`, ``None`` for none (the collateral rows are then
    skipped, enforced unless the policy says ``allow_missing_collateral``),
    or :data:`AUTO` (the default: a :class:`.tdx.PcsCollateral` of this
    verifier's own, unless the policy allows missing collateral). ``nras``
    is the optional NVIDIA attestation-service step (an :class:`NrasSource`:
    :func:`online_nras`, :func:`recorded_nras`). ``now`` is the clock
    (inject it in tests).

    Fetching and verifying are two steps. :meth:`fetch` (sync getters) or
    :meth:`afetch` (async getters) asks the sources; :meth:`verify` judges,
    without a socket. Sources that read no network (a recorded directory, a
    ready :class:`.tdx.Collateral`, a recorded NRAS answer) need no fetch:

    >>> v = Verifier(Policy.strict(), collateral=DirectoryCollateral(d))  # doctest: +SKIP
    >>> verdict = v.verify(report, nonce=my_nonce)  # doctest: +SKIP
    >>> live = Verifier(Policy.strict())  # Intel PCS  # doctest: +SKIP
    >>> verdict = live.verify(report, nonce=my_nonce, fetched=live.fetch(report))  # doctest: +SKIP
    >>> verdict = live.verify(report, nonce=my_nonce, fetched=await live.afetch(report))  # doctest: +SKIP
    """

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        collateral: Any | None = AUTO,
        nras: NrasSource | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.policy = policy if policy is not None else Policy.strict()
        if collateral is AUTO:
            # No process-wide default: each verifier owns its PCS source (and
            # its in-memory cache); the sync and async getters are made per fetch.
            collateral = None if self.policy.allow_missing_collateral else pcs_collateral()
        self.collateral = collateral
        self.nras = nras
        self.now = now

    # -- fetching: the only step that may touch the network -------------------------

    def fetch(self, report: AttestationReport) -> Fetched:
        """Ask the sources about ``report`` through their sync getters.

        Raises :class:`~enclaved.errors.EvidenceParseError` for a quote or GPU
        payload that does not parse, and :class:`~enclaved.errors.NetworkError`
        when collateral or NRAS cannot be fetched.
        """
        quote, payload = self._parse_for_fetch(report)
        source: Any = self.collateral
        collateral, note = self._ready_collateral()
        if collateral is _ASK:
            fmspc, ca = _platform(quote)
            try:
                collateral = source.get(fmspc, ca)
            except ConfigError as exc:
                collateral, note = None, _missing(exc)
        nras = self.nras.fetch(payload) if payload is not None and self.nras else None
        return Fetched(collateral=collateral, collateral_note=note, nras=nras)

    async def afetch(self, report: AttestationReport) -> Fetched:
        """The async twin of :meth:`fetch`: the sources' async getters, awaited.

        A collateral source without ``aget`` is asked on a worker thread, and
        so is parsing the quote and GPU payload (on a first call it imports
        the TDX and NVIDIA modules: tens of milliseconds the loop would stall).
        """
        quote, payload = await asyncio.to_thread(self._parse_for_fetch, report)
        source: Any = self.collateral
        collateral, note = self._ready_collateral()
        if collateral is _ASK:
            fmspc, ca = _platform(quote)
            aget = getattr(source, "aget", None)
            try:
                if aget is not None:
                    collateral = await aget(fmspc, ca)
                else:
                    collateral = await asyncio.to_thread(source.get, fmspc, ca)
            except ConfigError as exc:
                collateral, note = None, _missing(exc)
        nras = await self.nras.afetch(payload) if payload is not None and self.nras else None
        return Fetched(collateral=collateral, collateral_note=note, nras=nras)

    def _parse_for_fetch(self, report: AttestationReport) -> tuple[Quote, NvidiaPayload | None]:
        """What the sources are asked about: the quote's platform, and the GPU payload for NRAS."""
        from .nvidia import parse_nvidia_payload
        from .tdx import parse_quote

        quote = parse_quote(report.intel_quote)
        payload = None
        if self.nras is not None and report.nvidia_payload is not None:
            payload = parse_nvidia_payload(report.nvidia_payload)
        return quote, payload

    def _ready_collateral(self) -> tuple[Any, str | None]:
        """(collateral, why none) when no source has to be asked, else (``_ASK``, None)."""
        if self.collateral is None:
            return None, "no collateral source configured"
        if not hasattr(self.collateral, "get"):
            return self.collateral, None  # already a Collateral
        return _ASK, None

    def _fetch_local(self, report: AttestationReport) -> Fetched:
        """:meth:`fetch`, for sources that read no network; a network source raises."""
        remote = []
        if self._ready_collateral()[0] is _ASK and not getattr(self.collateral, "local", False):
            remote.append("collateral")
        if self.nras is not None and not getattr(self.nras, "local", False):
            remote.append("NRAS")
        if remote:
            raise ConfigError(
                f"Verifier.verify() opens no socket, and this verifier gets "
                f"{' and '.join(remote)} from the network: pass fetched=verifier.fetch(report) "
                "(or await verifier.afetch(report)), or use verify_attestation()"
            )
        return self.fetch(report)

    # -- verifying: pure -------------------------------------------------------------

    def verify(
        self,
        report: AttestationReport,
        *,
        nonce: bytes | None,
        now: datetime | None = None,
        fetched: Fetched | None = None,
        warn: bool = True,
        binder: Binder | None = None,
    ) -> AttestationVerdict:
        """Check ``report`` against the ``nonce`` the client sent (``None``: freshness unchecked).

        ``fetched`` is what :meth:`fetch` / :meth:`afetch` gathered; without
        it, only sources that read no network are consulted (a network
        source raises :class:`~enclaved.errors.ConfigError`). No socket is
        opened here. ``now`` overrides the verifier's clock for this call.
        ``warn=False`` is for a caller that reports ``verdict.relaxations``
        itself (a node logs its own): no :class:`InsecurePolicyWarning` is
        issued. Raises :class:`~enclaved.errors.EvidenceParseError` for a
        quote or GPU payload that does not parse, and ``ValueError`` for a
        nonce that is not 32 bytes or a naive clock (caller bugs, not evidence).

        ``binder`` replaces PROTOCOL.md's REPORTDATA layout (the nonce echo,
        the identity, nonce and key rows, and the nonce the GPUs must carry)
        with another service's (:mod:`.formats`); every other row is the same.
        """
        from .nvidia import gpu_facts, no_payload_check, parse_nvidia_payload, verify_gpus
        from .nvidia.nras import verify_nras_answer
        from .tdx import parse_quote, verify_quote

        started = time.monotonic()
        policy = self.policy
        now = now if now is not None else self.now()
        if now.tzinfo is None:
            raise ValueError("the verifier's clock must return timezone-aware datetimes")
        if nonce is not None and len(nonce) != binding.NONCE_SIZE:
            raise ValueError("nonce must be 32 bytes")
        if fetched is None:
            fetched = self._fetch_local(report)
        verdict = AttestationVerdict(
            nonce=nonce,
            verified_at=now,
            report=report,
            relaxations=policy.warn_relaxations() if warn else policy.relaxations(),
        )
        rows: list[Check] = []

        # 1. The document.
        bind: Binder = binder if binder is not None else PROTOCOL_BINDER
        rows.append(bind.echo(report, nonce))
        rows.append(binding.check_verified_flag(report))

        # 2. TDX. A quote that does not parse raises EvidenceParseError.
        quote = parse_quote(report.intel_quote)
        verdict.quote_fields = _quote_fields(quote)
        collateral, why_none = fetched.collateral, fetched.collateral_note
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
        rows.extend(bind.rows(report, quote.report_data, nonce))

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
        gpu_nonce = bind.gpu_nonce(report, quote.report_data, nonce)
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

        # 8. NRAS (optional): its answer, as fetched, checked at ``now``.
        if payload is not None and fetched.nras is not None:
            rows.extend(
                verify_nras_answer(
                    fetched.nras.answer,
                    jwks=fetched.nras.jwks,
                    expected_nonce=gpu_nonce,
                    now=now,
                    payload=payload,
                )
            )
        elif policy.require_nras:
            why = "no GPU evidence" if payload is None else "no NRAS client configured"
            if payload is not None and self.nras is not None:
                why = "NRAS was not asked (no NRAS answer fetched)"
            rows.append(Check.skipped(CheckId.NVIDIA_NRAS, why))

        # Enforcement, by the policy.
        verdict.extend(
            policy.enforce(c, nonce_given=nonce is not None, tcb_status=verdict.tcb_status)
            for c in rows
        )
        verdict.duration_ms = int((time.monotonic() - started) * 1000)
        return verdict


#: ``Verifier._ready_collateral``'s "ask the source".
_ASK: Any = object()


def _platform(quote: Quote) -> tuple[bytes, str]:
    """The quote's platform, as collateral is filed: (FMSPC, PCK CA) from its PCK leaf."""
    from .tdx import pck_ca, pck_extensions

    leaf = quote.pck_leaf
    return pck_extensions(leaf).fmspc, pck_ca(leaf)


def _missing(exc: ConfigError) -> str:
    # A recorded directory without this FMSPC: the collateral is missing,
    # which the policy judges like any missing collateral.
    return f"no collateral: {exc}"


def verify_attestation(
    doc: AttestationReport | Mapping[str, Any] | bytes | str,
    *,
    nonce: bytes | str | None,
    policy: Policy | None = None,
    collateral: Any | None = AUTO,
    nras: NrasSource | None = None,
    now: Callable[[], datetime] | datetime | None = None,
) -> AttestationVerdict:
    """Parse, fetch (sync) and verify in one call. ``nonce`` may be bytes or hex; ``now`` a fixed time.

    ``collateral`` as for :class:`Verifier` (default: Intel PCS unless the
    policy allows missing collateral). Raises
    :class:`~enclaved.errors.NetworkError` when collateral or NRAS cannot be
    fetched.

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
    verifier = Verifier(policy, collateral=collateral, nras=nras, now=clock)
    return verifier.verify(report, nonce=nonce, fetched=verifier.fetch(report))


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


def pcs_collateral(base_url: str | None = None, **options: Any) -> Any:
    """Collateral from Intel PCS (``base_url`` overrides Intel's; ``options`` go to
    :class:`.tdx.PcsCollateral`: ``client=``, ``async_client=``, ``cache_dir=``...)."""
    from .tdx import PcsCollateral

    return PcsCollateral(base_url, **options) if base_url else PcsCollateral(**options)


class RecordedNras:
    """An :class:`NrasSource` serving the answer a capture recorded instead of asking NVIDIA.

    Reads the ``*nras*attest_gpu*.body`` and ``*jwks*.body`` files a capture
    holds. The recorded answer is checked exactly as a live one is (JWS
    signatures under the recorded JWKS, nonce, times at ``now``).
    """

    #: Reads no network: :meth:`Verifier.verify` may consult it without a fetch.
    local = True

    def __init__(self, path: Path) -> None:
        from .nvidia.nras import NrasEvidence, parse_nras_answer, parse_nras_jwks

        folder = path / "responses" if (path / "responses").is_dir() else path
        answers = sorted(folder.glob("*nras*attest_gpu*.body"))
        jwks_files = sorted(folder.glob("*nras*jwks*.body"))
        if not answers or not jwks_files:
            raise ConfigError(f"{folder}: no recorded NRAS answer and JWKS")
        self.evidence = NrasEvidence(
            answer=parse_nras_answer(answers[0].read_bytes()),
            jwks=parse_nras_jwks(jwks_files[0].read_bytes()),
        )

    def fetch(self, payload: NvidiaPayload) -> NrasEvidence:
        return self.evidence

    async def afetch(self, payload: NvidiaPayload) -> NrasEvidence:
        return self.evidence


def recorded_nras(path: Path) -> NrasSource:
    """NRAS's answer as a capture in ``path`` recorded it (:class:`RecordedNras`)."""
    return RecordedNras(path)


def online_nras(**options: Any) -> NrasSource:
    """The live NRAS (network; raises NetworkError when unreachable).

    ``options`` go to :class:`.nvidia.nras.NrasService`: ``client=`` (the
    sync getter), ``async_client=`` (the async one), ``attest_url=``,
    ``jwks_url=``, ``timeout=``.
    """
    from .nvidia.nras import NrasService

    return NrasService(**options)


__all__ = [
    "AUTO",
    "AttestationVerdict",
    "Fetched",
    "NrasSource",
    "RecordedNras",
    "Verifier",
    "directory_collateral",
    "online_nras",
    "pcs_collateral",
    "recorded_nras",
    "utcnow",
    "verify_attestation",
]
