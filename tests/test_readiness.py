"""``/health`` and ``/ready`` as a load balancer sees them, over real sockets.

``/ready`` is 200 only when the engines, the evidence source and the
signature store all answer, and otherwise 503 naming the part that does not
(by error kind only: nothing of the underlying message).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
from conftest import running_server
from server_fakes import E2EE_MODEL, fake_backends, fake_config, fake_node

from enclaved.errors import NetworkError
from enclaved.server.app import create_app
from enclaved.server.backends.base import Backend
from enclaved.server.backends.upstream import UpstreamBackend
from enclaved.server.store.memory import MemoryStore


class BrokenStore(MemoryStore):
    async def get(self, request_id: str) -> Any:
        raise NetworkError("signature store (redis): ConnectionError at 10.0.0.7:6379")


def test_a_node_whose_parts_answer_is_ready(tmp_path: Path) -> None:
    with fake_node(tmp_path) as node:
        health = httpx.get(node.url + "/health")
        ready = httpx.get(node.url + "/ready")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"engines": {"ok": True}, "evidence": {"ok": True}, "store": {"ok": True}},
    }


def test_an_unreachable_store_is_not_ready_and_says_only_which_part(tmp_path: Path) -> None:
    with fake_node(tmp_path, store=BrokenStore()) as node:
        r = httpx.get(node.url + "/ready")
    assert r.status_code == 503
    assert r.json()["status"] == "not_ready"
    assert r.json()["checks"]["store"] == {"ok": False, "error": "NetworkError"}
    assert r.json()["checks"]["engines"]["ok"] is True
    assert "10.0.0.7" not in r.text


def test_an_engine_that_is_down_is_not_ready(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = UpstreamBackend(f"http://127.0.0.1:{port}/v1", "some/model")
    backends: dict[str, Backend] = {**fake_backends(), E2EE_MODEL: engine}
    app = create_app(fake_config(tmp_path), backends=backends, store=MemoryStore())
    with running_server(app) as url:
        r = httpx.get(url + "/ready")
    assert r.status_code == 503
    assert r.json()["checks"]["engines"] == {"ok": False, "error": "upstream_error"}
    assert r.json()["checks"]["evidence"]["ok"] is True
