"""``enclaved verify`` and ``enclaved attest``: check an enclave's attestation.

``enclaved verify FILE`` checks a saved attestation report (the JSON document
of ``GET /tee/attestation``); ``enclaved attest --model M`` fetches a fresh
one with a new random 32-byte nonce and checks it.

Both print one row per check (pass / fail / skipped, whether the policy
enforces it, and why), or the verdict as JSON with ``--json``.

Exit codes (stable, for scripts):

== ============================================================================
0  every enforced check passed
2  verification failed (a signature, chain, binding, nonce or replay check)
3  network: the server, Intel PCS or NVIDIA could not be reached, or answered
   with an error
4  policy: the evidence is authentic but the policy rejects it (e.g. an MRTD
   not in the allowlist, a TCB status not accepted), or the policy file is
   invalid
5  parse: the report, the quote, the GPU evidence or an option is malformed
== ============================================================================

``verify`` without ``--nonce`` cannot know which nonce the report should
answer: it checks that the report is internally bound to *its own* nonce and
says loudly that freshness was NOT checked (row ``report.nonce`` skipped,
waived by ``allow_missing_nonce``). A replayed report passes that; only a
nonce you chose proves freshness.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ..errors import (
    APIError,
    ConfigError,
    EvidenceParseError,
    NetworkError,
    PolicyError,
)
from ..protocol import routes
from ._client_common import API_KEY_HELP, DEFAULT_BASE_URL, api_key, base_url, error_message

EXIT_OK = 0
EXIT_VERIFICATION = 2
EXIT_NETWORK = 3
EXIT_POLICY = 4
EXIT_PARSE = 5


def add_parsers(subparsers: Any) -> None:
    """Register ``verify`` and ``attest`` on the ``enclaved`` command."""
    v = subparsers.add_parser(
        "verify",
        help="verify a saved attestation report",
        description="Verify an attestation report (JSON of GET /tee/attestation). "
        "Exit 0: all enforced checks passed; 2: verification failed; 3: network; "
        "4: policy; 5: parse.",
    )
    v.add_argument("file", metavar="FILE", help="the report JSON ('-' for stdin)")
    v.add_argument("--nonce", metavar="HEX", help="the 32-byte nonce you sent (64 hex)")
    v.add_argument(
        "--at",
        metavar="ISO-TIME",
        help="verify as of this time (e.g. a capture's time), default now",
    )
    v.add_argument(
        "--e2e-instances",
        metavar="FILE",
        help="chutes: the /e2e/instances/{chute} answer (each instance's E2E key), merged "
        "into FILE (the /chutes/{chute}/evidence answer)",
    )
    _common(v)
    v.set_defaults(func=run_verify)

    a = subparsers.add_parser(
        "attest",
        help="fetch a fresh attestation report and verify it",
        description="Fetch GET /tee/attestation with a fresh random nonce and verify it. "
        "Exit codes as for 'verify'.",
    )
    a.add_argument(
        "--model",
        help="model id, e.g. e2ee-qwen3-5-122b-a10b (chutes: the chute id); required but for "
        "an aci/1 report, which is service-wide (given, it is sent along)",
    )
    a.add_argument(
        "--provider",
        choices=("protocol", "nearcloud", "chutes", "aci-current", "aci-rev-a"),
        default="protocol",
        help="the service's API: protocol (GET /tee/attestation, the default), nearcloud "
        "(GET /attestation/report, e.g. https://cloud-api.near.ai/v1), chutes "
        "(/e2e/instances and /chutes/{id}/evidence, e.g. https://api.chutes.ai), or "
        "aci-current / aci-rev-a (GET /aci/attestation, the aci/1 report of that revision)",
    )
    a.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help=f"API root of the service [$ENCLAVED_BASE_URL, else {DEFAULT_BASE_URL}]",
    )
    a.add_argument("--api-key", default=None, metavar="KEY", help=API_KEY_HELP)
    a.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds")
    a.add_argument("--save", metavar="FILE", help="also save the report as received")
    _common(a)
    a.set_defaults(func=run_attest)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-root",
        metavar="PEM",
        action="append",
        default=[],
        help="also trust this root certificate: the development root of a SIMULATED TEE "
        "(<data_dir>/dev-root-ca.pem). Without --policy this selects the development "
        "policy (no collateral or GPUs required). Proves nothing about hardware",
    )
    p.add_argument("--policy", metavar="TOML", help="policy file (default: strict)")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--collateral",
        metavar="DIR",
        help="read Intel collateral (and recorded NRAS answers) from DIR, e.g. a capture's "
        "responses/ folder, instead of asking Intel PCS",
    )
    src.add_argument("--pcs-url", metavar="URL", help="Intel PCS base URL (default Intel's)")
    p.add_argument(
        "--nras",
        action="store_true",
        help="also have NVIDIA's attestation service (NRAS) judge the GPUs and require it "
        "(with --collateral: its recorded answer)",
    )
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument(
        "--format",
        choices=("protocol", "nearcloud", "chutes", "aci-current", "aci-rev-a"),
        default=None,
        help="the report's format (default: recognised by its shape; an aci/1 report's "
        "revision must be named: aci-current or aci-rev-a)",
    )


# --- the two commands ---------------------------------------------------------


def run_verify(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    try:
        policy = _load_policy(args)
        nonce = _parse_nonce(args.nonce) if args.nonce else None
        now = _parse_time(args.at) if args.at else datetime.now(UTC)
        raw = sys.stdin.buffer.read() if args.file == "-" else _read(args.file)
        if args.e2e_instances:
            raw = _merge(raw, _read(args.e2e_instances))
        if nonce is None:
            policy = dataclasses.replace(policy, allow_missing_nonce=True)
            print(
                "WARNING: no --nonce given: checking the report against its OWN nonce. "
                "Freshness is NOT checked; a replayed report would pass.",
                file=err,
            )
        return _verify_and_print(raw, nonce, policy, args, now, out, err)
    except _Exit as exc:
        return exc.code


def run_attest(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    try:
        policy = _load_policy(args)
        url = base_url(args)
        if args.model is None and not args.provider.startswith("aci-"):
            raise _fail(EXIT_PARSE, f"--model is required with --provider {args.provider}")
        nonce = new_nonce()
        raw = _fetch_report(
            url, args.model, nonce, api_key(args), args.timeout, provider=args.provider
        )
        if args.provider != "protocol" and args.format is None:
            args.format = args.provider
        if args.save:
            Path(args.save).write_bytes(raw)
        return _verify_and_print(raw, nonce, policy, args, clock(), out, err)
    except _Exit as exc:
        return exc.code


# --- hooks tests replace ---------------------------------------------------------


def new_nonce() -> bytes:
    """A fresh 32-byte nonce from the OS CSPRNG."""
    return secrets.token_bytes(32)


def clock() -> datetime:
    return datetime.now(UTC)


#: Builds the HTTP client for ``attest`` (tests pass an ``httpx.MockTransport``).
http_client_factory: Callable[..., Any] | None = None


# --- steps ------------------------------------------------------------------------


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _fail(code: int, message: str) -> _Exit:
    print(f"enclaved: {message}", file=sys.stderr)
    return _Exit(code)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _fail(EXIT_PARSE, f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse_nonce(text: str) -> bytes:
    t = text.strip()
    if t[:2] in ("0x", "0X"):
        t = t[2:]
    try:
        nonce = bytes.fromhex(t)
    except ValueError as exc:
        raise _fail(EXIT_PARSE, "--nonce must be hex-encoded") from exc
    if len(nonce) != 32:
        raise _fail(EXIT_PARSE, "--nonce must be 32 bytes (64 hex characters)")
    return nonce


def _parse_time(text: str) -> datetime:
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(t)
    except ValueError as exc:
        raise _fail(EXIT_PARSE, f"--at: not an ISO 8601 time: {text!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


def _load_policy(args: argparse.Namespace) -> Any:
    from ..attestation.policy import Policy

    try:
        policy = Policy.from_file(args.policy) if args.policy else None
        extra = tuple(Path(p).read_text(encoding="ascii") for p in args.trust_root)
    except (PolicyError, ConfigError) as exc:
        raise _fail(EXIT_POLICY, str(exc)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(EXIT_PARSE, f"--trust-root: {exc}") from exc
    try:
        if policy is None and extra:
            # A development root without a policy file: the simulated TEE,
            # which has no collateral or GPUs (as the client does).
            policy = Policy.development(extra[0])
            extra = extra[1:]
        policy = policy or Policy.strict()
        if extra:
            policy = dataclasses.replace(
                policy, allow_development_roots=policy.allow_development_roots + extra
            )
    except PolicyError as exc:
        raise _fail(EXIT_PARSE, f"--trust-root: {exc}") from exc
    if args.nras:
        policy = dataclasses.replace(policy, require_nras=True)
    return policy


def _collateral(args: argparse.Namespace) -> Any:
    from ..attestation import verifier

    if args.collateral:
        path = Path(args.collateral)
        if not path.is_dir():
            raise _fail(EXIT_PARSE, f"--collateral: {path} is not a directory")
        return verifier.directory_collateral(path)
    if args.pcs_url:
        return verifier.pcs_collateral(args.pcs_url)
    # Intel PCS when the policy needs collateral; none when it allows missing collateral.
    return verifier.AUTO


def _nras(args: argparse.Namespace) -> Any:
    if not args.nras:
        return None
    from ..attestation import verifier

    if args.collateral:
        return verifier.recorded_nras(Path(args.collateral))
    return verifier.online_nras()


def _merge(evidence: bytes, instances: bytes) -> bytes:
    """A Chutes evidence answer with the E2E instances answer merged in."""
    try:
        ev, inst = json.loads(evidence), json.loads(instances)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(EXIT_PARSE, "malformed attestation report: not valid JSON") from exc
    if not isinstance(ev, dict) or not isinstance(inst, dict):
        raise _fail(EXIT_PARSE, "malformed attestation report: expected JSON objects")
    return json.dumps({**ev, "instances": inst.get("instances")}).encode()


def _fetch_report(
    base_url: str,
    model: str | None,
    nonce: bytes,
    api_key: str | None,
    timeout: float,
    *,
    provider: str = "protocol",
) -> bytes:
    import httpx

    headers = {"Accept": "application/json", "User-Agent": "enclaved-attest"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    factory = http_client_factory or httpx.Client

    def get(url: str, params: dict[str, str] | None) -> bytes:
        try:
            with factory(timeout=timeout) as client:
                response = client.get(url, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise _fail(EXIT_NETWORK, f"cannot reach {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            message = error_message(response)
            raise _fail(EXIT_NETWORK, f"{url} answered HTTP {response.status_code}: {message}")
        return bytes(response.content)

    if provider.startswith("aci-"):
        query = {"nonce": nonce.hex(), **({"model": model} if model else {})}
        return get(base_url + routes.ACI_ATTESTATION, query)
    assert model is not None  # run_attest requires it for every other provider
    if provider == "nearcloud":
        params = {
            "model": model,
            "nonce": nonce.hex(),
            "signing_algo": "ed25519",
            "include_tls_fingerprint": "true",
        }
        return get(base_url + "/attestation/report", params)
    if provider == "chutes":
        instances = get(f"{base_url}/e2e/instances/{model}", None)
        evidence = get(f"{base_url}/chutes/{model}/evidence", {"nonce": nonce.hex()})
        return _merge(evidence, instances)
    return get(base_url + routes.ATTESTATION, {"model": model, "nonce": nonce.hex()})


def _verify_and_print(
    raw: bytes,
    nonce: bytes | None,
    policy: Any,
    args: argparse.Namespace,
    now: datetime,
    out: TextIO,
    err: TextIO,
) -> int:
    from ..attestation.checks import Verdict
    from ..attestation.document import AttestationReport
    from ..attestation.formats import detect_format, load_document
    from ..client._attest import refuse_untrusted_simulated

    try:
        doc = load_document(raw)
        fmt = getattr(args, "format", None) or detect_format(doc)
    except EvidenceParseError as exc:
        raise _fail(EXIT_PARSE, f"malformed attestation report: {exc}") from exc
    if fmt != "protocol":
        return _verify_document(doc, fmt, nonce, policy, args, now, out, err)
    try:
        report = AttestationReport.from_json(doc)
    except EvidenceParseError as exc:
        raise _fail(EXIT_PARSE, f"malformed attestation report: {exc}") from exc

    refused = refuse_untrusted_simulated(report, policy)
    if refused is not None:
        # As chat, the SDK and the proxy say it: no trip to Intel's servers
        # for a quote that cannot chain to Intel's root.
        print(f"enclaved: verification failed: {refused.id}: {refused.reason}", file=err)
        verdict = Verdict([refused])
    else:
        verdict = _run_verifier(report, nonce, policy, args, now, err)

    code = exit_code(verdict)
    if args.json:
        doc = verdict.to_dict()
        doc["exit_code"] = code
        doc["nonce"] = nonce.hex() if nonce is not None else None
        doc["freshness_checked"] = nonce is not None
        doc["verified_at"] = now.isoformat()
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(verdict.table(), file=out)
        print(file=out)
        print(_summary(verdict, code, nonce), file=out)
    return code


def _verify_document(
    doc: Any,
    fmt: str,
    nonce: bytes | None,
    policy: Any,
    args: argparse.Namespace,
    now: datetime,
    out: TextIO,
    err: TextIO,
) -> int:
    """A multi-TD format (:mod:`enclaved.attestation.formats`): one block per component."""
    from ..attestation.formats import verify_document

    verdict = _verify_with(
        policy,
        args,
        now,
        err,
        lambda verifier: verify_document(verifier, doc, nonce=nonce, format=fmt),
    )
    codes = [exit_code(c.verdict) for c in verdict.components]
    code = max(codes) if codes else EXIT_VERIFICATION
    if code == EXIT_POLICY and EXIT_VERIFICATION in codes:
        code = EXIT_VERIFICATION
    if args.json:
        body = verdict.to_dict()
        body["exit_code"] = code
        body["nonce"] = nonce.hex() if nonce is not None else None
        body["freshness_checked"] = nonce is not None
        body["verified_at"] = now.isoformat()
        print(json.dumps(body, indent=2), file=out)
    else:
        print(verdict.table(), file=out)
        print(file=out)
        if code == EXIT_OK:
            fresh = "" if nonce is not None else " (freshness NOT checked: no --nonce)"
            print(
                f"VERIFIED ({fmt}): every enforced check of every component passed{fresh}.",
                file=out,
            )
        else:
            bad = ", ".join(f"{name}: {c.id}" for name, c in verdict.failures)
            what = "VERIFICATION FAILED" if code == EXIT_VERIFICATION else "POLICY VIOLATION"
            print(f"{what} ({fmt}): {bad}", file=out)
    return code


def _run_verifier(
    report: Any,
    nonce: bytes | None,
    policy: Any,
    args: argparse.Namespace,
    now: datetime,
    err: TextIO,
) -> Any:
    # Intel PCS / NRAS first (the sync getters), then the pure check.
    return _verify_with(
        policy,
        args,
        now,
        err,
        lambda verifier: verifier.verify(report, nonce=nonce, fetched=verifier.fetch(report)),
    )


def _verify_with(
    policy: Any,
    args: argparse.Namespace,
    now: datetime,
    err: TextIO,
    run: Callable[[Any], Any],
) -> Any:
    """``run(verifier)`` with the command's collateral, NRAS and clock; each
    distinct relaxation warning printed once; errors as the command's exits."""
    from ..attestation.policy import InsecurePolicyWarning
    from ..attestation.verifier import Verifier

    try:
        collateral, nras = _collateral(args), _nras(args)
    except ConfigError as exc:
        raise _fail(EXIT_PARSE, str(exc)) from exc
    verifier = Verifier(policy, collateral=collateral, nras=nras, now=lambda: now)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InsecurePolicyWarning)
        try:
            result = run(verifier)
        except EvidenceParseError as exc:
            raise _fail(EXIT_PARSE, f"malformed evidence: {exc}") from exc
        except (NetworkError, APIError) as exc:
            raise _fail(EXIT_NETWORK, f"network: {exc}") from exc
    relaxations = [str(w.message) for w in caught if issubclass(w.category, InsecurePolicyWarning)]
    for message in dict.fromkeys(relaxations):
        print(f"WARNING: {message}", file=err)
    return result


def exit_code(verdict: Any) -> int:
    """0 ok; 2 when any enforced verification row failed; else 4 (policy)."""
    if verdict.ok:
        return EXIT_OK
    if any(c.kind != "policy" for c in verdict.failures):
        return EXIT_VERIFICATION
    return EXIT_POLICY


def _summary(verdict: Any, code: int, nonce: bytes | None) -> str:
    if code == EXIT_OK:
        fresh = "" if nonce is not None else " (freshness NOT checked: no --nonce)"
        return f"VERIFIED: every enforced check passed{fresh}."
    bad = ", ".join(c.id for c in verdict.failures)
    what = "VERIFICATION FAILED" if code == EXIT_VERIFICATION else "POLICY VIOLATION"
    return f"{what}: {bad}"


__all__ = ["add_parsers", "exit_code", "run_attest", "run_verify"]
