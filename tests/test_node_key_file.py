"""``--node-key-file``: the key replicas of one deployment share.

The key file holds a secp256k1 private key as 64 hex characters and must be
readable by its owner only; anything else stops the start with one line that
says what to do.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from enclaved.cli import main
from enclaved.crypto import KeyPair
from enclaved.errors import ConfigError
from enclaved.server.app import load_node_key


def _key_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "node.key"
    path.write_text(text, encoding="ascii")
    path.chmod(mode)
    return path


def test_the_key_in_the_file_is_the_node_key(tmp_path: Path) -> None:
    secret = secrets.token_hex(32)
    key = load_node_key(_key_file(tmp_path, secret + "\n"))
    assert key.address == KeyPair(bytes.fromhex(secret)).address


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, secrets.token_hex(32), mode)
    with pytest.raises(ConfigError, match=f"readable by others .*chmod 600 {path}"):
        load_node_key(path)


@pytest.mark.parametrize("text", ["", "00" * 32, "zz" * 32, "ab" * 31, "ff" * 32])
def test_a_key_file_without_a_valid_key_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="not a secp256k1 private key"):
        load_node_key(_key_file(tmp_path, text))


def test_a_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_node_key(tmp_path / "absent.key")


def test_serve_stops_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _key_file(tmp_path, secrets.token_hex(32), 0o644)
    argv = ["serve", "--port", "0", "--data-dir", str(tmp_path), "--node-key-file", str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("enclaved serve:")]
    assert len(said) == 1 and "chmod 600" in said[0], err
    assert "development root" not in err  # refused before anything was made
