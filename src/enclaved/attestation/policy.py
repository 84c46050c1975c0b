"""What must hold for an enclave to be trusted: a :class:`Policy` is data.

The verifiers below this module produce :class:`~.checks.Check` rows for
what they *found*; a policy decides what is *required*. It does so in two
ways:

1. It adds rows of its own, ``kind="policy"``: quote version, TD
   attributes (debug off...), measurement allowlists, GPU count and
   architecture.
2. It decides, row by row, whether a failed or skipped row is *enforced*
   (:meth:`Policy.enforce`), by one table, :data:`RULES`: for each field,
   which check ids it governs, under what condition, and (for an
   ``allow_...`` relaxation) the warning it gives. ``Policy.enforce``,
   ``Policy.relaxations()`` and ``Policy.RELAXATIONS`` are all read from
   it. A relaxation never turns a failure into a pass: the row still says
   ``fail``, with ``enforced = no``, so the table shows exactly what was
   waived. Rows no rule names stay enforced (fail closed).
   The TCB status is judged this way: the tdx layer fails every status but
   ``UpToDate`` as a ``kind="policy"`` row (``tdx.tcb.status``), and
   ``allow_tcb_statuses`` waives the statuses it names (never ``Revoked``).

Every relaxation is a field named ``allow_...``. A verification that runs
under a policy with any relaxation emits one :class:`InsecurePolicyWarning`
that names them all, *every* time (:meth:`Policy.warn_relaxations`). It is said
through :mod:`warnings` only, never also logged: a library that did both
would print each relaxation twice. Applications decide how to show them
(the verdict lists them too, ``Verdict.relaxations``; ``enclaved serve``
logs them once, the CLI prints each once).

:meth:`Policy.strict` (the default) requires everything: a client nonce
echoed and bound, a quote under Intel's pinned root, collateral, TCB status
``UpToDate``, TD debug off and SEPT_VE_DISABLE on, REPORTDATA bound to the
signing key, a replayable event log with its compose hash bound to
MRCONFIGID, and verified NVIDIA GPU evidence for the same nonce.

TD attributes (Intel TDX module ABI, TD_ATTRIBUTES, 64 bits little-endian):

- bits 0-7, "TUD" (TD under debug): bit 0 is DEBUG; the others are reserved
  for debug features. Any of them set fails ``policy.td_attributes.debug``
  (a debuggable TD's memory and registers can be read by the host).
- bit 28, SEPT_VE_DISABLE: set, EPT violations on private memory are not
  reflected into the guest as #VE, closing a host-driven channel into the
  guest. Linux TD guests expect it set; the production captures have it
  (TD_ATTRIBUTES bytes ``0000001000000000`` = 0x10000000 = bit 28, and
  nothing else). Required by default.
- bit 29, MIGRATABLE: the TD may be migrated by a migration TD, which then
  holds its keys. Refused by default.
- other bits (LASS 27, PKS 30, KL 31, PERFMON 63 ...) are CPU features, not
  trust properties, and are NOT checked.

XFAM (the extended CPU features the TD may use) is NOT checked.
"""

from __future__ import annotations

import dataclasses
import tomllib
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509

from ..errors import EvidenceParseError, PolicyError
from ._x509 import DECODE_ERRORS, decoded_certificate
from .checks import (
    COLLATERAL_CHECK_IDS,
    INTEL_TCB_STATUSES,
    Check,
    CheckId,
    CheckKind,
    Status,
    TcbStatus,
)


class InsecurePolicyWarning(UserWarning):
    """A verification ran under a policy that waives at least one check."""


# --- TD attributes (TD_ATTRIBUTES, Intel TDX module ABI) -------------------

TD_ATTR_DEBUG = 1 << 0
#: TUD: "TD under debug", bits 0-7; any of them makes the TD debuggable.
TD_ATTR_TUD_MASK = 0xFF
TD_ATTR_SEPT_VE_DISABLE = 1 << 28
TD_ATTR_MIGRATABLE = 1 << 29

