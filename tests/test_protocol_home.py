"""The wire protocol has one home: ``enclaved/protocol/``.

A header name, a route, a model-id prefix or the SSE framing spelled out as a
literal anywhere else in the package is a second definition that can drift
from the first (PROTOCOL.md is pinned to the bytes). This scans the package's
code - not its docstrings - for such literals.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from enclaved.protocol import headers, routes, sse

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "enclaved"
HOME = PACKAGE / "protocol"


def _wire_literals() -> set[str]:
    names = {
        *headers.E2EE_HEADERS,
        headers.TEE,
        headers.TEE_PROVIDER,
        headers.VERIFIED_HARDWARE,
        headers.VERIFIED_ADDRESS,
        routes.CHAT,
        routes.ATTESTATION,
        routes.SIGNATURE,
        routes.MODELS,
        *routes.API_PREFIXES,
        routes.E2EE_MODEL_PREFIX,
        routes.TEE_MODEL_PREFIX,
        sse.DATA.decode(),
        sse.DONE_DATA.decode(),
        sse.DONE.decode(),
    }
    joined = {p + r for p in routes.API_PREFIXES for r in (routes.ATTESTATION, routes.SIGNATURE)}
    return {n.lower() for n in names | joined}


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the string constants that are docstrings."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _literals(source: str) -> Iterator[tuple[int, str]]:
    """The string and bytes constants of ``source`` that are not docstrings."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in skip:
            value = node.value
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if isinstance(value, str):
                yield node.lineno, value


def test_no_protocol_literal_outside_protocol() -> None:
    wire = _wire_literals()
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {value!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if HOME not in path.parents
        for line, value in _literals(path.read_text(encoding="utf-8"))
        if value.lower() in wire
    ]
    assert found == [], "use enclaved.protocol's names instead:\n" + "\n".join(found)


def test_the_scan_sees_a_literal() -> None:
    # The test above must be able to fail: a header spelled out is found, a
    # docstring that names a route is not.
    sample = '"""a docstring: /tee/attestation"""\nH = "X-Venice-TEE-Client-Pub-Key"\n'
    found = [v for _, v in _literals(sample) if v.lower() in _wire_literals()]
    assert found == ["X-Venice-TEE-Client-Pub-Key"]
