"""``enclaved signature``: check one response signature against the attested key.

::

    enclaved signature --model e2ee-smollm2-135m --request-id chatcmpl-... \\
        [--request request.json --response response.sse]

1. Attests the node now (fresh nonce, your policy), to learn which address
   its signatures must recover to.
2. Fetches ``GET /tee/signature?model=M&request_id=ID``.
3. Recovers the signer from the EIP-191 signature and compares it with the
   attested address.
4. With ``--request`` / ``--response`` (the exact bytes that were sent and
   received - for a stream, the whole SSE body), recomputes both SHA-256
   hashes and compares them with the signed text. Without them those rows
   are skipped: the signature then proves the node signed *some* exchange
   with this id, not which one.

Prints one row per check; exit code 0 when every enforced row passed, 2
otherwise (3 network, 4 policy, 5 bad input).

Limitation: a node makes a new key when it restarts, so a signature made
before a restart no longer matches the attested address.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..protocol import routes
from . import _client_common as common


def add_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "signature",
        help="check a response signature against the node's attested key",
        description="Fetch the signature of one completion, check it was made by the attested "
        "node key, and (with --request/--response) that it covers exactly those bytes.",
    )
    p.add_argument("--model", "-m", required=True, help="model id")
    p.add_argument(
        "--request-id", required=True, metavar="ID", help="the completion id (chatcmpl-...)"
    )
    p.add_argument("--request", metavar="FILE", help="the exact request body that was sent")
    p.add_argument("--response", metavar="FILE", help="the exact response body that was received")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    common.add_connection_args(p)
    p.set_defaults(func=run_signature)


def run_signature(args: argparse.Namespace) -> int:
    import httpx

    from ..client._attest import check_attestation, new_nonce
    from ..client._signature import check_signature_document
    from ..client.transport import build_verifier
    from ..crypto import sha256_hex

    err = sys.stderr
    try:
        request_sha = sha256_hex(Path(args.request).read_bytes()) if args.request else None
        response_sha = sha256_hex(Path(args.response).read_bytes()) if args.response else None
    except OSError as exc:
        print(f"enclaved: cannot read {exc.filename}: {exc.strerror}", file=err)
        return common.EXIT_INPUT
    base = common.base_url(args)
    headers = {"accept": "application/json"}
    key = common.api_key(args)
    if key:
        headers["authorization"] = f"Bearer {key}"
    try:
        verifier = build_verifier(common.policy(args))
        with httpx.Client(timeout=args.timeout, headers=headers) as http:
            # 1. Attest now.
            nonce = new_nonce()
            r = http.get(
                base + routes.ATTESTATION, params={"model": args.model, "nonce": nonce.hex()}
            )
            if r.status_code != 200:
                print(
                    f"enclaved: attestation: HTTP {r.status_code}: {common.error_message(r)}",
                    file=err,
                )
                return common.EXIT_NETWORK
            node = check_attestation(
                r.content,
                base_url=base,
                model=args.model,
                nonce=nonce,
                verifier=verifier,
                e2ee=False,
            )
            print(common.verified_line(node), file=err)
            # 2. The signature document.
            r = http.get(
                base + routes.SIGNATURE, params={"model": args.model, "request_id": args.request_id}
            )
            if r.status_code != 200:
                print(
                    f"enclaved: signature: HTTP {r.status_code}: {common.error_message(r)}",
                    file=err,
                )
                return common.EXIT_NETWORK
    except Exception as exc:  # noqa: BLE001 - describe_error re-raises unknown ones
        code, message = common.describe_error(exc, url=base)
        print(f"enclaved: {message}", file=err)
        return code
    # 3-4.
    result = check_signature_document(
        r.content,
        request_id=args.request_id,
        expected_address=node.signing_address,
        request_sha256=request_sha,
        response_sha256=response_sha,
    )
    if args.json:
        print(
            json.dumps(
                {"text": result.text, "signature": result.signature, **result.verdict.to_dict()},
                indent=2,
            )
        )
    else:
        print(result.verdict.table())
    if not result.ok:
        first = result.verdict.failures[0] if result.verdict.failures else None
        reason = f"{first.id}: {first.reason}" if first else "no checks ran"
        print(f"enclaved: signature NOT valid: {reason}", file=err)
        return common.EXIT_VERIFICATION
    if request_sha is None or response_sha is None:
        print("note: without --request and --response the hashes were not compared", file=err)
    return common.EXIT_OK
