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
import warnings
from collections.abc import Sequence

#: Modules that contribute subcommands, in ``--help`` order.
_COMMAND_MODULES = (
    "enclaved.cli.serve",
    "enclaved.cli.chat",
    "enclaved.cli.verify",
    "enclaved.cli.measure",
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


def _one_line_warnings() -> None:
    """Each distinct warning once, as one line on stderr.

    A relaxed attestation policy warns on every verification (a chat session
    verifies again when its attestation expires); Python's own format adds
    the source line of whoever called. A command says it once, plainly.
    """

    shown: set[str] = set()

    def show(message: Warning | str, category: type[Warning], *args: object, **kw: object) -> None:
        # Deduplicated here, not by a "once" filter: Python forgets what a
        # "once" filter has shown whenever any code changes the filters (an
        # import can), and a command that verifies twice (the attestation,
        # then an aci/1 report) printed the same line twice.
        text = str(message)
        if text not in shown:
            shown.add(text)
            print(f"enclaved: warning: {text}", file=sys.stderr)

    warnings.showwarning = show
    warnings.filterwarnings("always", message="INSECURE attestation policy")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():  # restored when the command ends (tests call main)
        _one_line_warnings()
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