#: The TCB status a strict policy accepts (Intel PCS TCB info, "tcbStatus").
UP_TO_DATE = TcbStatus.UP_TO_DATE
#: The statuses Intel publishes, which ``allow_tcb_statuses`` may name.
KNOWN_TCB_STATUSES = INTEL_TCB_STATUSES

#: Measurement allowlists and the size of what they hold, in bytes.
_QUOTE_ALLOWLISTS = {"mrtd": 48, "rtmr0": 48, "rtmr1": 48, "rtmr2": 48, "mrseam": 48}
_EVENT_ALLOWLISTS = {"compose_hash": 32, "os_image_hash": 32, "app_id": 20}


def _hexset(name: str, values: Any, size: int) -> frozenset[str]:
    """An allowlist: lowercase hex of exactly ``size`` bytes each."""
    if isinstance(values, (str, bytes)):
        raise PolicyError(f"policy {name}: expected a list of hex strings, got one string")
    out = set()
    for v in values:
        if isinstance(v, (bytes, bytearray)):
            v = bytes(v).hex()
        if not isinstance(v, str):
            raise PolicyError(f"policy {name}: expected hex strings")
        text = v.strip().lower()
        text = text.removeprefix("0x")
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise PolicyError(f"policy {name}: {v!r} is not hex") from exc
        if len(raw) != size:
            raise PolicyError(f"policy {name}: {v!r} is {len(raw)} bytes, expected {size}")
        out.add(raw.hex())
    return frozenset(out)


def _kms_roots(values: Any) -> frozenset[str]:
    """``aci_kms_roots``: ``0x`` addresses, from addresses or secp256k1 public keys."""
    from ..crypto.keys import address_from_public_key

    if isinstance(values, (str, bytes)):
        raise PolicyError("policy aci_kms_roots: expected a list of hex strings, got one string")
    out = set()
    for v in values:
        text = str(v).strip().lower().removeprefix("0x")
        try:
            raw = bytes.fromhex(text)
            if len(raw) == 20:
                out.add("0x" + raw.hex())
                continue
            if len(raw) in (33, 65):
                import coincurve

                full = coincurve.PublicKey(raw).format(compressed=False)
                out.add(address_from_public_key(full).lower())
                continue
        except ValueError:
            pass
        raise PolicyError(
            f"policy aci_kms_roots: {v!r} is neither a 20-byte address nor a secp256k1 public key"
        )
    return frozenset(out)


@dataclasses.dataclass(frozen=True)
class Row:
    """What a rule sees of a row: the check, and what the verifier knew around it."""

    check: Check
    #: Whether the client gave a nonce (freshness could be checked).
    nonce_given: bool = True
    #: Intel's TCB status for the quote's platform, when known.
    tcb_status: str | None = None


_SKIPPED = frozenset({Status.SKIPPED})
_FAILED = frozenset({Status.FAIL})
_NOT_PASSED = frozenset({Status.FAIL, Status.SKIPPED})


@dataclasses.dataclass(frozen=True)
class Rule:
    """One line of the policy's enforcement table (:data:`RULES`).

    A rule *matches* a row when the row's id is one of ``ids`` or starts
    with ``prefix``, its status is in ``statuses`` (by default: skipped, a
    check that could not run), and it is of ``kind`` (when set). The
    matching row is enforced unless :meth:`waives` says otherwise: by default
    when the policy field ``field`` is set, or by ``waived`` (a condition on
    the policy and the row). A rule with a ``warning`` is a *relaxation*:
    whenever its field is set, the policy says so in those words.
    """

    #: The :class:`Policy` field that decides (``None``: a fixed rule).
    field: str | None
    #: The condition, in words (what ``docs/verification.md`` says).
    when: str
    ids: tuple[str, ...] = ()
    prefix: str | None = None
    statuses: frozenset[Status] = _SKIPPED
    kind: CheckKind | None = None
    waived: Callable[[Policy, Row], bool] | None = None
    warning: Callable[[Policy], str] | None = None

    def matches(self, check: Check) -> bool:
        if check.status not in self.statuses:
            return False
        if self.kind is not None and check.kind is not self.kind:
            return False
        return check.id in self.ids or (
            self.prefix is not None and check.id.startswith(self.prefix)
        )

    def active(self, policy: Policy) -> bool:
        """Whether the policy sets this rule's field (a relaxation in use)."""
        return self.field is not None and bool(getattr(policy, self.field))

    def waives(self, policy: Policy, row: Row) -> bool:
        if self.waived is not None:
            return self.waived(policy, row)
        return self.active(policy)


