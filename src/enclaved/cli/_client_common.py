"""What the client commands (``chat``, ``models``, ``signature``, ``proxy``) share.

Options, with their environment fallbacks:

===================  ======================  ==================================
flag                 environment             default
===================  ======================  ==================================
``--base-url``       ``ENCLAVED_BASE_URL``   ``http://127.0.0.1:8000/v1`` (a
                                             local ``enclaved serve``)
``--api-key``        ``ENCLAVED_API_KEY``,   none (a server without keys)
                     ``OPENAI_API_KEY``
``--trust-root``     -                       none: Intel's root only
``--policy``         -                       strict
===================  ======================  ==================================

Prefer the environment for the API key: a flag is visible to other users
in ``ps`` and kept in shell history.

Exit codes match ``enclaved verify``: 0 ok, 2 verification failed (the
attestation, a response signature, or decryption), 3 network or server
error, 4 policy, 5 parse (a malformed attestation document), bad input or
configuration.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import (
    APIError,
    ConfigError,
    CryptoError,
    Error,
    EvidenceParseError,
    NetworkError,
    PolicyError,
    VerificationError,
)

EXIT_OK = 0
EXIT_VERIFICATION = 2
EXIT_NETWORK = 3
EXIT_POLICY = 4
EXIT_INPUT = 5

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
#: Every command that talks to a service reads its key the same way (:func:`api_key`).
API_KEY_HELP = "API key [$ENCLAVED_API_KEY, else $OPENAI_API_KEY]; prefer the environment"


def add_connection_args(p: argparse.ArgumentParser, *, base_url_flag: str = "--base-url") -> None:
    p.add_argument(
        base_url_flag,
        dest="base_url",
        metavar="URL",
        help=f"API root of the service [$ENCLAVED_BASE_URL, else {DEFAULT_BASE_URL}]",
    )
    p.add_argument("--api-key", metavar="KEY", help=API_KEY_HELP)
    add_trust_args(p)
    p.add_argument(
        "--timeout", type=float, default=600.0, help="HTTP timeout in seconds (default 600)"
    )


def add_trust_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-root",
        metavar="PEM",
        help="trust this root certificate too: the development root of a SIMULATED TEE "
        "(<data_dir>/dev-root-ca.pem). Proves nothing about hardware. Without --policy it also "
        "selects the development policy (no Intel collateral or GPU evidence required, "
        "for every node); with --policy only the root is added",
    )
    p.add_argument("--policy", metavar="TOML", help="attestation policy file (default: strict)")


def add_stream_binding_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--require-stream-binding",
        action="store_true",
        help="refuse an e2ee-* answer whose node did not bind its response key to the request, "
        "so that no text is shown before it is authenticated (the production service does not "
        "send the binding yet), and any tee-* stream",
    )


def add_aci_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--aci",
        choices=["current", "rev-a"],
        help="the aci/1 revision the service speaks (never guessed): also verify its aci/1 "
        "report (the keyset, bound to the node attested) and every answer's signed receipt "
        "over the exact bytes exchanged",
    )


def aci_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``aci=<revision>`` when ``--aci`` is given; nothing otherwise."""
    return {"aci": args.aci} if getattr(args, "aci", None) else {}


