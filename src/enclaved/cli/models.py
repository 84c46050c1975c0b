"""``enclaved models``: list the models a service offers, with their privacy.

::

    enclaved models                      # a local enclaved server
    enclaved models --base-url https://api.venice.ai/api/v1 --private

One line per model: the id, ``E2EE`` / ``TEE`` from the capabilities the
server states, and the display name. The list is the server's claim, not
verified: the proof comes per request (``enclaved chat``, ``enclaved attest``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..protocol import routes
from . import _client_common as common


def add_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the models of a service (TEE / E2EE capabilities as the server states them)",
        description="List the models a service offers. Capabilities are the server's claims; "
        "use 'enclaved attest' or 'enclaved chat' to verify a model's enclave.",
    )
    p.add_argument("--private", action="store_true", help="only TEE / E2EE models")
    p.add_argument("--json", action="store_true", help="print the server's JSON as is")
    common.add_connection_args(p)
    p.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    import httpx

    url = common.base_url(args) + routes.MODELS
    headers = {"accept": "application/json"}
    key = common.api_key(args)
    if key:
        headers["authorization"] = f"Bearer {key}"
    try:
        with httpx.Client(timeout=args.timeout) as http:
            response = http.get(url, headers=headers)
    except httpx.HTTPError as exc:
        print(f"enclaved: cannot reach {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return common.EXIT_NETWORK
    if response.status_code != 200:
        print(f"enclaved: {url} answered HTTP {response.status_code}", file=sys.stderr)
        return common.EXIT_NETWORK
    try:
        doc = response.json()
        data = doc["data"]
        assert isinstance(data, list)
    except (ValueError, KeyError, TypeError, AssertionError):
        print(f"enclaved: {url} did not answer a model list", file=sys.stderr)
        return common.EXIT_NETWORK
    if args.json:
        print(json.dumps(doc, indent=2))
        return common.EXIT_OK
    for model in data:
        if not isinstance(model, dict) or not isinstance(model.get("id"), str):
            continue
        spec = model.get("model_spec")
        spec = spec if isinstance(spec, dict) else {}
        caps = spec.get("capabilities")
        caps = caps if isinstance(caps, dict) else {}
        flags = [
            name
            for name, key in (("E2EE", "supportsE2EE"), ("TEE", "supportsTeeAttestation"))
            if caps.get(key)
        ]
        if args.private and not flags:
            continue
        name = spec.get("name")
        name = name if isinstance(name, str) else ""
        print(f"{model['id']:<40} {' '.join(flags):<9} {name}".rstrip())
    return common.EXIT_OK