def _text(message: str) -> Callable[[Policy], str]:
    return lambda policy: message


#: How a policy decides, row by row, what is enforced; and what it warns about.
#: A failed or skipped row is decided by the first rule that matches it; a row
#: no rule matches keeps its own ``enforced`` (fail closed). The fixed rules
#: and requirements come first: the root CA CRL row is also a collateral row,
#: the NRAS rows are also ``nvidia.`` rows. The relaxations follow in the
#: order their warnings are given (:meth:`Policy.relaxations`); no two of them
#: match the same row (tests/test_policy.py).
RULES: tuple[Rule, ...] = (
    Rule(
        None,
        "always: the server's own claim is never trusted, never required",
        ids=(CheckId.REPORT_VERIFIED_FLAG,),
        statuses=_NOT_PASSED,
        waived=lambda policy, row: True,
    ),
    Rule(
        "require_root_ca_crl",
        "skipped (the collateral has no root CA CRL), unless require_root_ca_crl",
        ids=(CheckId.TDX_ROOT_CA_CRL,),
        waived=lambda policy, row: not policy.require_root_ca_crl,
    ),
    Rule(
        "require_nras",
        "failed or skipped, unless require_nras",
        prefix="nvidia.nras",
        statuses=_NOT_PASSED,
        waived=lambda policy, row: not policy.require_nras,
    ),
    # The relaxations.
    Rule(
        "allow_missing_nonce",
        "skipped because the client gave no nonce",
        ids=(CheckId.REPORT_NONCE, CheckId.BINDING_NONCE),
        waived=lambda policy, row: policy.allow_missing_nonce and not row.nonce_given,
        warning=_text("allow_missing_nonce: freshness may not be checked (replays accepted)"),
    ),
    Rule(
        "allow_development_roots",
        "waives no row: the roots are trusted besides Intel's (Policy.trust_roots)",
        warning=lambda policy: (
            f"allow_development_roots: {len(policy.allow_development_roots)} non-Intel "
            "root(s) trusted; a quote under them proves nothing about hardware"
        ),
    ),
    Rule(
        "allow_missing_collateral",
        "skipped for want of Intel's collateral",
        ids=COLLATERAL_CHECK_IDS,
        warning=_text("allow_missing_collateral: TCB status and revocation may be unknown"),
    ),
    Rule(
        "allow_tcb_statuses",
        "failed as a policy row with a TCB status the field names",
        ids=(CheckId.TDX_TCB_STATUS,),
        statuses=_FAILED,
        kind=CheckKind.POLICY,
        waived=lambda policy, row: row.tcb_status in policy.allow_tcb_statuses,
        warning=lambda policy: (
            f"allow_tcb_statuses: {', '.join(sorted(policy.allow_tcb_statuses))} accepted "
            "besides UpToDate"
        ),
    ),
    Rule(
        "allow_debug",
        "failed: a TD-under-debug bit is set",
        ids=(CheckId.POLICY_TD_DEBUG,),
        statuses=_NOT_PASSED,
        warning=_text("allow_debug: a debuggable TD (host can read its memory) is accepted"),
    ),
    Rule(
        "allow_sept_ve",
        "failed: SEPT_VE_DISABLE is clear",
        ids=(CheckId.POLICY_TD_SEPT_VE_DISABLE,),
        statuses=_NOT_PASSED,
        warning=_text("allow_sept_ve: SEPT_VE_DISABLE may be clear"),
    ),
    Rule(
        "allow_migratable",
        "failed: MIGRATABLE is set",
        ids=(CheckId.POLICY_TD_MIGRATABLE,),
        statuses=_NOT_PASSED,
        warning=_text("allow_migratable: a migratable TD is accepted"),
    ),
    Rule(
        "allow_missing_signing_key",
        "skipped: the document has no signing_key",
        ids=(CheckId.BINDING_SIGNING_KEY,),
        warning=_text("allow_missing_signing_key: a report without signing_key is accepted"),
    ),
    Rule(
        "allow_missing_event_log",
        "skipped: no event log (or no RTMR3 events)",
        prefix="eventlog.",
        warning=_text("allow_missing_event_log: RTMR3 facts may be unverified"),
    ),
    Rule(
        "allow_missing_compose_binding",
        "skipped: no compose-hash event to bind",
        ids=(CheckId.MEASUREMENTS_COMPOSE_HASH, CheckId.MEASUREMENTS_MRCONFIGID),
        warning=_text("allow_missing_compose_binding: the app compose may be unbound"),
    ),
    Rule(
        "allow_missing_provenance",
        "skipped: no source provenance, or none a measured app_compose corroborates",
        ids=(CheckId.ACI_PROVENANCE,),
        warning=_text("allow_missing_provenance: an aci/1 workload need not name the code it runs"),
    ),
    Rule(
        "allow_missing_nvidia",
        "skipped: no GPU evidence",
        prefix="nvidia.",
        warning=_text("allow_missing_nvidia: GPU evidence is not required"),
    ),
)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Requirements for an attestation. Frozen; build variants with :func:`dataclasses.replace`.

    Fields that waive a check are named ``allow_...`` and warn when used.
    Allowlists (``mrtd``, ``rtmr0``... as lowercase hex) are empty by
    default, meaning *not checked*: their rows are reported as skipped and
    not enforced.
    """

    # 1. Freshness
    #: Verify without a client nonce. The quote may then be a replay.
    allow_missing_nonce: bool = False

    # 2. The quote and its chain
    #: Quote versions accepted (4: TDX 1.0, 5: TDX 1.5).
    quote_versions: frozenset[int] = frozenset({4, 5})
    #: Root certificates (PEM) trusted *besides* Intel's pinned SGX Root CA,
    #: e.g. the development root of enclaved's simulated TEE. A quote that
    #: chains to one of these proves nothing about hardware.
    allow_development_roots: tuple[str, ...] = ()
    #: Accept a quote whose collateral (TCB info, QE identity, CRLs) could not
    #: be obtained. TCB status and revocation are then unknown.
    allow_missing_collateral: bool = False
    #: TCB statuses accepted besides ``UpToDate`` (e.g. ``SWHardeningNeeded``).
    allow_tcb_statuses: frozenset[str] = frozenset()
    #: Require Intel's root CA CRL (revocation of Intel's *intermediate* CAs).
    #: Off by default, and documented as such: Intel PCS serves it from a
    #: separate URL, recorded collateral (the captures) lacks it, and Intel
    #: has never revoked a PCK CA. When present it is always checked and
    #: enforced; only its absence is tolerated.
    require_root_ca_crl: bool = False

    # 3. TD attributes
    allow_debug: bool = False
    #: Accept SEPT_VE_DISABLE clear.
    allow_sept_ve: bool = False
    allow_migratable: bool = False

    # 4. Binding
    #: Accept a document without ``signing_key`` (REPORTDATA still binds the address).
    allow_missing_signing_key: bool = False

    # 5. Measurements: allowlists of lowercase hex; empty = not checked.
    mrtd: frozenset[str] = frozenset()
    rtmr0: frozenset[str] = frozenset()
    rtmr1: frozenset[str] = frozenset()
    rtmr2: frozenset[str] = frozenset()
    mrseam: frozenset[str] = frozenset()
    #: From the RTMR3 event log (trusted once replayed): dstack's compose hash ...
    compose_hash: frozenset[str] = frozenset()
    os_image_hash: frozenset[str] = frozenset()
    app_id: frozenset[str] = frozenset()
    #: Accept a report without an event log (RTMR3 facts then unknown).
    allow_missing_event_log: bool = False
    #: Accept no compose-hash event / MRCONFIGID not bound to it (non-dstack TDs).
    allow_missing_compose_binding: bool = False
    #: aci/1: accept a report whose stated source provenance no measured
    #: ``app_compose`` corroborates, or that states none (row ``aci.provenance``).
    #: A provenance the measurement contradicts is refused either way.
    allow_missing_provenance: bool = False
    #: aci/1 key custody: the dstack KMS roots trusted to release keys only to
    #: attested workloads, as ``0x`` addresses (or their secp256k1 public keys),
    #: as the KMS contract's ``kmsInfo`` publishes them. Empty: custody is a
    #: named skip (``aci.key_custody``); set: every listed key must chain to one.
    aci_kms_roots: frozenset[str] = frozenset()

    # 6. NVIDIA GPUs
    #: Accept a report without GPU evidence (a CPU-only TD, or the simulated TEE).
    allow_missing_nvidia: bool = False
    #: Exactly this many GPUs must attest; ``None`` = at least one.
    nvidia_gpu_count: int | None = None
    #: GPU architectures accepted (e.g. ``{"HOPPER", "BLACKWELL"}``); empty = any.
    nvidia_architectures: frozenset[str] = frozenset()
    #: Require NVIDIA's remote attestation service (NRAS) to agree.
    require_nras: bool = False

    #: The enforcement table (:data:`RULES`).
    RULES: ClassVar[tuple[Rule, ...]] = RULES
    #: Fields whose truth weakens verification (documented, warned about):
    #: the fields of the rules with a warning, in the table's order.
    RELAXATIONS: ClassVar[tuple[str, ...]] = tuple(
        r.field for r in RULES if r.field is not None and r.warning is not None
    )

    def __post_init__(self) -> None:
        # Normalize whatever iterable a caller passed into frozen, lowercase
        # forms, and validate sizes: a typo in an allowlist must not silently
        # become "allow nothing" or "allow anything".
        for name, size in {**_QUOTE_ALLOWLISTS, **_EVENT_ALLOWLISTS}.items():
            object.__setattr__(self, name, _hexset(name, getattr(self, name), size))
        object.__setattr__(self, "aci_kms_roots", _kms_roots(self.aci_kms_roots))
        versions = frozenset(int(v) for v in self.quote_versions)
        if not versions or not versions <= {4, 5}:
            raise PolicyError("policy quote_versions: a subset of {4, 5}, not empty")
        object.__setattr__(self, "quote_versions", versions)
        statuses = frozenset(self._strs("allow_tcb_statuses"))
        unknown = statuses - KNOWN_TCB_STATUSES
        if TcbStatus.REVOKED in statuses:
            raise PolicyError("policy allow_tcb_statuses: a Revoked platform is never acceptable")
        if unknown:
            raise PolicyError(
                f"policy allow_tcb_statuses: unknown {sorted(unknown)} "
                f"(known: {sorted(KNOWN_TCB_STATUSES)})"
            )
        object.__setattr__(self, "allow_tcb_statuses", statuses)
        object.__setattr__(
            self,
            "nvidia_architectures",
            frozenset(a.upper() for a in self._strs("nvidia_architectures")),
        )
        roots = tuple(
            r.decode("ascii", "replace") if isinstance(r, (bytes, bytearray)) else r
            for r in _iter_roots(self.allow_development_roots)
        )
        for pem in roots:
            _parse_pem_certs(pem)  # fail at construction, not at first use
        object.__setattr__(self, "allow_development_roots", roots)
        count = self.nvidia_gpu_count
        if count is not None and (
            not isinstance(count, int) or isinstance(count, bool) or count < 1
        ):
            raise PolicyError("policy nvidia_gpu_count: a positive integer")
        for name in self.RELAXATIONS + ("require_nras", "require_root_ca_crl"):
            if name in ("allow_development_roots", "allow_tcb_statuses"):
                continue
            if not isinstance(getattr(self, name), bool):
                raise PolicyError(f"policy {name}: expected true or false")

    def _strs(self, name: str) -> Iterable[str]:
        values = getattr(self, name)
        if isinstance(values, str):
            raise PolicyError(f"policy {name}: expected a list of strings, got one string")
        for v in values:
            if not isinstance(v, str):
                raise PolicyError(f"policy {name}: expected strings")
            yield v

    # --- presets ---------------------------------------------------------

    @classmethod
    def strict(cls) -> Policy:
        """Everything required; Intel's root only. The default."""
        return cls()

    @classmethod
    def development(cls, dev_root_pem: str | bytes) -> Policy:
        """For enclaved's simulated TEE: trusts ``dev_root_pem``; no collateral or GPUs.

        The simulated TEE signs its quotes with a development key under
        that root. It has no NVIDIA GPUs, and a client has no Intel
        collateral for it (the node signs its own, under the same root, for
        its self-verification only): those two are waived, and so is an
        ``aci/1`` report's missing source provenance (a development node
        runs whatever is checked out; one configured with provenance still
        has it checked, and a contradicted claim still fails). Everything
        else is still required, as on hardware: REPORTDATA binding, nonce,
        signing key, TD attributes, the quote's signatures, and an event
        log that replays to the quote with its compose hash bound to
        ``info`` and MRCONFIGID (the simulated TEE serves a simulated one).
        Every verification under this policy warns that it proves nothing
        about hardware.
        """
        pem = dev_root_pem.decode("ascii") if isinstance(dev_root_pem, bytes) else dev_root_pem
        return cls(
            allow_development_roots=(pem,),
            allow_missing_collateral=True,
            allow_missing_nvidia=True,
            allow_missing_provenance=True,
        )

    def trust_roots(self) -> list[x509.Certificate]:
        """The roots a PCK chain may lead to: Intel's pinned root, then any development roots."""
        from .tdx.roots import intel_sgx_root_ca

        roots = [intel_sgx_root_ca()]
        for pem in self.allow_development_roots:
            roots.extend(_parse_pem_certs(pem))
        return roots

    # --- loading ---------------------------------------------------------

    @classmethod
    def from_toml(cls, text: str, *, base_dir: Path | None = None) -> Policy:
        """A policy from TOML. Keys are the field names; unknown keys are an error.

        ``allow_development_roots`` entries are PEM text or paths to PEM
        files (relative to ``base_dir``, default the working directory).
        Omitted keys keep the strict defaults. Example::

            mrtd = ["b24d3b24...e217"]
            allow_tcb_statuses = ["SWHardeningNeeded"]
            nvidia_gpu_count = 8
        """
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"policy file: not valid TOML: {exc}") from exc
        return cls.from_dict(data, base_dir=base_dir)

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"policy file {p}: {exc.strerror or exc}") from exc
        return cls.from_toml(text, base_dir=p.parent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: Path | None = None) -> Policy:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise PolicyError(
                f"policy: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(fields))})"
            )
        kwargs = dict(data)
        if "allow_development_roots" in kwargs:
            kwargs["allow_development_roots"] = tuple(
                _load_pem(v, base_dir) for v in _list(kwargs["allow_development_roots"])
            )
        for key in ("quote_versions", "allow_tcb_statuses", "nvidia_architectures"):
            if key in kwargs:
                kwargs[key] = frozenset(_list(kwargs[key]))
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"policy: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The policy as TOML-ready data (allowlists sorted; roots as PEM text)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, frozenset):
                v = sorted(v)
            elif isinstance(v, tuple):
                v = list(v)
            if v is not None:
                out[f.name] = v
        return out

    # --- relaxations -----------------------------------------------------

    def relaxations(self) -> list[str]:
        """One sentence per active relaxation (:data:`RULES`); empty for a strict policy."""
        return [r.warning(self) for r in self.RULES if r.warning is not None and r.active(self)]

    def warn_relaxations(self, *, stacklevel: int = 3) -> list[str]:
        """One :class:`InsecurePolicyWarning` naming every active relaxation.

        Called on every verification. One warning, not one per relaxation:
        Python prints each warning with the line that caused it, and three
        of them (the development policy's) made six lines before an answer.
        """
        msgs = self.relaxations()
        if msgs:
            text = "INSECURE attestation policy: " + "; ".join(msgs)
            warnings.warn(text, InsecurePolicyWarning, stacklevel=stacklevel)
        return msgs

    # --- enforcement -----------------------------------------------------

    def enforce(
        self, check: Check, *, nonce_given: bool = True, tcb_status: str | None = None
    ) -> Check:
        """The same row with ``enforced`` decided by this policy.

        Rows that passed stay enforced (so the table shows what was relied
        on). A failed or skipped row is waived only by the relaxation that
        names it; any row not covered here stays enforced (fail closed).
        """
        if check.status is Status.PASS:
            return check
        enforced = self._enforced(check, nonce_given=nonce_given, tcb_status=tcb_status)
        if enforced == check.enforced:
            return check
        return dataclasses.replace(check, enforced=enforced)

    def _enforced(self, check: Check, *, nonce_given: bool, tcb_status: str | None) -> bool:
        row = Row(check, nonce_given=nonce_given, tcb_status=tcb_status)
        for rule in self.RULES:
            if rule.matches(check):
                return not rule.waives(self, row)
        return check.enforced  # no rule names it: it stays as the verifier said (fail closed)

    # --- the policy's own rows ---------------------------------------------

    def check_quote_version(self, version: int) -> Check:
        cid = CheckId.POLICY_QUOTE_VERSION
        if version not in self.quote_versions:
            return Check.failed(
                cid,
                f"quote version {version}, accepted {sorted(self.quote_versions)}",
                kind=CheckKind.POLICY,
            )
        return Check.passed(cid, f"quote version {version}", kind=CheckKind.POLICY)

    def check_td_attributes(self, td_attributes: bytes | int) -> list[Check]:
        """The TD attribute rules (see the module docstring)."""
        attrs = (
            int.from_bytes(td_attributes, "little")
            if isinstance(td_attributes, (bytes, bytearray))
            else int(td_attributes)
        )
        shown = attrs.to_bytes(8, "little").hex()
        rows = []
        tud = attrs & TD_ATTR_TUD_MASK
        if tud:
            what = "DEBUG" if tud & TD_ATTR_DEBUG else f"TUD bits {tud:#x}"
            rows.append(
                Check.failed(
                    CheckId.POLICY_TD_DEBUG,
                    f"TD_ATTRIBUTES {shown}: {what} set - the TD is debuggable",
                    kind=CheckKind.POLICY,
                )
            )
        else:
            rows.append(
                Check.passed(
                    CheckId.POLICY_TD_DEBUG,
                    f"TD_ATTRIBUTES {shown}: DEBUG off",
                    kind=CheckKind.POLICY,
                )
            )
        if attrs & TD_ATTR_SEPT_VE_DISABLE:
            rows.append(
                Check.passed(
                    CheckId.POLICY_TD_SEPT_VE_DISABLE, "SEPT_VE_DISABLE set", kind=CheckKind.POLICY
                )
            )
        else:
            rows.append(
                Check.failed(
                    CheckId.POLICY_TD_SEPT_VE_DISABLE,
                    "SEPT_VE_DISABLE clear",
                    kind=CheckKind.POLICY,
                )
            )
        if attrs & TD_ATTR_MIGRATABLE:
            rows.append(
                Check.failed(CheckId.POLICY_TD_MIGRATABLE, "MIGRATABLE set", kind=CheckKind.POLICY)
            )
        else:
            rows.append(
                Check.passed(
                    CheckId.POLICY_TD_MIGRATABLE, "MIGRATABLE clear", kind=CheckKind.POLICY
                )
            )
        return rows

    def check_measurements(self, values: Mapping[str, bytes | None]) -> list[Check]:
        """Allowlist rows ``policy.mrtd``, ``policy.rtmr0-2``, ``policy.mrseam``,
        ``policy.compose_hash``, ``policy.os_image_hash``, ``policy.app_id``.

        ``values`` maps those names to the measured bytes (``None`` when the
        evidence has no such value). An empty allowlist gives a skipped,
        not enforced row.
        """
        rows = []
        for name in (*_QUOTE_ALLOWLISTS, *_EVENT_ALLOWLISTS):
            allowed: frozenset[str] = getattr(self, name)
            cid = CheckId(f"policy.{name}")
            value = values.get(name)
            if not allowed:
                rows.append(
                    Check.skipped(
                        cid,
                        "no allowlist configured: not checked",
                        enforced=False,
                        kind=CheckKind.POLICY,
                    )
                )
            elif value is None:
                rows.append(Check.failed(cid, f"the evidence has no {name}", kind=CheckKind.POLICY))
            elif value.hex() in allowed:
                rows.append(
                    Check.passed(cid, f"{name} {value.hex()} is allowed", kind=CheckKind.POLICY)
                )
            else:
                rows.append(
                    Check.failed(
                        cid, f"{name} {value.hex()} is not in the allowlist", kind=CheckKind.POLICY
                    )
                )
        return rows

    def check_nvidia_gpus(self, architectures: list[str]) -> list[Check]:
        """``policy.nvidia.gpu_count`` and ``policy.nvidia.arch`` over the GPUs that attested."""
        rows = []
        count = len(architectures)
        if self.nvidia_gpu_count is None:
            if count >= 1:
                rows.append(
                    Check.passed(
                        CheckId.POLICY_NVIDIA_GPU_COUNT, f"{count} GPU(s)", kind=CheckKind.POLICY
                    )
                )
            else:
                rows.append(
                    Check.failed(
                        CheckId.POLICY_NVIDIA_GPU_COUNT, "no GPU evidence", kind=CheckKind.POLICY
                    )
                )
        elif count == self.nvidia_gpu_count:
            rows.append(
                Check.passed(
                    CheckId.POLICY_NVIDIA_GPU_COUNT, f"{count} GPU(s)", kind=CheckKind.POLICY
                )
            )
        else:
            rows.append(
                Check.failed(
                    CheckId.POLICY_NVIDIA_GPU_COUNT,
                    f"{count} GPU(s), expected {self.nvidia_gpu_count}",
                    kind=CheckKind.POLICY,
                )
            )
        if not self.nvidia_architectures:
            rows.append(
                Check.skipped(
                    CheckId.POLICY_NVIDIA_ARCH,
                    "no architecture allowlist: not checked",
                    enforced=False,
                    kind=CheckKind.POLICY,
                )
            )
        else:
            bad = sorted({a for a in architectures if a.upper() not in self.nvidia_architectures})
            if bad or not architectures:
                rows.append(
                    Check.failed(
                        CheckId.POLICY_NVIDIA_ARCH,
                        f"architecture(s) {bad or 'none'} "
                        f"not in {sorted(self.nvidia_architectures)}",
                        kind=CheckKind.POLICY,
                    )
                )
            else:
                rows.append(
                    Check.passed(
                        CheckId.POLICY_NVIDIA_ARCH,
                        ", ".join(sorted(set(architectures))),
                        kind=CheckKind.POLICY,
                    )
                )
        return rows


def _iter_roots(value: object) -> Iterable[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise PolicyError("policy allow_development_roots: expected a list of PEM certificates")
    return value


def _parse_pem_certs(pem: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
        return [decoded_certificate(c) for c in certs]
    except (*DECODE_ERRORS, UnicodeEncodeError, EvidenceParseError) as exc:
        raise PolicyError("policy allow_development_roots: not a PEM certificate") from exc


def _list(value: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise PolicyError(f"policy: expected a list, got {value!r}")
    return list(value)


def _load_pem(value: Any, base_dir: Path | None) -> str:
    if not isinstance(value, str):
        raise PolicyError("policy allow_development_roots: expected PEM text or a path")
    if "-----BEGIN" in value:
        return value
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"policy allow_development_roots: cannot read {path}") from exc


__all__ = [
    "KNOWN_TCB_STATUSES",
    "TD_ATTR_DEBUG",
    "TD_ATTR_MIGRATABLE",
    "TD_ATTR_SEPT_VE_DISABLE",
    "InsecurePolicyWarning",
    "Policy",
]
