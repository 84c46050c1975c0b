"""ServerConfig: the built-in default, the documented example, and strictness."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from enclaved.errors import ConfigError
from enclaved.server.config import ServerConfig, default_data_dir

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _doc_example() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) == 1, "docs/configuration.md should hold exactly one TOML example"
    return str(blocks[0])


def test_default_needs_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCLAVED_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", "/home/alice")
    c = ServerConfig.default()
    assert (c.host, c.port) == ("127.0.0.1", 8000)
    data = Path("/home/alice/.local/share/enclaved")
    assert c.data_dir == data
    assert [m.id for m in c.models] == ["e2ee-smollm2-135m", "tee-smollm2-135m"]
    assert all(m.backend == "embedded" for m in c.models)
    e2ee, tee = c.models
    assert e2ee.capabilities.supports_e2ee and not tee.capabilities.supports_e2ee
    assert e2ee.capabilities.supports_tee_attestation and tee.capabilities.supports_tee_attestation
    assert c.api_key_hashes == () and c.system_prompt is None
    assert c.signatures.kind == "sqlite" and c.signature_db_path == data / "signatures.db"
    assert c.e2ee_key_per_chunk is False and c.tee == "simulated"


def test_default_data_dir_is_absolute_wherever_the_node_starts() -> None:
    # The README's trust_root path must work from any directory.
    assert default_data_dir({"HOME": "/home/a"}) == Path("/home/a/.local/share/enclaved")
    assert default_data_dir({"HOME": "/h", "XDG_DATA_HOME": "/xdg"}) == Path("/xdg/enclaved")
    assert default_data_dir({"HOME": "/h", "XDG_DATA_HOME": "rel"}) == Path(
        "/h/.local/share/enclaved"
    )  # the XDG spec says a relative XDG_DATA_HOME is ignored
    assert default_data_dir({"HOME": "/h", "ENCLAVED_DATA_DIR": "/srv"}) == Path("/srv")


def test_data_dir_from_environment() -> None:
    c = ServerConfig.default(env={"ENCLAVED_DATA_DIR": "/srv/enclaved"})
    assert c.data_dir == Path("/srv/enclaved")
    assert ServerConfig.default(data_dir="/x", env={"ENCLAVED_DATA_DIR": "/srv"}).data_dir == Path(
        "/x"
    )


def test_documented_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "enclaved.toml"
    path.write_text(_doc_example(), encoding="utf-8")
    c = ServerConfig.from_toml(path)
    assert (c.host, c.port) == ("0.0.0.0", 8000)
    assert c.data_dir == Path("/var/lib/enclaved")
    assert c.system_prompt and c.system_prompt.startswith("You are")
    assert c.api_key_hashes == ("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",)
    assert c.signatures.kind == "sqlite"
    assert c.signature_db_path == tmp_path / "signatures.db"  # relative to the file
    assert [m.id for m in c.models] == ["e2ee-smollm2-135m", "tee-smollm2-135m", "e2ee-qwen3-8b"]
    qwen = c.model("e2ee-qwen3-8b")
    assert qwen is not None
    assert qwen.backend == "upstream" and qwen.base_url == "http://127.0.0.1:8001/v1"
    assert qwen.upstream_model == "Qwen/Qwen3-8B" and qwen.api_key_env == "VLLM_API_KEY"
    assert qwen.capabilities.supports_reasoning and qwen.capabilities.supports_e2ee
    assert qwen.available_context_tokens == 32768
    assert c.model("tee-nope") is None


def _load(data: dict[str, Any]) -> ServerConfig:
    return ServerConfig.from_dict(data, base_dir=Path("/cfg"))


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"hots": "x"}, "hots"),
        ({"signatures": {"kind": "sqlite", "pth": "x"}}, "signatures.pth"),
        ({"models": [{"id": "tee-a", "backend": "embedded", "contxt": 1}]}, "models[tee-a].contxt"),
        (
            {"models": [{"id": "tee-a", "capabilities": {"supportsVison": False}}]},
            "models[tee-a].capabilities.supportsVison",
        ),
        ({"api_key_hash": ["ab"]}, "api_key_hash"),
    ],
)
def test_unknown_keys_are_named(data: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(data)
    assert str(err.value).startswith(named + ":")
    assert "unknown" in str(err.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"models": [{"id": "gpt-4o"}]}, "must start with 'tee-' or 'e2ee-'"),
        ({"models": [{"id": "tee-A"}]}, "must start with"),
        ({"models": [{"backend": "embedded"}]}, "models[0].id: required"),
        ({"models": []}, "non-empty"),
        ({"models": [{"id": "tee-a"}, {"id": "tee-a"}]}, "duplicate model id"),
        ({"models": [{"id": "tee-a", "capabilities": {"supportsE2EE": True}}]}, "supportsE2EE"),
        ({"models": [{"id": "e2ee-a", "capabilities": {"supportsE2EE": False}}]}, "supportsE2EE"),
        (
            {"models": [{"id": "tee-a", "capabilities": {"supportsTeeAttestation": False}}]},
            "supportsTeeAttestation",
        ),
        (
            {"models": [{"id": "tee-a", "capabilities": {"supportsWebSearch": True}}]},
            "supportsWebSearch",
        ),
        ({"models": [{"id": "tee-a", "capabilities": {"supportsVision": True}}]}, "supportsVision"),
        (
            {"models": [{"id": "tee-a", "capabilities": {"supportsReasoning": "yes"}}]},
            "true or false",
        ),
        ({"models": [{"id": "tee-a", "backend": "vllm"}]}, "unknown backend"),
        (
            {"models": [{"id": "tee-a", "backend": "upstream", "upstream_model": "m"}]},
            "base_url: required",
        ),
        (
            {
                "models": [
                    {
                        "id": "tee-a",
                        "backend": "upstream",
                        "base_url": "ftp://x",
                        "upstream_model": "m",
                    }
                ]
            },
            "http",
        ),
        (
            {"models": [{"id": "tee-a", "backend": "upstream", "base_url": "http://x/v1"}]},
            "upstream_model: required",
        ),
        ({"models": [{"id": "tee-a", "base_url": "http://x/v1"}]}, "only for backend = 'upstream'"),
        ({"models": [{"id": "tee-a", "available_context_tokens": 0}]}, "out of range"),
        ({"port": 70000}, "port: 70000 is out of range"),
        ({"port": "80"}, "port: must be an integer"),
        ({"port": True}, "port: must be an integer"),
        ({"api_key_hashes": ["not-a-hash"]}, "api_key_hashes[0]"),
        ({"api_key_hashes": "abc"}, "api_key_hashes"),
        ({"tee": "tdx"}, "tee: unknown mode 'tdx'"),
        ({"e2ee_key_per_chunk": 1}, "e2ee_key_per_chunk: must be true or false"),
        ({"request_body_timeout_seconds": 0}, "request_body_timeout_seconds: 0 is out of range"),
        ({"request_body_timeout_seconds": 1.5}, "request_body_timeout_seconds: must be an integer"),
        ({"signatures": {"kind": "redis"}}, "signatures.url: required"),
        ({"signatures": {"kind": "redis", "url": "http://x"}}, "signatures.url"),
        ({"signatures": {"kind": "sqlite", "url": "redis://x"}}, "only for kind = 'redis'"),
        ({"signatures": {"kind": "memcached"}}, "unknown store"),
        ({"system_prompt": 3}, "system_prompt: must be a string"),
    ],
)
def test_invalid(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(data)
    assert fragment in str(err.value)


def test_upstream_and_redis() -> None:
    c = _load(
        {
            "models": [
                {
                    "id": "tee-q",
                    "backend": "upstream",
                    "base_url": "http://e:8000/v1/",
                    "upstream_model": "Q",
                }
            ],
            "signatures": {"kind": "redis", "url": "redis://r:6379/0", "ttl_seconds": 60},
            "api_key_hashes": ["9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"],
        }
    )
    assert c.models[0].base_url == "http://e:8000/v1"
    assert c.signatures.url == "redis://r:6379/0" and c.signatures.ttl_seconds == 60
    assert c.api_key_hashes == ("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("host = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid TOML"):
        ServerConfig.from_toml(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        ServerConfig.from_toml(tmp_path / "missing.toml")


# -- the CLI's precedence: flag > environment > file > default -------------------------------------


def _args(**kw: Any) -> argparse.Namespace:
    base = {
        "config": None,
        "host": None,
        "port": None,
        "data_dir": None,
        "log_level": None,
        "tee": None,
        "node_key_file": None,
        "workers": None,
    }
    base.update(kw)
    return argparse.Namespace(**base)


def test_cli_precedence(tmp_path: Path) -> None:
    from enclaved.cli.serve import load_config

    path = tmp_path / "c.toml"
    path.write_text('host = "10.0.0.1"\nport = 9000\ndata_dir = "state"\n', encoding="utf-8")
    c = load_config(_args(config=str(path)), env={})
    assert (c.host, c.port, c.data_dir) == ("10.0.0.1", 9000, tmp_path / "state")
    env = {
        "ENCLAVED_HOST": "10.0.0.2",
        "ENCLAVED_PORT": "9001",
        "ENCLAVED_DATA_DIR": "/env",
        "ENCLAVED_CONFIG": str(path),
    }
    c = load_config(_args(), env=env)
    assert (c.host, c.port, c.data_dir) == ("10.0.0.2", 9001, Path("/env"))
    c = load_config(_args(host="10.0.0.3", port=9002, data_dir="/flag"), env=env)
    assert (c.host, c.port, c.data_dir) == ("10.0.0.3", 9002, Path("/flag"))
    c = load_config(_args(), env={})
    assert (c.host, c.port) == ("127.0.0.1", 8000)
    with pytest.raises(ConfigError, match="ENCLAVED_PORT"):
        load_config(_args(), env={"ENCLAVED_PORT": "http"})


def test_cli_registers_serve_and_hash_key() -> None:
    from enclaved.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["serve", "--port", "0", "--host", "127.0.0.1"])
    assert callable(args.func) and args.port == 0
    assert callable(parser.parse_args(["hash-key"]).func)


def test_tee_mode_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    from enclaved.cli.serve import load_config

    toml = tmp_path / "node.toml"
    toml.write_text('tee = "dstack"\n', encoding="utf-8")
    assert load_config(_args(config=str(toml)), env={}).tee == "dstack"
    assert load_config(_args(config=str(toml)), env={"ENCLAVED_TEE": "auto"}).tee == "auto"
    flag = _args(config=str(toml), tee="simulated")
    assert load_config(flag, env={"ENCLAVED_TEE": "auto"}).tee == "simulated"
    with pytest.raises(ConfigError, match="ENCLAVED_TEE"):
        load_config(_args(), env={"ENCLAVED_TEE": "sgx"})
