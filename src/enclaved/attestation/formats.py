"""The other services' report formats: one verdict per attested component.

PROTOCOL.md's report (Venice, a NEAR inference node served directly) is one
TD and one verdict. Two other services built on the same stack (dstack, TDX,
Hopper GPUs) serve several TDs in one answer, each with its own quote:

- ``nearcloud``: NEAR AI cloud's ``/v1/attestation/report``: a
  ``gateway_attestation`` (a CPU-only TD; the TLS endpoint), and
  ``model_attestations[]`` (one inference node each, the shape of
  PROTOCOL.md's ed25519 report, plus a ``compose_manager_attestation``: a
  second quote of the same TD binding its compose-manager's action log).
- ``chutes``: a Chutes deployment: ``evidence[]`` (``/chutes/{id}/evidence``:
  a quote, GPU evidence and a certificate per instance) and ``instances[]``
  (``/e2e/instances/{id}``: each instance's ML-KEM-768 E2E public key),
  merged into one document.

Each component is verified by the same :meth:`.Verifier.verify` (DCAP chain
and TCB, TD attributes, event log, compose hash, MRCONFIGID, GPUs, NRAS);
only what REPORTDATA binds differs, and is a :class:`.verifier.Binder` here.
What a format cannot prove is a named row (``nearcloud.*``, ``chutes.*``,
``docs/verification.md``), never a silent pass.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import EvidenceParseError
from . import binding, eventlog
from .checks import Check, CheckId, Status, Verdict
from .document import AttestationReport
from .verifier import PROTOCOL_BINDER, AttestationVerdict, Binder, Fetched, Verifier

FORMATS = ("protocol", "nearcloud", "chutes", "aci-current", "aci-rev-a")

#: ML-KEM-768's encapsulation key is 1184 bytes (FIPS 203).
MLKEM768_PUBLIC_KEY_SIZE = 1184


def detect_format(doc: Mapping[str, Any]) -> str:
    """The format of a decoded report, by its shape: one of :data:`FORMATS`.

    An ``aci/1`` report's revision is never guessed from the document (it is
    untrusted): detecting one raises, asking for ``aci-current`` or ``aci-rev-a``.
    """
    if doc.get("api_version") == "aci/1":
        raise EvidenceParseError(
            "an aci/1 report: name its revision (format aci-current or aci-rev-a; "
            "enclaved verify --format ...)"
        )
    if isinstance(doc.get("gateway_attestation"), Mapping) and isinstance(
        doc.get("model_attestations"), list
    ):
        return "nearcloud"
    evidence = doc.get("evidence")
    if (
        isinstance(evidence, list)
        and evidence
        and all(isinstance(e, Mapping) and "quote" in e for e in evidence)
    ):
        return "chutes"
    return "protocol"


def load_document(raw: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(raw, Mapping):
        return raw
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EvidenceParseError("attestation report: not valid JSON") from exc
    if not isinstance(doc, Mapping):
        raise EvidenceParseError("attestation report: expected a JSON object")
    return doc


@dataclasses.dataclass
class Component:
    """One attested TD of a document, and its verdict."""

    #: ``gateway``, ``model[0]``, ``model[0].compose_manager``, ``instance[<id>]``...
    name: str
    verdict: AttestationVerdict


@dataclasses.dataclass
class DocumentVerdict:
    """The verdicts of every component of one document. Passes only if every one passes."""

    format: str
    components: list[Component] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.components) and all(c.verdict.ok for c in self.components)

    @property
    def failures(self) -> list[tuple[str, Check]]:
        """(component, row) for every row that blocks."""
        return [(c.name, f) for c in self.components for f in c.verdict.failures]

    def component(self, name: str) -> AttestationVerdict:
        for c in self.components:
            if c.name == name:
                return c.verdict
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "ok": self.ok,
            "components": [{"component": c.name, **c.verdict.to_dict()} for c in self.components],
        }

    def table(self) -> str:
        """One block per component: its name and verdict, then its factor table."""
        blocks = []
        for c in self.components:
            head = f"== {c.name}: {'PASS' if c.verdict.ok else 'FAIL'}"
            blocks.append(f"{head}\n{c.verdict.table()}")
        return "\n\n".join(blocks)

    def raise_for_status(self) -> None:
        for c in self.components:
            c.verdict.raise_for_status()


# --- one document, every component -------------------------------------------


def verify_document(
    verifier: Verifier,
    doc: Mapping[str, Any] | bytes | str,
    *,
    nonce: bytes | None,
    format: str | None = None,
    fetch: bool = True,
) -> DocumentVerdict:
    """Verify every component of ``doc`` (any of :data:`FORMATS`) with ``verifier``.

    ``fetch=True`` asks the verifier's sources (:meth:`.Verifier.fetch`) per
    component; ``False`` only consults local ones (a capture).
    """
    d = load_document(doc)
    fmt = format or detect_format(d)
    if fmt not in FORMATS:
        raise EvidenceParseError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    try:
        parts = _components(fmt, d, verifier.now().timestamp(), verifier.policy.aci_kms_roots)
    except (KeyError, TypeError, AttributeError) as exc:
        # A field missing or of the wrong type: garbage, not forged evidence.
        raise EvidenceParseError(
            f"{fmt} document: malformed ({type(exc).__name__}: {exc})"
        ) from exc
    out = DocumentVerdict(format=fmt)
    for name, report, binder, post in parts:
        fetched: Fetched | None = verifier.fetch(report) if fetch else None
        verdict = verifier.verify(report, nonce=nonce, fetched=fetched, binder=binder)
        post(verdict)
        out.components.append(Component(name, verdict))
    return out


_Post = Any  # Callable[[AttestationVerdict], None]


def _components(
    fmt: str, doc: Mapping[str, Any], now: float, kms_roots: frozenset[str] = frozenset()
) -> list[tuple[str, AttestationReport, Binder | None, _Post]]:
    if fmt == "nearcloud":
        return _nearcloud(doc)
    if fmt == "chutes":
        return _chutes(doc)
    if fmt in ("aci-current", "aci-rev-a"):
        return _aci(doc, fmt.removeprefix("aci-"), now, kms_roots)
    return [("node", AttestationReport.from_json(doc), None, lambda v: None)]


def _replace_row(verdict: Verdict, cid: str, new: Check) -> None:
    verdict.checks = [new if c.id == cid else c for c in verdict.checks]


def _insert_after(verdict: Verdict, cid: str, rows: Sequence[Check]) -> None:
    for i, c in enumerate(verdict.checks):
        if c.id == cid:
            verdict.checks[i + 1 : i + 1] = list(rows)
            return
    verdict.checks.extend(rows)


# --- NEAR AI cloud -------------------------------------------------------------


class _Ed25519AddressBinder:
    """PROTOCOL.md's layout, where an ed25519 ``signing_address`` is the key itself.

    The gateway sends ``signing_address`` and no separate key field: for
    ed25519 the address *is* the public key, so the row says so instead of
    skipping.
    """

    def echo(self, report: AttestationReport, nonce: bytes | None) -> Check:
        return PROTOCOL_BINDER.echo(report, nonce)

    def rows(
        self, report: AttestationReport, report_data: bytes, nonce: bytes | None
    ) -> list[Check]:
        rows = PROTOCOL_BINDER.rows(report, report_data, nonce)
        if report.signing_key is None and report.signing_algo == "ed25519":
            rows = [
                Check.passed(
                    CheckId.BINDING_SIGNING_KEY,
                    "ed25519: signing_address is the public key itself (no separate key field)",
                )
                if c.id == CheckId.BINDING_SIGNING_KEY
                else c
                for c in rows
            ]
        return rows

    def gpu_nonce(
        self, report: AttestationReport, report_data: bytes, nonce: bytes | None
    ) -> bytes:
        return PROTOCOL_BINDER.gpu_nonce(report, report_data, nonce)


class _ComposeManagerBinder:
    """``compose_manager_attestation``: REPORTDATA = actions_hash || nonce."""

    def __init__(self, actions_hash: bytes) -> None:
        self.actions_hash = actions_hash

    def echo(self, report: AttestationReport, nonce: bytes | None) -> Check:
        return binding.check_nonce_echo(report, nonce)

    def rows(
        self, report: AttestationReport, report_data: bytes, nonce: bytes | None
    ) -> list[Check]:
        cid = CheckId.NEARCLOUD_CM_ACTIONS_HASH
        got = report_data[:32]
        if len(report_data) != binding.REPORT_DATA_SIZE:
            row = Check.failed(cid, f"REPORTDATA is {len(report_data)} bytes, expected 64")
        elif len(self.actions_hash) != 32:
            row = Check.failed(cid, "actions_hash is not 32 bytes")
        elif not hmac.compare_digest(got, self.actions_hash):
            row = Check.failed(
                cid, f"REPORTDATA[0:32] is {got.hex()}, actions_hash is {self.actions_hash.hex()}"
            )
        else:
            row = Check.passed(cid, "REPORTDATA[0:32] = the stated actions_hash")
        return [
            row,
            binding.check_report_data_nonce(report, report_data, nonce),
            Check.skipped(
                CheckId.NEARCLOUD_CM_ACTIONS,
                "the action list is not recomputed to actions_hash (the service publishes "
                "no hashing rule): the actions themselves are unauthenticated",
                enforced=False,
            ),
        ]

    def gpu_nonce(
        self, report: AttestationReport, report_data: bytes, nonce: bytes | None
    ) -> bytes:
        return PROTOCOL_BINDER.gpu_nonce(report, report_data, nonce)


def _spki_sha256(pem: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    leaf = x509.load_pem_x509_certificates(pem.encode("ascii"))[0]
    spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def _check_gateway_tls(doc: Mapping[str, Any], report: AttestationReport) -> Check:
    cid = CheckId.NEARCLOUD_GATEWAY_TLS_CERTIFICATE
    pem = doc.get("tls_certificate")
    if report.tls_cert_fingerprint is None:
        return Check.failed(cid, "the gateway binds no tls_cert_fingerprint")
    if not isinstance(pem, str) or not pem.strip():
        return Check.skipped(
            cid,
            "no tls_certificate to compare: the gateway's bound fingerprint was not "
            "matched to the certificate it serves",
        )
    try:
        got = _spki_sha256(pem)
    except (ValueError, UnicodeEncodeError, IndexError) as exc:
        return Check.failed(cid, f"tls_certificate does not parse: {exc}")
    if not hmac.compare_digest(got, report.tls_cert_fingerprint):
        return Check.failed(
            cid,
            f"SHA-256(SPKI) of the served certificate is {got.hex()}, the gateway binds "
            f"{report.tls_cert_fingerprint.hex()}",
        )
    return Check.passed(
        cid,
        "SHA-256(SubjectPublicKeyInfo) of the document's tls_certificate leaf = the bound "
        "tls_cert_fingerprint (that it is the certificate of your connection is not checked here)",
    )


def _nearcloud(doc: Mapping[str, Any]) -> list[tuple[str, AttestationReport, Binder | None, _Post]]:
    gw_doc = doc["gateway_attestation"]
    gateway = AttestationReport.from_json(gw_doc)
    models = doc["model_attestations"]
    names = [str(m.get("model_name", "?")) for m in models if isinstance(m, Mapping)]

    def post_gateway(v: AttestationVerdict) -> None:
        _replace_row(
            v,
            CheckId.NVIDIA_GPUS,
            Check.skipped(
                CheckId.NVIDIA_GPUS,
                "the gateway is a CPU-only TD: no GPU evidence (the GPUs are in the model blocks)",
                enforced=False,
            ),
        )
        _insert_after(
            v,
            CheckId.BINDING_SIGNING_KEY,
            [
                _check_gateway_tls(doc, gateway),
                Check.skipped(
                    CheckId.NEARCLOUD_GATEWAY_MODEL_BINDING,
                    "the gateway's REPORTDATA binds only its own key, TLS key and the nonce; "
                    f"nothing it signs names the model nodes ({', '.join(names) or 'none'}) "
                    "or their keys: that it forwards to them is its unattested claim",
                    enforced=False,
                ),
            ],
        )

    parts: list[tuple[str, AttestationReport, Binder | None, _Post]] = [
        ("gateway", gateway, _Ed25519AddressBinder(), post_gateway)
    ]
    if not models:
        raise EvidenceParseError("model_attestations: empty")
    for i, m in enumerate(models):
        if not isinstance(m, Mapping):
            raise EvidenceParseError(f"model_attestations[{i}]: expected an object")
        node = AttestationReport.from_json(m)
        name = f"model[{i}]"
        parts.append((name, node, _Ed25519AddressBinder(), _post_model(m)))
        cm = m.get("compose_manager_attestation")
        if cm is None:
            continue
        if not isinstance(cm, Mapping):
            raise EvidenceParseError(f"{name}.compose_manager_attestation: expected an object")
        cm_report = AttestationReport.from_json(
            {
                "intel_quote": cm.get("quote"),
                "signing_algo": "ed25519",
                # The compose manager has no key of its own: the node's, for display.
                "signing_address": m.get("signing_address"),
                "event_log": cm.get("event_log"),
                "info": m.get("info"),
                "nonce": cm.get("nonce"),
                "nonce_source": cm.get("nonce_source"),
            }
        )
        actions_hash = _hex(cm.get("actions_hash"), f"{name}.compose_manager_attestation")
        parts.append(
            (
                f"{name}.compose_manager",
                cm_report,
                _ComposeManagerBinder(actions_hash),
                _post_compose_manager(node),
            )
        )
    return parts


def _post_model(m: Mapping[str, Any]) -> _Post:
    def post(v: AttestationVerdict) -> None:
        if m.get("ohttp_key_config"):
            _insert_after(
                v,
                CheckId.BINDING_SIGNING_KEY,
                [
                    Check.skipped(
                        CheckId.NEARCLOUD_MODEL_OHTTP_KEY,
                        "ohttp_key_config is not in REPORTDATA: the OHTTP key is unattested",
                        enforced=False,
                    )
                ],
            )

    return post


#: The TD report fields two quotes of one TD share (RTMR3 may grow between them).
_SAME_TD_FIELDS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "mrconfigid", "mrseam")


def _post_compose_manager(node: AttestationReport) -> _Post:
    def post(v: AttestationVerdict) -> None:
        from .tdx import parse_quote

        q = parse_quote(node.intel_quote)
        theirs = {
            "mrtd": q.mrtd,
            "rtmr0": q.rtmrs[0],
            "rtmr1": q.rtmrs[1],
            "rtmr2": q.rtmrs[2],
            "mrconfigid": q.mrconfigid,
            "mrseam": q.mrseam,
        }
        cid = CheckId.NEARCLOUD_CM_SAME_TD
        diff = [f for f in _SAME_TD_FIELDS if v.quote_fields.get(f) != bytes(theirs[f])]
        row = (
            Check.failed(cid, f"differs from the model node's quote in {', '.join(diff)}")
            if diff
            else Check.passed(
                cid, f"{', '.join(_SAME_TD_FIELDS)} equal the model node's quote: the same TD"
            )
        )
        _replace_row(
            v,
            CheckId.NVIDIA_GPUS,
            Check.skipped(
                CheckId.NVIDIA_GPUS,
                "the compose manager's quote carries no GPU evidence (the node's block does)",
                enforced=False,
            ),
        )
        _insert_after(v, CheckId.NEARCLOUD_CM_ACTIONS, [row])

    return post


def _hex(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceParseError(f"{where}: expected hex text")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise EvidenceParseError(f"{where}: not hex") from exc


# --- Chutes --------------------------------------------------------------------


class _ChutesBinder:
    """A Chutes instance: REPORTDATA[0:32] = SHA-256(nonce hex || E2E public key, base64 text),
    REPORTDATA[32:64] = SHA-256(the instance certificate's SubjectPublicKeyInfo); the GPUs'
    SPDM nonce is REPORTDATA[0:32]."""

    def __init__(self, e2e_pubkey: str | None, certificate: bytes | None) -> None:
        self.e2e_pubkey = e2e_pubkey
        self.certificate = certificate

    def echo(self, report: AttestationReport, nonce: bytes | None) -> Check:
        return Check.skipped(
            CheckId.CHUTES_NONCE_ECHO,
            "Chutes evidence echoes no nonce: the nonce is checked through REPORTDATA "
            "(chutes.report_data.e2e_key_nonce)",
            enforced=False,
        )

    def rows(
        self, report: AttestationReport, report_data: bytes, nonce: bytes | None
    ) -> list[Check]:
        rows: list[Check] = []
        cid = CheckId.CHUTES_E2E_KEY_NONCE
        if len(report_data) != binding.REPORT_DATA_SIZE:
            rows.append(Check.failed(cid, f"REPORTDATA is {len(report_data)} bytes"))
        elif nonce is None:
            rows.append(
                Check.skipped(
                    cid,
                    "no nonce given: Chutes binds the nonce only hashed with the E2E key, "
                    "which cannot be checked without it",
                )
            )
        elif self.e2e_pubkey is None:
            rows.append(Check.failed(cid, "no E2E public key for this instance (instances[])"))
        else:
            want = hashlib.sha256(nonce.hex().encode() + self.e2e_pubkey.encode()).digest()
            if hmac.compare_digest(report_data[:32], want):
                rows.append(
                    Check.passed(
                        cid, "REPORTDATA[0:32] = SHA-256(client nonce hex || E2E public key)"
                    )
                )
            else:
                rows.append(
                    Check.failed(
                        cid,
                        f"REPORTDATA[0:32] is {report_data[:32].hex()}, expected {want.hex()} "
                        "(SHA-256(nonce hex || E2E public key))",
                    )
                )
        cid = CheckId.CHUTES_CERTIFICATE
        if self.certificate is None:
            rows.append(Check.failed(cid, "the instance sends no certificate"))
        else:
            got = _der_spki_sha256(self.certificate)
            if got is None:
                rows.append(Check.failed(cid, "the instance certificate does not parse"))
            elif hmac.compare_digest(report_data[32:64], got):
                rows.append(
                    Check.passed(
                        cid, "REPORTDATA[32:64] = SHA-256(the instance certificate's SPKI)"
                    )
                )
            else:
                rows.append(
                    Check.failed(
                        cid,
                        f"REPORTDATA[32:64] is {report_data[32:64].hex()}, SHA-256(SPKI) is "
                        f"{got.hex()}",
                    )
                )
        cid = CheckId.CHUTES_E2E_KEY
        if self.e2e_pubkey is None:
            rows.append(Check.failed(cid, "no E2E public key for this instance"))
        else:
            try:
                size = len(base64.b64decode(self.e2e_pubkey, validate=True))
            except (binascii.Error, ValueError):
                size = -1
            if size == MLKEM768_PUBLIC_KEY_SIZE:
                rows.append(Check.passed(cid, "an ML-KEM-768 encapsulation key (1184 bytes)"))
            else:
                rows.append(
                    Check.failed(cid, f"E2E key is not a 1184-byte ML-KEM-768 key ({size})")
                )
        return rows

    def gpu_nonce(
        self, report: AttestationReport, report_data: bytes, nonce: bytes | None
    ) -> bytes:
        return bytes(report_data[:32])


def _der_spki_sha256(der: bytes) -> bytes | None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    try:
        cert = x509.load_der_x509_certificate(der)
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except ValueError:
        return None
    return hashlib.sha256(spki).digest()


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceParseError(f"{where}: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceParseError(f"{where}: not base64") from exc


_CHUTES_NO_LOG = (
    "Chutes evidence carries no event log: RTMRs cannot be replayed and the compose is not bound"
)


def _chutes(doc: Mapping[str, Any]) -> list[tuple[str, AttestationReport, Binder | None, _Post]]:
    keys: dict[str, str] = {}
    for inst in doc.get("instances") or []:
        if isinstance(inst, Mapping) and isinstance(inst.get("instance_id"), str):
            pk = inst.get("e2e_pubkey")
            if isinstance(pk, str):
                keys[inst["instance_id"]] = pk
    parts: list[tuple[str, AttestationReport, Binder | None, _Post]] = []
    for i, ev in enumerate(doc["evidence"]):
        if not isinstance(ev, Mapping):
            raise EvidenceParseError(f"evidence[{i}]: expected an object")
        iid = str(ev.get("instance_id", i))
        where = f"evidence[{i}]"
        quote = _b64(ev.get("quote"), f"{where}.quote")
        cert = _b64(ev["certificate"], f"{where}.certificate") if ev.get("certificate") else None
        gpus = ev.get("gpu_evidence") or []
        payload = None
        if gpus:
            report_data = quote[48 + 520 : 48 + 584]
            payload = json.dumps(
                {
                    "nonce": report_data[:32].hex(),
                    "arch": str(gpus[0].get("arch", "HOPPER")),
                    "evidence_list": list(gpus),
                }
            )
        report = AttestationReport(
            intel_quote=quote,
            signing_algo="ed25519",
            signing_address=b"",
            nvidia_payload=payload,
            raw=ev,
        )
        parts.append((f"instance[{iid}]", report, _ChutesBinder(keys.get(iid), cert), _post_chutes))
    return parts


# --- aci/1 (shared/specs/aci) -------------------------------------------------


class _AciBinder:
    """An ``aci/1`` report: REPORTDATA[0:32] = SHA-256 of the statement of the
    named revision, recomputed here with *our* nonce and the keyset's digest;
    REPORTDATA[32:64] zero. The keyset, its digest, the workload id and the
    rev-a endorsement are checked against each other."""

    def __init__(
        self,
        doc: Mapping[str, Any],
        revision: str,
        now: float,
        kms_roots: frozenset[str] = frozenset(),
    ) -> None:
        self.doc = doc
        self.revision = revision
        self.now = now
        self.kms_roots = kms_roots

    def echo(self, report: AttestationReport, nonce: bytes | None) -> Check:
        return Check.skipped(
            CheckId.ACI_NONCE_ECHO,
            "an aci/1 report echoes no nonce: it is bound in the statement (aci.report_data)",
            enforced=False,
        )

    def rows(
        self, report: AttestationReport, report_data: bytes, nonce: bytes | None
    ) -> list[Check]:
        from .. import aci

        att = self.doc["attestation"]
        keyset = att["workload_keyset"]
        rows: list[Check] = []
        digest = aci.keyset_digest(keyset)
        stated = self.doc.get("workload_keyset_digest")
        rows.append(
            Check.passed(CheckId.ACI_KEYSET_DIGEST, "the keyset's JCS digest is the one stated")
            if digest == stated
            else Check.failed(
                CheckId.ACI_KEYSET_DIGEST,
                f"the keyset digests to {digest}, the report says {stated}",
            )
        )
        wid = None
        if self.revision == aci.REV_A:
            identity = (keyset.get("workload_identity") or {}).get("public_key")
            wid = aci.workload_id(identity) if isinstance(identity, Mapping) else None
            rows.append(
                Check.passed(CheckId.ACI_WORKLOAD_ID, "workload_id is the identity key's digest")
                if wid is not None and wid == self.doc.get("workload_id")
                else Check.failed(
                    CheckId.ACI_WORKLOAD_ID, "workload_id is not the identity key's digest"
                )
            )
            rows.append(_aci_endorsement(att, identity, digest))
        nonce_text = None if nonce is None else nonce.hex()
        want = aci.report_data(aci.statement(self.revision, digest, nonce_text, wid))
        if hmac.compare_digest(bytes(report_data), want):
            rows.append(
                Check.passed(
                    CheckId.ACI_REPORT_DATA,
                    f"REPORTDATA = SHA-256(the {self.revision} statement of this keyset"
                    + (" and our nonce" if nonce is not None else ", nonce null")
                    + ") || 32 zero bytes",
                )
            )
        else:
            rows.append(
                Check.failed(
                    CheckId.ACI_REPORT_DATA,
                    "REPORTDATA is not the statement of this keyset"
                    + (" and our nonce" if nonce is not None else ""),
                )
            )
        rows.append(_aci_expiry(keyset, self.now))
        rows.append(_aci_provenance(att, report))
        rows.append(_aci_custody(att, keyset, report, self.kms_roots))
        return rows

    def gpu_nonce(
        self, report: AttestationReport, report_data: bytes, nonce: bytes | None
    ) -> bytes:
        return bytes(report_data[:32])


def _aci_endorsement(att: Mapping[str, Any], identity: Any, digest: str) -> Check:
    import coincurve

    from .. import aci

    cid = CheckId.ACI_ENDORSEMENT
    endorsement = att.get("keyset_endorsement")
    if not isinstance(endorsement, Mapping) or not isinstance(identity, Mapping):
        return Check.failed(cid, "no keyset endorsement or identity key")
    payload = aci.endorsement_payload(digest)
    try:
        value = bytes.fromhex(str(endorsement.get("value")))
        key = bytes.fromhex(str(identity.get("public_key")))
        if (
            endorsement.get("algo") == "ecdsa-secp256k1"
            and identity.get("algo") == "ecdsa-secp256k1"
        ):
            der = coincurve.ecdsa.cdata_to_der(coincurve.ecdsa.deserialize_compact(value[:64]))
            ok = coincurve.PublicKey(key).verify(der, hashlib.sha256(payload).digest(), hasher=None)
        elif endorsement.get("algo") == "ed25519":
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            try:
                Ed25519PublicKey.from_public_bytes(key).verify(value, payload)
                ok = True
            except InvalidSignature:
                ok = False
        else:
            return Check.failed(cid, f"endorsement algorithm {endorsement.get('algo')!r} unknown")
    except (ValueError, TypeError):
        ok = False
    return (
        Check.passed(cid, "the identity key endorses this keyset digest")
        if ok
        else Check.failed(cid, "the keyset endorsement does not verify under the identity key")
    )


def _aci_provenance(att: Mapping[str, Any], report: AttestationReport) -> Check:
    """§9.1 step 4: the stated source provenance, corroborated by measurement.

    ``source_provenance`` is not bound by the quote; it counts only when the
    booted ``app_compose`` the report carries hashes to the compose hash the
    event log measured into RTMR3 (trusted because ``eventlog.replay``, an
    enforced row, replays that log to the quote) and names the stated image
    digest or commit. No claim, or no ``app_compose`` to check it by, is a
    skipped row (enforced: fail closed; ``allow_missing_provenance`` waives
    it, as the development policy does); a claim the measurement
    contradicts fails.
    """
    cid = CheckId.ACI_PROVENANCE
    prov = att.get("source_provenance")
    prov = prov if isinstance(prov, Mapping) else {}
    commit, repo, image = prov.get("repo_commit"), prov.get("repo_url"), prov.get("image_digest")
    named = [x for x in (image, commit) if isinstance(x, str) and x]
    if not (isinstance(image, str) and image) and not (
        isinstance(repo, str) and repo and isinstance(commit, str) and commit
    ):
        return Check.skipped(
            cid, "no source provenance stated (repo_url + repo_commit, or image_digest)"
        )
    claim = f"{repo}@{commit}" if commit else str(image)
    compose = (att.get("evidence") or {}).get("app_compose")
    if not isinstance(compose, str) or not compose:
        return Check.skipped(
            cid,
            f"provenance {claim} is stated, not corroborated: the report carries no "
            "app_compose to match the measured compose-hash",
        )
    measured = eventlog.runtime_facts(report.event_log).compose_hash
    stated = hashlib.sha256(compose.encode()).digest()
    if measured is None or not hmac.compare_digest(measured, stated):
        return Check.failed(cid, "the report's app_compose is not the compose-hash RTMR3 measured")
    if not any(x in compose for x in named):
        return Check.failed(
            cid, f"the measured app_compose names neither the stated image nor commit ({claim})"
        )
    return Check.passed(cid, f"the measured app_compose names the stated provenance ({claim})")


def _listed_keys(keyset: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(what, algo, public key) of every non-TLS key the keyset lists."""
    out: list[tuple[str, str, str]] = []
    identity = (keyset.get("workload_identity") or {}).get("public_key")
    if isinstance(identity, Mapping):
        out.append(("identity", str(identity.get("algo")), str(identity.get("public_key"))))
    for field, what in (("receipt_signing_keys", "receipt"), ("e2ee_public_keys", "e2ee")):
        for entry in keyset.get(field) or []:
            if isinstance(entry, Mapping):
                name = f"{what} {entry.get('key_id')!r}"
                out.append((name, str(entry.get("algo")), str(entry.get("public_key"))))
    return out


def _aci_custody(
    att: Mapping[str, Any],
    keyset: Mapping[str, Any],
    report: AttestationReport,
    kms_roots: frozenset[str],
) -> Check:
    """§9.1 step 5 under the dstack policy: every key the keyset lists (but
    TLS, which the chain does not cover) is a KMS-released key of the measured
    app (:mod:`.dstack_kms`), under a root the policy pins (``aci_kms_roots``).
    Unpinned, the row is a named skip that says where the chains lead."""
    from .dstack_kms import normalize_key, verify_chain

    cid = CheckId.ACI_KEY_CUSTODY
    custody = (att.get("evidence") or {}).get("key_custody")
    if not isinstance(custody, Mapping) or custody.get("provider") != "dstack-kms":
        return Check.skipped(
            cid,
            "the report carries no dstack-kms custody chains: who holds the keyset's private "
            "keys is stated by the measured code, not proven"
            + ("" if kms_roots else " (no KMS root pinned)"),
            enforced=bool(kms_roots),
        )
    app_id = eventlog.runtime_facts(report.event_log).get("app-id")
    if app_id is None or len(app_id) != 20:
        return Check.failed(cid, "no measured 20-byte app-id to check the KMS chains by")
    links = {}
    for entry in custody.get("keys") or []:
        if isinstance(entry, Mapping):
            link = verify_chain(entry, app_id)
            if link is not None and link.root is not None:
                links[link.public_key] = link
    listed = []
    for what, algo, key in _listed_keys(keyset):
        norm = normalize_key(key, algo)
        listed.append((what, links.get(norm) if norm is not None else None))
    # The root the chains are judged against: a pinned one they lead to, or
    # (unpinned) the one most of them lead to, named so that it can be pinned.
    found = Counter(link.root for _, link in listed if link is not None)
    pinned = [r for r in found if r in kms_roots]
    root = pinned[0] if pinned else (found.most_common(1)[0][0] if found else None)
    proven = [(w, link) for w, link in listed if link is not None and link.root == root]
    unproven = [w for w, link in listed if link is None or link.root != root]
    tls = "; TLS keys: not covered by the chains" if keyset.get("tls_public_keys") else ""
    summary = (
        f"{len(proven)} of {len(listed)} listed keys chain to dstack KMS root {root} for the "
        f"measured app-id {app_id.hex()}"
        + (f"; not to it: {', '.join(unproven)}" if unproven else "")
        + tls
    )
    if len({link.app_key for _, link in proven}) > 1:
        return Check.failed(cid, f"{summary}, but through different app keys")
    if not kms_roots:
        return Check.skipped(
            cid, f"{summary}. Pin that root (policy aci_kms_roots) to check custody", enforced=False
        )
    if not pinned:
        return Check.failed(cid, f"{summary}: not a pinned KMS root")
    if unproven:
        return Check.failed(cid, summary)
    return Check.passed(cid, f"{summary}, a pinned root")


def _aci_expiry(keyset: Mapping[str, Any], now: float) -> Check:
    from .. import aci

    cid = CheckId.ACI_KEYSET_EXPIRY
    not_after = aci.keyset_not_after(keyset)
    if not_after is None:
        return Check.failed(cid, "the keyset states no not_after")
    if now < not_after:
        return Check.passed(cid, f"the keyset is valid until {not_after}")
    return Check.failed(cid, f"the keyset expired at {not_after}")


def _aci(
    doc: Mapping[str, Any], revision: str, now: float, kms_roots: frozenset[str] = frozenset()
) -> list[tuple[str, AttestationReport, Binder | None, _Post]]:
    att = doc["attestation"]
    evidence = att["evidence"]
    event_log = evidence.get("event_log") or []
    if isinstance(event_log, str):
        event_log = json.loads(event_log)
    report = AttestationReport(
        intel_quote=_hex(evidence["quote"], "attestation.evidence.quote"),
        signing_algo="ed25519",
        signing_address=b"",
        event_log=eventlog.parse_event_log(event_log),
        raw=doc,
    )
    return [("gateway", report, _AciBinder(doc, revision, now, kms_roots), lambda v: None)]


def aci_component(
    doc: Mapping[str, Any], revision: str, now: float, kms_roots: frozenset[str] = frozenset()
) -> tuple[AttestationReport, Binder]:
    """An ``aci/1`` report of the named revision (``"current"`` or ``"rev-a"``)
    as the quote to verify and the binder of its ACI rows: what the client
    SDK verifies with its own verifier (:meth:`.Verifier.verify` ``binder=``).
    ``now`` (Unix seconds) is what the keyset's expiry is checked against;
    ``kms_roots`` the policy's ``aci_kms_roots`` (key custody). Raises
    :class:`~enclaved.errors.EvidenceParseError` for a malformed report."""
    if revision not in ("current", "rev-a"):
        raise EvidenceParseError(f"unknown aci/1 revision {revision!r}")
    try:
        [(_, report, binder, _)] = _aci(doc, revision, now, kms_roots)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise EvidenceParseError(
            f"aci-{revision} document: malformed ({type(exc).__name__}: {exc})"
        ) from exc
    assert binder is not None
    return report, binder


def _post_chutes(v: AttestationVerdict) -> None:
    for c in list(v.checks):
        if (
            c.id
            in (
                CheckId.EVENTLOG_REPLAY,
                CheckId.EVENTLOG_RTMR3_DIGESTS,
                CheckId.MEASUREMENTS_COMPOSE_HASH,
                CheckId.MEASUREMENTS_MRCONFIGID,
            )
            and c.status is Status.SKIPPED
        ):
            _replace_row(v, c.id, dataclasses.replace(c, reason=f"{_CHUTES_NO_LOG} ({c.reason})"))
        if c.id == CheckId.NVIDIA_PAYLOAD_NONCE and c.status is Status.PASS:
            _replace_row(
                v,
                c.id,
                dataclasses.replace(
                    c, reason="payload nonce = REPORTDATA[0:32] (each GPU's SPDM nonce below)"
                ),
            )


__all__ = [
    "FORMATS",
    "Component",
    "DocumentVerdict",
    "aci_component",
    "detect_format",
    "load_document",
    "verify_document",
]
