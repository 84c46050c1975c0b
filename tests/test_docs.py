"""Every code block in README.md and docs/*.md runs, as written, against the
README's node (``conftest.user_node``: ``scripts/serve`` in a fresh home).

Only the port differs: ``127.0.0.1:8000`` in a block becomes the node's
port, and commands that name no URL find the node through
``ENCLAVED_BASE_URL``, as a user whose node listens elsewhere would set it.
The user's shell has ``enclaved`` on PATH (``source .venv/bin/activate``,
as the README says) and the node's home as ``HOME``, so
``~/.local/share/enclaved/dev-root-ca.pem`` is the node's development root.

Each fenced block says what it is by its language:

==========  =================================================================
``python``  run with the project's Python; exit 0
``sh``      run with bash (``-e``, from the repository root); exit 0
``console`` each ``$ `` line run with bash; the other lines are its output
``toml``    loaded by the code that reads it (see the comment above it)
``json``    parsed
``text``    output or a synopsis: not run
==========  =================================================================

A block that cannot run here (it talks to the production service, starts a
long-running server, or takes minutes) has ``<!-- doc-test: not run: WHY -->``
on the line before it, and is checked without running: Python compiles and
its imports resolve; every ``enclaved`` command parses with the CLI's own
parser; scripts exist. A block with no language fails: say what it is.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from real_node import REPO, UserNode

pytestmark = [pytest.mark.model]

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LANGUAGES = {"python", "sh", "console", "toml", "json", "text"}
_FENCE = re.compile(r"^```(\S*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    directive: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def not_run(self) -> bool:
        return self.directive.startswith("not run:")


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        before = next((x.strip() for x in reversed(lines[:i]) if x.strip()), "")
        d = _DIRECTIVE.match(before)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        found.append(
            Block(
                path,
                i + 1,
                m.group(1),
                d.group(1) if d else "",
                "\n".join(lines[i + 1 : end]) + "\n",
            )
        )
        i = end + 1
    return found


ALL = [b for path in DOCS for b in blocks(path)]


def test_every_block_says_what_it_is() -> None:
    assert ALL, "no code blocks found"
    unnamed = [b.where for b in ALL if b.language not in LANGUAGES]
    assert not unnamed, f"code blocks without a known language ({sorted(LANGUAGES)}): {unnamed}"
    for b in ALL:
        assert not b.directive or b.not_run or b.language == "toml", (b.where, b.directive)


def _local(code: str, node: UserNode) -> str:
    return code.replace("127.0.0.1:8000", f"127.0.0.1:{node.port}")


def _run(args: list[str], node: UserNode, *, cwd: Path, stdin: str | None = None) -> str:
    done = subprocess.run(
        args,
        cwd=cwd,
        env=node.env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _console_commands(code: str) -> list[str]:
    commands, current = [], ""
    for line in code.splitlines():
        if current:
            current += "\n" + line
        elif line.startswith("$ "):
            current = line[2:]
        else:
            continue
        if not current.endswith("\\"):
            commands.append(current)
            current = ""
    return commands


def _shell_commands(b: Block) -> list[str]:
    if b.language == "console":
        return _console_commands(b.code)
    joined = b.code.replace("\\\n", " ")
    return [x.strip() for x in joined.splitlines() if x.strip() and not x.strip().startswith("#")]


def _check_without_running(b: Block, tmp_path: Path) -> None:
    if b.language == "python":
        compile(b.code, b.where, "exec")
        imports = "\n".join(x for x in b.code.splitlines() if re.match(r"(import|from) [\w.]+", x))
        subprocess.run([sys.executable, "-c", imports], check=True, timeout=60)
        return
    if b.language in ("sh", "console"):
        from enclaved.cli import build_parser

        script = "\n".join(_shell_commands(b)) + "\n"
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
        parser = build_parser()
        for command in _shell_commands(b):
            words = shlex.split(command.split("#", 1)[0].split("|")[-1], comments=True)
            while words and "=" in words[0]:  # VAR=value before the command
                words.pop(0)
            if not words:
                continue
            if words[0] == "enclaved":
                parser.parse_args(words[1:])  # SystemExit on an unknown flag
            elif words[0].startswith("./scripts/"):
                assert (REPO / words[0]).is_file(), words[0]
        return
    pytest.fail(f"{b.where}: nothing to check in a not-run {b.language} block")


@pytest.mark.parametrize("block", [b for b in ALL if b.language != "text"], ids=lambda b: b.where)
def test_doc_block(block: Block, user_node: UserNode, tmp_path: Path) -> None:
    if block.not_run:
        _check_without_running(block, tmp_path)
        return
    code = _local(block.code, user_node)
    if block.language == "python":
        script = tmp_path / "example.py"
        script.write_text(code, encoding="utf-8")
        _run([sys.executable, str(script)], user_node, cwd=REPO)
    elif block.language == "sh":
        _run(["bash", "-e", "-o", "pipefail", "-c", code], user_node, cwd=REPO)
    elif block.language == "console":
        for command in _console_commands(code):
            _run(["bash", "-e", "-o", "pipefail", "-c", command], user_node, cwd=tmp_path)
    elif block.language == "json":
        json.loads(code)
    elif block.language == "toml":
        path = tmp_path / "example.toml"
        path.write_text(code, encoding="utf-8")
        tomllib.loads(code)
        if block.directive == "server config":
            from enclaved.server.config import ServerConfig

            ServerConfig.from_toml(path, env={"VLLM_API_KEY": "x", "HOME": str(tmp_path)})
        elif block.directive == "policy":
            from enclaved.attestation import Policy

            Policy.from_file(path)
        else:
            pytest.fail(f"{block.where}: say what reads this TOML (server config / policy)")
