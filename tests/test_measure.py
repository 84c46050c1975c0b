"""``enclaved measure`` against the real deployments in the shared captures.

Every report that shows its app compose document (``info.tcb_info.app_compose``)
is measured from that document alone, and from its docker-compose file and its
settings apart: the compose hash must be what the report states and the
MRCONFIGID what the report's Intel-signed quote carries.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CAPTURES

from enclaved.attestation.measurements import COMPOSE_FILE_FIELD
from enclaved.attestation.tdx.parse import decode_quote_text, parse_quote
from enclaved.cli import main


def _attested_apps() -> Iterator[tuple[str, str, str, bytes]]:
    """(where, app_compose, compose_hash stated, MRCONFIGID of the quote) for every
    document in the captures that has a quote and its app compose beside it."""
    for body in sorted(CAPTURES.glob("*/responses/*.body")):
        try:
            doc = json.loads(body.read_bytes())
        except ValueError:
            continue
        stack: list[Any] = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, list):
                stack.extend(node)
            elif isinstance(node, dict):
                stack.extend(node.values())
                tcb = (node.get("info") or {}).get("tcb_info") if "intel_quote" in node else None
                if isinstance(tcb, dict) and "app_compose" in tcb:
                    quote = parse_quote(decode_quote_text(node["intel_quote"]))
                    where = f"{body.parent.parent.name}/{body.name}"
                    yield where, tcb["app_compose"], tcb["compose_hash"], quote.mrconfigid


APPS = list(_attested_apps())


def test_the_captures_hold_deployments_to_measure() -> None:
    # venice, neardirect (two), the NEAR cloud gateway and its model node
    assert len(APPS) >= 4
    assert len({compose for _, compose, _, _ in APPS}) >= 2


def _measure(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, str]:
    assert main(["measure", *argv, "--json"]) == 0
    out: dict[str, str] = json.loads(capsys.readouterr().out)
    return out


@pytest.mark.parametrize(
    ("where", "compose", "stated", "mrconfigid"), APPS, ids=[a[0] for a in APPS]
)
def test_measure_reproduces_the_reports(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    where: str,
    compose: str,
    stated: str,
    mrconfigid: bytes,
) -> None:
    document = tmp_path / "app-compose.json"
    document.write_text(compose, encoding="utf-8")
    measured = _measure(capsys, str(document))
    assert measured == {"compose_hash": stated, "mrconfigid": mrconfigid.hex()}

    # The same deployment from its parts: the docker-compose file as written,
    # the other fields as settings; the document rebuilt byte for byte.
    parts = json.loads(compose)
    (tmp_path / "docker-compose.yml").write_text(parts.pop(COMPOSE_FILE_FIELD), encoding="utf-8")
    (tmp_path / "settings.json").write_text(json.dumps(parts), encoding="utf-8")
    rebuilt = tmp_path / "rebuilt.json"
    from_parts = _measure(
        capsys,
        str(tmp_path / "docker-compose.yml"),
        "--settings",
        str(tmp_path / "settings.json"),
        "--output",
        str(rebuilt),
    )
    assert from_parts == measured
    assert rebuilt.read_bytes() == compose.encode("utf-8")


def test_one_byte_changes_the_measurement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, compose, stated, _ = APPS[0]
    changed = tmp_path / "app-compose.json"
    changed.write_text(compose.replace('"public_logs": false', '"public_logs": true'), "utf-8")
    assert compose != changed.read_text("utf-8")
    assert _measure(capsys, str(changed))["compose_hash"] != stated


def test_the_human_output_gives_the_policy_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, compose, stated, _ = APPS[0]
    (tmp_path / "a.json").write_text(compose, "utf-8")
    assert main(["measure", str(tmp_path / "a.json")]) == 0
    assert f'compose_hash = ["{stated}"]' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("files", "extra", "message"),
    [
        ({"c.yml": "services: {}\n"}, [], "not an app compose document"),
        (
            {"c.yml": "services: {}\n", "s.json": "[1]"},
            ["--settings", "s.json"],
            "not a JSON object",
        ),
        (
            {"c.yml": "services: {}\n", "s.json": '{"name": "x"}'},
            ["--settings", "s.json"],
            "runner",
        ),
        (
            {"c.yml": "x", "s.json": '{"runner": "docker-compose", "docker_compose_file": "y"}'},
            ["--settings", "s.json"],
            "already hold",
        ),
        ({"a.json": '{"docker_compose_file": ""}'}, ["--output", "o.json"], "--output needs"),
        ({}, [], "cannot read"),
    ],
)
def test_bad_input_is_one_line_and_exit_5(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str],
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text, "utf-8")
    target = next(iter(files), "missing.json")
    assert main(["measure", target, *extra]) == 5
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
