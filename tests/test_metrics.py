"""``[metrics]``: Prometheus metrics of a node, on their own listener.

Real sockets: a node with fake backends answers chats (E2EE and not, one
failing in the engine, one for an unknown model) and an attestation; its
metrics listener is scraped. The counts must be right, and nothing a user
sent - prompt, API key - may appear in a label.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fakes import E2EE_MODEL, TEE_MODEL, FakeBackend, SeedClient, fake_node

from enclaved.errors import ConfigError
from enclaved.server.backends.base import BackendError
from enclaved.server.config import ServerConfig

PROMPT = "canary-metrics-3b9f"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _value(scrape: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` in a scrape (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


class FailingBackend(FakeBackend):
    async def stream(self, request: Any) -> Any:
        raise BackendError("engine down", code="upstream_error")
        yield {}  # pragma: no cover - makes this an async generator


def test_metrics_count_what_happened_and_carry_no_content(tmp_path: Path) -> None:
    port = _port()
    with fake_node(tmp_path, metrics={"enabled": True, "port": port}) as node:
        metrics = node.app.state.node.metrics
        server = metrics.serve("127.0.0.1", port)
        try:
            api = node.url + "/v1"
            # E2EE, streamed (the seed document's client)
            key = httpx.get(f"{api}/tee/attestation", params={"model": E2EE_MODEL}).json()
            seed = SeedClient()
            body = {
                "model": E2EE_MODEL,
                "stream": True,
                "messages": [{"role": "user", "content": seed.encrypt(PROMPT, key["signing_key"])}],
            }
            r = httpx.post(
                f"{api}/chat/completions", json=body, headers=seed.headers(key["signing_key"])
            )
            assert r.status_code == 200
            # plain TEE, not streamed
            plain = {"model": TEE_MODEL, "messages": [{"role": "user", "content": PROMPT}]}
            assert httpx.post(f"{api}/chat/completions", json=plain).status_code == 200
            # an unknown model: its id is not a label
            unknown = {"model": "tee-" + PROMPT, "messages": [{"role": "user", "content": "x"}]}
            assert httpx.post(f"{api}/chat/completions", json=unknown).status_code == 404
            scrape = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        finally:
            server.shutdown()
    chat = "enclaved_requests_total"
    assert _value(scrape, chat, route="chat", model=E2EE_MODEL, status="200", e2ee="true") == 1
    assert _value(scrape, chat, route="chat", model=TEE_MODEL, status="200", e2ee="false") == 1
    assert _value(scrape, chat, route="chat", model="other", status="404", e2ee="false") == 1
    assert (
        _value(scrape, chat, route="attestation", model=E2EE_MODEL, status="200", e2ee="false") == 1
    )
    assert _value(scrape, "enclaved_tokens_total", model=TEE_MODEL, direction="out") > 0
    assert _value(scrape, "enclaved_tokens_total", model=E2EE_MODEL, direction="in") > 0
    ttft = "enclaved_time_to_first_token_seconds_count"
    assert _value(scrape, ttft, model=E2EE_MODEL, e2ee="true") == 1
    assert PROMPT not in scrape and "canary" not in scrape


def test_engine_errors_are_counted_by_code(tmp_path: Path) -> None:
    port = _port()
    with fake_node(
        tmp_path, backend=FailingBackend(), metrics={"enabled": True, "port": port}
    ) as node:
        server = node.app.state.node.metrics.serve("127.0.0.1", port)
        try:
            plain = {"model": TEE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
            assert httpx.post(node.url + "/v1/chat/completions", json=plain).status_code == 502
            scrape = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        finally:
            server.shutdown()
    assert _value(scrape, "enclaved_engine_errors_total", code="upstream_error") == 1
    assert (
        _value(
            scrape,
            "enclaved_requests_total",
            route="chat",
            model=TEE_MODEL,
            status="502",
            e2ee="false",
        )
        == 1
    )


def test_metrics_are_off_by_default_and_validated(tmp_path: Path) -> None:
    assert ServerConfig.default(data_dir=tmp_path).metrics.enabled is False
    with fake_node(tmp_path) as node:
        assert node.app.state.node.metrics is None
        assert httpx.get(node.url + "/metrics").status_code == 404  # never on the API port
    with pytest.raises(ConfigError, match="metrics"):
        ServerConfig.from_dict({"metrics": {"enabled": True, "prt": 1}}, data_dir=tmp_path)
