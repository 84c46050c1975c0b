"""The deployment files in deploy/ are what the code accepts.

The dstack compose's inline node configuration loads as the node would load
it, its enclaved command line parses with the CLI's own parser, the image's
default command too, and `enclaved measure` measures the compose with its
app settings (docs/deploy.md).
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from real_node import REPO

from enclaved.cli import build_parser, main
from enclaved.server.config import ServerConfig

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "dstack" / "docker-compose.yml"


def _inline_config() -> str:
    text = COMPOSE.read_text(encoding="utf-8")
    match = re.search(r"^    content: \|\n(.*?)^\S", text, flags=re.DOTALL | re.MULTILINE)
    assert match, "no inline node configuration in the compose"
    return textwrap.dedent(match.group(1))


def _enclaved_command() -> list[str]:
    text = COMPOSE.read_text(encoding="utf-8")
    match = re.search(r"^      - enclaved\n((?:      - .*\n)+)", text, flags=re.MULTILINE)
    assert match, "no enclaved command in the compose"
    return [line.strip()[2:] for line in match.group(1).splitlines()]


def test_the_inline_configuration_loads_for_dstack(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(_inline_config(), encoding="utf-8")
    config = ServerConfig.from_toml(path)
    assert config.tee == "dstack"
    assert {m.id for m in config.models} == {"e2ee-qwen3-8b", "tee-qwen3-8b"}
    assert all(m.base_url == "http://vllm:8001/v1" for m in config.models)


def test_the_compose_command_and_the_image_command_parse() -> None:
    args = build_parser().parse_args(_enclaved_command())
    assert args.command == "serve" and args.tee == "dstack"
    assert args.config == "/etc/enclaved/node.toml" and args.host == "0.0.0.0"
    cmd = re.search(r"^CMD \[(.*)\]$", (DEPLOY / "Containerfile").read_text(), re.MULTILINE)
    assert cmd
    argv = [a.strip().strip('"') for a in cmd.group(1).split(",")]
    assert argv[0] == "enclaved"
    assert build_parser().parse_args(argv[1:]).tee == "dstack"


def test_the_deployment_measures(capsys: pytest.CaptureFixture[str]) -> None:
    settings = DEPLOY / "dstack" / "app-settings.json"
    assert main(["measure", str(COMPOSE), "--settings", str(settings), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert re.fullmatch("[0-9a-f]{64}", out["compose_hash"])
    assert out["mrconfigid"] == "01" + out["compose_hash"] + "00" * 15
    # docs/deploy.md shows the hash of the files as committed: kept true here.
    assert out["compose_hash"] in (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")


def test_gpu_smoke_says_plainly_when_there_is_no_gpu(tmp_path: Path) -> None:
    # The one script that needs a GPU; everywhere else it stops at once, with
    # one line and exit 2, installing nothing.
    import os
    import subprocess

    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}  # no nvidia-smi
    done = subprocess.run(
        [str(REPO / "scripts" / "gpu-smoke")], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no NVIDIA GPU" in done.stderr
    assert not (REPO / ".venv-vllm").exists()


def test_the_tdx_vm_unit_runs_a_command_the_cli_accepts() -> None:
    unit = (DEPLOY / "tdx-vm" / "enclaved.service").read_text(encoding="utf-8")
    (line,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    argv = line.removeprefix("ExecStart=").split()
    assert argv[0].endswith("/enclaved")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.tee == "configfs"
