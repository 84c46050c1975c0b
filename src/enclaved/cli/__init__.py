"""The ``enclaved`` command.

Each subcommand lives in its own module under :mod:`enclaved.cli` and
registers itself through ``add_parsers(subparsers)``. Modules are imported
lazily by :func:`main` so that ``enclaved verify`` does not import the server
stack and ``enclaved serve`` does not import the client.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that contribute subcommands, in ``--help`` order.
_COMMAND_MODULES = (
    "enclaved.cli.serve",
    "enclaved.cli.chat",
    "enclaved.cli.verify",
    "enclaved.cli.signature",
    "enclaved.cli.models",
    "enclaved.cli.proxy",
)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="enclaved",
        description="Private LLM inference that proves itself: serve it, or talk to it and check it.",
    )
    parser.add_argument("--version", action="version", version=f"enclaved {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that subcommand is not part of this build yet
                continue
            raise
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
