"""``enclaved proxy``: a local OpenAI-compatible endpoint that attests and encrypts.

::

    enclaved proxy --upstream https://api.venice.ai/api/v1
    # any OpenAI client: base_url="http://127.0.0.1:8787/v1"

Listens on loopback only - it accepts plaintext prompts, so it refuses any
``--host`` that is not a loopback address. Forwards ``/v1/models`` and
``/v1/chat/completions`` through the enclaved transport: each node is
attested under your policy, prompts are sealed to the attested key, answers
decrypted and their signatures checked; streams stay streams. Chat for
models that are not ``e2ee-*`` is refused unless ``--allow-plaintext-models``.
See :mod:`enclaved.client.proxy`.

The upstream API key comes from ``--api-key`` / ``$ENCLAVED_API_KEY``; without
one, the local caller's ``Authorization`` header is forwarded.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import _client_common as common
from ._listen import bind, bind_error, url_of

DEFAULT_PORT = 8787


def add_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "proxy",
        help="local OpenAI-compatible endpoint: plaintext in, attested E2EE out (loopback only)",
        description="Serve an OpenAI-compatible API on loopback that forwards to --upstream with "
        "attestation, end-to-end encryption and signature checks.",
    )
    p.add_argument(
        "--upstream",
        metavar="URL",
        help="API root of the real service [$ENCLAVED_BASE_URL, else http://127.0.0.1:8000/v1]",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help="the upstream's API key [$ENCLAVED_API_KEY; never $OPENAI_API_KEY, which belongs to "
        "the apps that call the proxy]; prefer the environment. Without one, each caller's "
        "Authorization header is forwarded",
    )
    p.add_argument(
        "--allow-plaintext-models",
        action="store_true",
        help="also forward chat for tee-* and other models (their prompts leave this machine unencrypted)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="log verbosity",
    )
    common.add_stream_binding_arg(p)
    common.add_aci_arg(p)
    common.add_trust_args(p)
    p.set_defaults(func=run_proxy)


def run_proxy(args: argparse.Namespace) -> int:
    import logging
    import os

    import uvicorn

    from ..client.proxy import create_proxy_app, is_loopback_host

    err = sys.stderr
    if not is_loopback_host(args.host):
        print(
            f"enclaved: refusing --host {args.host}: the proxy takes plaintext prompts and listens "
            "on loopback only (127.0.0.1, ::1, localhost)",
            file=err,
        )
        return common.EXIT_INPUT
    upstream = (
        args.upstream or os.environ.get("ENCLAVED_BASE_URL") or common.DEFAULT_BASE_URL
    ).rstrip("/")
    try:
        app = create_proxy_app(
            upstream,
            policy=common.policy(args),
            api_key=args.api_key or os.environ.get("ENCLAVED_API_KEY") or None,
            allow_plaintext_models=args.allow_plaintext_models,
            **common.stream_binding_kwargs(args),
            **common.aci_kwargs(args),
        )
    except Exception as exc:  # noqa: BLE001 - describe_error re-raises unknown ones
        code, message = common.describe_error(exc)
        print(f"enclaved: {message}", file=err)
        return code
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # httpx logs full URLs at INFO; the proxy's own lines are enough.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"enclaved proxy: {bind_error(args.host, args.port, exc)}", file=err)
        return 1
    with sock:
        # Printed once the port is ours: the URL shown is one that answers.
        print(f"enclaved proxy: {url_of(sock)}/v1 -> {upstream}", file=err, flush=True)
        config = uvicorn.Config(app, log_level=args.log_level, access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
    return common.EXIT_OK