def stream_binding_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``require_stream_binding=True`` when the flag is set; nothing otherwise
    (a test's client factory need not know the option)."""
    return {"require_stream_binding": True} if args.require_stream_binding else {}


def base_url(args: argparse.Namespace) -> str:
    return str(args.base_url or os.environ.get("ENCLAVED_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def api_key(args: argparse.Namespace) -> str | None:
    return (
        args.api_key
        or os.environ.get("ENCLAVED_API_KEY")
        or os.environ.get("OPENAI_API_KEY")
        or None
    )


def policy(args: argparse.Namespace) -> Any:
    """The :class:`Policy` the options describe (``--policy`` plus ``--trust-root``).

    A relaxed policy warns of every relaxation on every verification; the
    command prints each distinct warning once, on one line
    (:func:`enclaved.cli.main`).
    """
    from ..client.transport import build_policy

    return build_policy(args.policy, args.trust_root)


def verified_line(node: Any, *, plaintext_prompt: bool = False) -> str:
    """What the client commands print once a node's attestation passed."""
    notes = []
    if node.tee_hardware == "simulated":
        notes.append("SIMULATED TEE: proves nothing about hardware")
    if plaintext_prompt:
        notes.append("no E2EE: the prompt is sent to the enclave in plaintext")
    suffix = f" ({'; '.join(notes)})" if notes else ""
    return f"verified: {node.describe()}{suffix}"


def describe_error(exc: BaseException, *, url: str | None = None) -> tuple[int, str]:
    """An exit code and a one-line message for an error a client command met.

    Verification failures name the failing check (``attestation check
    binding.report_data.nonce fail: ...``); decryption failures say only
    that. When the development root is needed but not trusted, the message
    says how to trust it. ``url``, where given, is named when it cannot be
    reached.
    """
    import httpx

    try:
        import openai
    except ImportError:  # pragma: no cover
        openai = None  # type: ignore[assignment]  # a module, or None where it is missing

    if isinstance(exc, VerificationError):
        msg = f"verification failed: {exc}"
        if _needs_dev_root(exc):
            msg += (
                " - is this a SIMULATED TEE? Then trust its development root explicitly: "
                "--trust-root <data_dir>/dev-root-ca.pem"
            )
        return EXIT_VERIFICATION, msg
    if isinstance(exc, PolicyError):
        return EXIT_POLICY, f"policy not satisfied: {exc}"
    if isinstance(exc, EvidenceParseError):
        return EXIT_INPUT, f"malformed attestation: {exc}"
    if isinstance(exc, CryptoError):
        return EXIT_VERIFICATION, f"verification failed: {exc}"
    if isinstance(exc, ConfigError):
        return EXIT_INPUT, str(exc)
    if isinstance(exc, APIError):
        code = f" [{exc.code}]" if exc.code else ""
        return EXIT_NETWORK, f"server error{code}: {exc.message}"
    if isinstance(exc, NetworkError):
        return EXIT_NETWORK, str(exc)
    if openai is not None:
        if isinstance(exc, openai.APIStatusError):
            return EXIT_NETWORK, f"server answered HTTP {exc.status_code}: {_openai_message(exc)}"
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            if isinstance(cause, Error):
                # openai 1.x wraps whatever the transport raises, checks included.
                return describe_error(cause, url=url)
            what = f"{type(cause).__name__}: {cause}" if cause else str(exc)
            return EXIT_NETWORK, f"cannot reach {url or 'the server'}: {what}"
        if isinstance(exc, openai.APIError):
            return EXIT_NETWORK, f"server error: {exc.message}"
    if isinstance(exc, httpx.HTTPError):
        return EXIT_NETWORK, f"cannot reach {url or 'the server'}: {type(exc).__name__}: {exc}"
    raise exc


def error_message(response: Any) -> str:
    """The ``error.message`` of an HTTP error response, else the start of its body."""
    try:
        doc = response.json()
        msg = doc.get("error", {}).get("message") if isinstance(doc, dict) else None
        if isinstance(msg, str):
            return msg
    except ValueError:
        pass
    return str(response.text[:200])


def _openai_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return str(getattr(exc, "message", exc))


def _needs_dev_root(exc: VerificationError) -> bool:
    """Did the quote fail because its chain ends at a root we do not trust?"""
    verdict = getattr(exc, "verdict", None)
    rows = verdict.failures if verdict is not None else []
    for row in rows:
        text = f"{row.id} {row.reason}".lower()
        if ("root" in text or "chain" in text) and row.id.startswith("tdx"):
            return True
    return False
