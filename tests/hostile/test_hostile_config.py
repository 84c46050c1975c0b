"""The limits are configuration: strict like the rest of the TOML, and safe by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enclaved.errors import ConfigError
from enclaved.server.backends import make_backends
from enclaved.server.backends.engine_http import Timeouts
from enclaved.server.config import ServerConfig
from enclaved.server.transport import TransportLimits

UPSTREAM = {"backend": "upstream", "base_url": "http://127.0.0.1:9/v1", "upstream_model": "m"}


def _load(tmp_path: Path, **data: Any) -> ServerConfig:
    return ServerConfig.from_dict({"data_dir": str(tmp_path), **data})


def test_defaults_are_bounded(tmp_path: Path) -> None:
    config = _load(tmp_path)
    assert config.transport == TransportLimits()
    limits = config.transport
    assert limits.max_header_bytes <= 64 * 1024
    assert limits.first_request_timeout_seconds <= 30
    assert limits.header_timeout_seconds <= 30
    assert config.graceful_shutdown_seconds == 10


def test_engine_timeouts_global_then_per_model(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        engine={"first_byte_timeout_seconds": 20, "connect_timeout_seconds": 2},
        models=[
            {"id": "tee-a", **UPSTREAM},
            {"id": "tee-b", **UPSTREAM, "idle_timeout_seconds": 5.5},
        ],
    )
    a, b = config.models
    assert a.timeouts == Timeouts(connect=2, read=300, first_byte=20)
    assert b.timeouts == Timeouts(connect=2, read=5.5, first_byte=20)
    backends = make_backends(config.models)
    assert backends["tee-b"]._timeouts == b.timeouts  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"transport": {"max_header_byte": 1}}, "transport.max_header_byte"),
        ({"transport": {"max_header_bytes": 10}}, "transport.max_header_bytes"),
        ({"transport": {"header_timeout_seconds": 0}}, "transport.header_timeout_seconds"),
        ({"transport": {"max_connections": "many"}}, "transport.max_connections"),
        ({"transport": 3}, "transport"),
        ({"engine": {"read_timeout": 3}}, "engine.read_timeout"),
        ({"engine": {"idle_timeout_seconds": True}}, "engine.idle_timeout_seconds"),
        ({"graceful_shutdown_seconds": -1}, "graceful_shutdown_seconds"),
        (
            {"models": [{"id": "tee-a", "backend": "embedded", "idle_timeout_seconds": 3}]},
            "models[tee-a].idle_timeout_seconds",
        ),
    ],
)
def test_bad_limits_are_refused_by_name(tmp_path: Path, data: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        _load(tmp_path, **data)
