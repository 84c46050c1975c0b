"""The public surface: what ``docs/api.md`` and ``docs/errors.md`` promise.

- each public namespace's ``__all__`` is exactly the names ``docs/api.md``
  lists for it, and every one of them imports;
- every exception class enclaved defines derives from :class:`enclaved.Error`,
  and the tree has the shape ``docs/errors.md`` draws;
- library code raises a builtin exception only where the list below says why
  (caller bugs and Python protocols), never for bad input from the outside.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import enclaved
import enclaved.errors

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "enclaved"
DOCS = ROOT / "docs"


def _documented_names() -> dict[str, list[str]]:
    """``docs/api.md``: ``## `module` `` headings, then ``| `name` | ... |`` rows."""
    out: dict[str, list[str]] = {}
    module: str | None = None
    for line in (DOCS / "api.md").read_text(encoding="utf-8").splitlines():
        heading = re.fullmatch(r"## `([\w.]+)`", line.strip())
        if heading:
            module = heading.group(1)
            out[module] = []
        elif line.startswith("## "):
            module = None
        elif module is not None:
            row = re.match(r"\| `(\w+)` \|", line)
            if row:
                out[module].append(row.group(1))
    return out


DOCUMENTED = _documented_names()


def test_the_documentation_lists_every_public_namespace() -> None:
    assert set(DOCUMENTED) == {
        "enclaved",
        "enclaved.errors",
        "enclaved.crypto",
        "enclaved.attestation",
        "enclaved.attestation.tdx",
        "enclaved.attestation.nvidia",
        "enclaved.client",
        "enclaved.client.proxy",
        "enclaved.evidence",
    }
    for module, names in DOCUMENTED.items():
        assert names, module
        assert len(names) == len(set(names)), f"{module}: a name is listed twice"


@pytest.mark.parametrize("module_name", sorted(DOCUMENTED))
def test_all_is_exactly_the_documented_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), f"{module_name}.__all__ has duplicates"
    assert set(exported) == set(DOCUMENTED[module_name]), (
        f"{module_name}: exported but not in docs/api.md: "
        f"{sorted(set(exported) - set(DOCUMENTED[module_name]))}; "
        f"documented but not exported: {sorted(set(DOCUMENTED[module_name]) - set(exported))}"
    )
    for name in exported:
        assert getattr(module, name) is not None, f"{module_name}.{name}"


def test_star_import_gives_the_documented_names() -> None:
    for module_name, names in DOCUMENTED.items():
        namespace: dict[str, object] = {}
        exec(f"from {module_name} import *", namespace)  # noqa: S102 - our own module names
        assert set(names) <= set(namespace), module_name


def test_the_root_reexports_the_errors_and_the_client() -> None:
    import enclaved.client

    for name in enclaved.errors.__all__:
        assert getattr(enclaved, name) is getattr(enclaved.errors, name)
    assert enclaved.OpenAI is enclaved.client.OpenAI
    assert enclaved.AsyncOpenAI is enclaved.client.AsyncOpenAI
    with pytest.raises(AttributeError):
        enclaved.no_such_name  # noqa: B018


def test_the_server_entry_points_import() -> None:
    from enclaved.server.app import create_app
    from enclaved.server.config import ServerConfig

    assert callable(create_app) and isinstance(ServerConfig, type)


# --- the exception tree --------------------------------------------------------------


def _all_modules() -> list[str]:
    names = ["enclaved"]
    for info in pkgutil.walk_packages([str(SRC)], prefix="enclaved."):
        if info.name != "enclaved.__main__":  # runs the CLI when imported
            names.append(info.name)
    return names


#: Exception classes that are not errors a caller catches.
NOT_ERRORS = {
    "enclaved.attestation.policy.InsecurePolicyWarning",  # a warning, issued with warnings.warn
    "enclaved.cli.verify._Exit",  # control flow inside the CLI, turned into an exit code
}


def test_every_exception_class_derives_from_error() -> None:
    found = []
    for module_name in _all_modules():
        module = importlib.import_module(module_name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__ == module_name
            ):
                qualified = f"{module_name}.{obj.__qualname__}"
                found.append(qualified)
                if qualified not in NOT_ERRORS:
                    assert issubclass(obj, enclaved.Error), qualified
    # The walk saw the tree and the server's own errors (it can fail to find them).
    assert "enclaved.errors.DecryptionError" in found
    assert "enclaved.server.errors.HTTPError" in found
    assert NOT_ERRORS <= set(found), "a NOT_ERRORS entry is stale"


