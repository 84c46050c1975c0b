"""A real enclaved server for the client's end-to-end tests.

:func:`enclaved_server` runs ``create_app`` under uvicorn on a loopback
socket (``conftest.running_server``), on the simulated TEE (its development
root CA in ``data_dir/dev-root-ca.pem``), with ``bench/fake_upstream.py``
- a real HTTP server process - as the inference engine, so the tests are
fast. The fake engine answers `` tok0 tok1 ...``.

:func:`embedded_server` is the same with the real embedded model (marker
``model``), for the tests that must see a model's answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import running_server

from enclaved.server.app import create_app
from enclaved.server.config import ServerConfig

E2EE_MODEL = "e2ee-fake-1"
TEE_MODEL = "tee-fake-1"
TOKENS = 6
#: What the fake engine answers (``TOKENS`` tokens).
FAKE_ANSWER = "".join(f" tok{i}" for i in range(TOKENS))

_FAKE_PATH = Path(__file__).resolve().parents[1] / "bench" / "fake_upstream.py"


def _fake_upstream_module() -> Any:
    if "fake_upstream" in sys.modules:
        return sys.modules["fake_upstream"]
    spec = importlib.util.spec_from_file_location("fake_upstream", _FAKE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_upstream"] = module
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass(frozen=True)
class RealServer:
    #: The API root, ``http://127.0.0.1:PORT/v1``.
    base_url: str
    #: The simulated TEE's development root CA (trust it explicitly).
    dev_root: Path
    data_dir: Path

    @property
    def origin(self) -> str:
        return self.base_url.rsplit("/v1", 1)[0]


@contextlib.contextmanager
def enclaved_server(
    data_dir: Path, *, tokens: int = TOKENS, tls: tuple[str, str] | None = None, **more: Any
) -> Iterator[RealServer]:
    """An enclaved server (simulated TEE) over the fake engine, on loopback;
    ``more``: more top-level configuration (``aci={...}``); ``tls``: served
    over HTTPS with this (certificate, key)."""
    fake_mod = _fake_upstream_module()
    with fake_mod.FakeUpstreamProcess(tokens=tokens, model="fake-engine") as fake:
        upstream = {
            "backend": "upstream",
            "base_url": fake.base_url,
            "upstream_model": "fake-engine",
        }
        config = ServerConfig.from_dict(
            {
                "data_dir": str(data_dir),
                "models": [
                    {"id": E2EE_MODEL, "name": "Fake E2EE", **upstream},
                    {"id": TEE_MODEL, "name": "Fake TEE", **upstream},
                ],
                **more,
            }
        )
        with running_server(create_app(config), tls=tls) as url:
            yield RealServer(url + "/v1", data_dir / "dev-root-ca.pem", data_dir)


@contextlib.contextmanager
def embedded_server(data_dir: Path) -> Iterator[RealServer]:
    """An enclaved server with its default configuration: SmolLM2-135M, embedded."""
    pytest.importorskip("llama_cpp")
    config = ServerConfig.default(data_dir=data_dir)
    with running_server(create_app(config), startup_timeout=300) as url:
        yield RealServer(url + "/v1", data_dir / "dev-root-ca.pem", data_dir)


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    with enclaved_server(tmp_path_factory.mktemp("enclaved-data")) as server:
        yield server


__all__ = [
    "E2EE_MODEL",
    "FAKE_ANSWER",
    "TEE_MODEL",
    "TOKENS",
    "RealServer",
    "embedded_server",
    "enclaved_server",
    "real_server",
]
