"""Static checks, as part of the suite: ``mypy --strict`` over the package, the benchmarks and
the tests, and ``ruff check`` and ``ruff format --check`` over the package, the tests and the
benchmarks (configured in pyproject.toml;
the versions are pinned in the ``test`` extra, since each release changes what
they report).

mypy keeps its cache in ``.mypy_cache``: about 30 s of CPU the first time,
about 1 s after. ``docs/development.md`` has the same commands to run by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip(tool)
    return subprocess.run(
        [sys.executable, "-m", tool, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_mypy_strict() -> None:
    result = _run("mypy")  # files and strictness: [tool.mypy]
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff() -> None:
    result = _run("ruff", "check", "--no-cache", "src", "tests", "bench", "scripts")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    # One layout everywhere: `ruff format src tests bench scripts` fixes what this finds.
    result = _run("ruff", "format", "--check", "--no-cache", "src", "tests", "bench", "scripts")
    assert result.returncode == 0, result.stdout + result.stderr