def _documented_tree() -> dict[str, str]:
    """``docs/errors.md``'s first drawing: {class name: its parent's name}."""
    text = (DOCS / "errors.md").read_text(encoding="utf-8")
    block = text.split("    Error\n", 1)[1].split("\n\n", 1)[0]
    parents: dict[str, str] = {}
    stack = ["Error"]  # stack[depth] is the last class seen at that depth
    for line in block.splitlines():
        m = re.match(r"^(\s*(?:│\s*)*)[├└]── (\w+)", line)
        if not m:
            continue  # a continuation line of a description
        depth = (len(m.group(1)) - 4) // 4 + 1
        name = m.group(2)
        del stack[depth:]
        parents[name] = stack[depth - 1]
        stack.append(name)
    return parents


def test_the_tree_is_the_documented_one() -> None:
    documented = _documented_tree()
    assert set(documented) | {"Error"} == set(enclaved.errors.__all__)
    for name, parent in documented.items():
        cls = getattr(enclaved.errors, name)
        public_bases = [b for b in cls.__mro__[1:] if not b.__name__.startswith("_")]
        assert public_bases[0].__name__ == parent, name
    assert enclaved.Error.__bases__ == (Exception,)


def test_the_errors_module_docstring_draws_the_same_tree() -> None:
    doc = enclaved.errors.__doc__ or ""
    for name, parent in _documented_tree().items():
        assert name in doc, name
        assert parent in doc, parent


# --- builtin exceptions in library code ----------------------------------------------

#: Where library code may raise a builtin exception, and why. Everything else
#: that goes wrong raises an enclaved.Error (bad evidence, keys, policies,
#: configuration, network). A new entry needs a reason a caller would accept.
ALLOWED_BUILTIN_RAISES = {
    # Caller bugs, as in the standard library: a naive datetime, a nonce of
    # the wrong size, an argument outside its documented values.
    ("attestation/verifier.py", "ValueError"),
    ("attestation/tdx/verify.py", "ValueError"),
    ("attestation/tdx/pcs.py", "ValueError"),  # ca not "platform" / "processor"
    ("attestation/nvidia/verify.py", "ValueError"),
    ("attestation/nvidia/nras.py", "ValueError"),
    ("client/_attest.py", "ValueError"),  # an injected random source that returns too few bytes
    ("client/sdk.py", "TypeError"),  # transport_of() on a client enclaved did not make
    ("attestation/formats.py", "KeyError"),  # DocumentVerdict.component(name): no such component
    (
        "evidence/simulated_quote.py",
        "ValueError",
    ),  # SimulatedTd fields of the wrong size, report_data not 64 bytes
    (
        "server/attestation.py",
        "ValueError",
    ),  # an internal invariant (20-byte address, 32-byte nonce)
    ("server/chat/batching.py", "ValueError"),  # a ChunkPump limit below 1
    ("crypto/reserve.py", "ValueError"),  # a Reserve of negative size
    # EngineHttp: a base URL that is not http(s), a header with CR/LF (the
    # configuration checks both first: ConfigError)
    ("server/backends/engine_http.py", "ValueError"),
    # Internal invariants: a bug in enclaved itself if ever raised.
    ("client/_stream.py", "RuntimeError"),
    ("client/_core.py", "AssertionError"),
    # Python protocols.
    ("__init__.py", "AttributeError"),  # module __getattr__
    ("server/store/__init__.py", "AttributeError"),  # module __getattr__
    ("crypto/keys.py", "TypeError"),  # __reduce__: key pairs cannot be pickled, like pickle says
}

_BUILTIN_EXCEPTIONS = {
    name
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, BaseException)
}


def _builtin_raises() -> set[tuple[str, str]]:
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in _BUILTIN_EXCEPTIONS:
                found.add((path.relative_to(SRC).as_posix(), exc.id))
    return found


def test_builtin_exceptions_are_raised_only_where_documented() -> None:
    found = _builtin_raises()
    assert ("crypto/keys.py", "TypeError") in found  # the scan sees raises
    unexpected = found - ALLOWED_BUILTIN_RAISES
    assert not unexpected, (
        "library code raises builtin exceptions; raise an enclaved.Error "
        f"(wrapping with `raise ... from exc`) or add a reason here: {sorted(unexpected)}"
    )
