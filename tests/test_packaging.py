"""What the wheel ships and the command it installs.

- ``py.typed`` and every data file under ``src/enclaved`` (the pinned NVIDIA
  root PEM...) are matched by ``[tool.setuptools.package-data]``, so the
  wheel carries them (``docs/development.md`` has the command that builds
  the wheel and lists it);
- the ``enclaved`` console script is ``enclaved.cli:main``, and
  ``enclaved <command> --help`` exits 0 for every command, run as a user
  runs it: the installed script, in a fresh process.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "enclaved"

COMMANDS = [
    "serve",
    "hash-key",
    "chat",
    "verify",
    "measure",
    "attest",
    "signature",
    "models",
    "proxy",
]


def test_py_typed_ships() -> None:
    assert importlib.resources.files("enclaved").joinpath("py.typed").is_file()


def test_every_data_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["enclaved"]
    shipped = {p for pattern in patterns for p in PACKAGE.glob(pattern) if p.is_file()}
    data = {
        p
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert PACKAGE / "py.typed" in data
    assert PACKAGE / "attestation" / "nvidia" / "verifier_device_root.pem" in data
    assert data <= shipped, f"not shipped in the wheel: {sorted(map(str, data - shipped))}"


def test_the_console_script_is_the_cli() -> None:
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="enclaved")
    assert script.value == "enclaved.cli:main"
    from enclaved.cli import main

    assert script.load() is main


def _enclaved() -> list[str]:
    """The installed ``enclaved`` script beside this interpreter."""
    bin_dir = Path(sys.executable).parent
    for name in ("enclaved", "enclaved.exe"):
        if (bin_dir / name).is_file():
            return [str(bin_dir / name)]
    pytest.skip("the enclaved console script is not installed beside this interpreter")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVED_")}
    return subprocess.run(
        [*_enclaved(), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_help_lists_exactly_the_commands() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^    (\S+)", result.stdout, flags=re.MULTILINE)
    assert sorted(listed) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = _run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: enclaved {command}"), result.stdout[:200]
    assert result.stderr == ""
