"""``enclaved measure``: the compose hash and MRCONFIGID a deployment will have.

::

    enclaved measure app-compose.json
    enclaved measure docker-compose.yml --settings app-settings.json [--output app-compose.json]

A dstack deployment is identified by its *compose hash*, SHA-256 of the app
compose document the TD is started with; the TD's MRCONFIGID is
``0x01 || compose hash || zeros``. Computing both from the deployment files
lets a client pin ``policy.compose_hash`` from what was reviewed, rather than
from what a running node says about itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..attestation.measurements import (
    COMPOSE_FILE_FIELD,
    app_compose_document,
    compose_hash,
    expected_mrconfigid,
)
from ..errors import ConfigError

EXIT_INPUT = 5  # as the other commands: bad input


def add_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "measure",
        help="print the compose hash and MRCONFIGID to pin for a dstack deployment",
        description="Print the compose hash (SHA-256 of the app compose document) and the "
        "MRCONFIGID a dstack TD started with it carries, for policy.compose_hash. FILE is an "
        "app compose document (JSON, hashed byte for byte), or a docker-compose file with "
        "--settings (the document's other fields, as JSON).",
    )
    p.add_argument("file", metavar="FILE", help="app-compose.json, or docker-compose.yml")
    p.add_argument(
        "--settings",
        metavar="JSON",
        help="the app compose fields besides the docker-compose file (manifest_version, name, "
        "runner, kms_enabled, ...): FILE is then the docker-compose file",
    )
    p.add_argument(
        "--output",
        metavar="PATH",
        help="with --settings: also write the app compose document, the exact bytes to deploy",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_measure)


def _fail(message: str) -> int:
    print(f"enclaved: measure: {message}", file=sys.stderr)
    return EXIT_INPUT


def run_measure(args: argparse.Namespace) -> int:
    try:
        content = Path(args.file).read_bytes()
        settings_raw = Path(args.settings).read_bytes() if args.settings else None
    except OSError as exc:
        return _fail(f"cannot read {exc.filename}: {exc.strerror}")
    if args.output and settings_raw is None:
        return _fail("--output needs --settings (an app compose document is deployed as it is)")
    if settings_raw is None:
        document = content
        try:
            parsed = json.loads(document)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or COMPOSE_FILE_FIELD not in parsed:
            return _fail(
                f"{args.file} is not an app compose document (JSON with {COMPOSE_FILE_FIELD!r});"
                " for a docker-compose file, give --settings"
            )
    else:
        try:
            settings = json.loads(settings_raw)
            compose_text = content.decode("utf-8")
        except (ValueError, UnicodeDecodeError) as exc:
            return _fail(f"cannot read {args.file} with {args.settings}: {exc}")
        if not isinstance(settings, dict):
            return _fail(f"{args.settings}: not a JSON object")
        try:
            document = app_compose_document(compose_text, settings)
        except ConfigError as exc:
            return _fail(f"{args.settings}: {exc}")
        if args.output:
            Path(args.output).write_bytes(document)
    digest = compose_hash(document)
    mrconfigid = expected_mrconfigid(digest)
    if args.json:
        print(json.dumps({"compose_hash": digest.hex(), "mrconfigid": mrconfigid.hex()}))
    else:
        print(f"compose_hash  {digest.hex()}")
        print(f"mrconfigid    {mrconfigid.hex()}")
        print()
        print("# in the client's policy.toml:")
        print(f'compose_hash = ["{digest.hex()}"]')
    return 0
