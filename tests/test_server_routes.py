"""The routes of PROTOCOL.md over a real socket: models, chat, attestation, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fakes import (
    E2EE_MODEL,
    TEE_MODEL,
    TOOLS_MODEL,
    FakeBackend,
    NodeHandle,
    fake_node,
    sse_events,
)

from enclaved.attestation.tdx.parse import parse_quote

# The node verifies its own simulated evidence under the development policy, which warns by design.
pytestmark = pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning")


NOW = 1_780_000_000.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeHandle]:
    with fake_node(
        tmp_path_factory.mktemp("routes"), clock=lambda: NOW, system_prompt="OPERATOR PROMPT"
    ) as handle:
        yield handle


def _chat(node: NodeHandle, body: Any, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(node.api + "/chat/completions", content=content, timeout=10, **kw)


def _error(r: httpx.Response, status: int, code: str, message: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    if message is not None:
        assert err["message"] == message
    return dict(err)


# -- /models, /health -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/api/v1", "/v1"])
def test_models(node: NodeHandle, prefix: str) -> None:
    r = httpx.get(node.url + prefix + "/models", timeout=10)
    assert r.status_code == 200
    doc = r.json()
    assert doc["object"] == "list"
    by_id = {m["id"]: m for m in doc["data"]}
    assert set(by_id) == {E2EE_MODEL, TEE_MODEL, TOOLS_MODEL}
    for m in doc["data"]:
        assert m["object"] == "model" and m["type"] == "text" and m["created"] == int(NOW)
        spec = m["model_spec"]
        assert {"name", "privacy", "availableContextTokens", "capabilities"} <= set(spec)
        caps = spec["capabilities"]
        assert set(caps) >= {
            "supportsTeeAttestation",
            "supportsE2EE",
            "supportsFunctionCalling",
            "supportsWebSearch",
            "supportsVision",
            "supportsReasoning",
        }
        assert caps["supportsTeeAttestation"] is True
        assert caps["supportsE2EE"] is m["id"].startswith("e2ee-")
        assert caps["supportsWebSearch"] is False and caps["supportsVision"] is False
    assert by_id[TOOLS_MODEL]["model_spec"]["capabilities"]["supportsFunctionCalling"] is True
    # The seed document's filter finds exactly the e2ee models.
    e2ee = [
        m["id"]
        for m in doc["data"]
        if m.get("model_spec", {}).get("capabilities", {}).get("supportsE2EE") is True
    ]
    assert e2ee == [E2EE_MODEL]


def test_models_type_filter(node: NodeHandle) -> None:
    assert len(httpx.get(node.api + "/models", params={"type": "text"}).json()["data"]) == 3
    assert len(httpx.get(node.api + "/models", params={"type": "all"}).json()["data"]) == 3
    assert httpx.get(node.api + "/models", params={"type": "image"}).json()["data"] == []


def test_model_retrieve(node: NodeHandle) -> None:
    r = httpx.get(node.url + "/v1/models/" + TEE_MODEL)
    assert r.status_code == 200 and r.json()["id"] == TEE_MODEL
    _error(
        httpx.get(node.url + "/v1/models/tee-nope"),
        404,
        "model_not_found",
        "Model tee-nope not found",
    )


def test_health(node: NodeHandle) -> None:
    r = httpx.get(node.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_unknown_route_and_method(node: NodeHandle) -> None:
    err = _error(httpx.get(node.api + "/nope"), 404, "route_not_found")
    assert err["type"] == "not_found_error"
    _error(httpx.get(node.api + "/chat/completions"), 405, "method_not_allowed")
    _error(httpx.post(node.api + "/models"), 405, "method_not_allowed")


# -- chat: streaming ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/api/v1", "/v1"])
def test_stream_plain(node: NodeHandle, prefix: str) -> None:
    body = {"model": TEE_MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(node.url + prefix + "/chat/completions", json=body, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-venice-tee"] == "true"
    assert r.headers["x-venice-tee-provider"] == "enclaved"
    assert "content-encoding" not in r.headers
    assert r.content.endswith(b"data: [DONE]\n\n")
    events = sse_events(r.content)
    chunks, usage, done = events[:-2], events[-2], events[-1]
    assert done == "[DONE]"
    ids = {e["id"] for e in events[:-1]}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-") and len(next(iter(ids))) == 41
    for e in events[:-1]:
        assert e["object"] == "chat.completion.chunk"
        assert e["model"] == TEE_MODEL
        assert e["created"] == int(NOW)
        assert "system_fingerprint" not in e  # only allow-listed fields pass
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello, wörld!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("stop_reason" not in c["choices"][0] for c in chunks)
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 4,
        "total_tokens": 11,
    }
    assert b"engine-id" not in r.content and b"engine-model" not in r.content


def test_usage_estimated_when_backend_gives_none(tmp_path: Path) -> None:
    with fake_node(tmp_path, backend=FakeBackend(pieces=["a", "b", "c"], usage={})) as n:
        r = _chat(
            n, {"model": TEE_MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        )
        usage = sse_events(r.content)[-2]
        assert usage["choices"] == []
        assert usage["usage"] == {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3}


# -- chat: non-streaming ------------------------------------------------------------------------------------------


def test_non_streaming(node: NodeHandle) -> None:
    r = _chat(node, {"model": E2EE_MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    assert r.headers["x-venice-tee"] == "true"
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["id"].startswith("chatcmpl-")
    assert doc["object"] == "chat.completion"
    assert doc["model"] == E2EE_MODEL and doc["created"] == int(NOW)
    assert doc["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, wörld!"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert doc["usage"]["total_tokens"] == 11


def test_openai_sdk_compatible(node: NodeHandle) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=node.url + "/v1", api_key="unused")
    out = client.chat.completions.create(
        model=TEE_MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert out.choices[0].message.content == "Hello, wörld!"
    stream = client.chat.completions.create(
        model=TEE_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    assert text == "Hello, wörld!"
    assert [m.id for m in client.models.list()] == [E2EE_MODEL, TEE_MODEL, TOOLS_MODEL]


# -- chat: request handling ---------------------------------------------------------------------------------------


def test_system_prompt(node: NodeHandle) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    for model in (TEE_MODEL, E2EE_MODEL):  # e2ee-* used without E2EE gets it too
        assert _chat(node, {"model": model, "messages": msgs}).status_code == 200
        assert node.backend.requests[-1].messages == [
            {"role": "system", "content": "OPERATOR PROMPT"},
            *msgs,
        ]
    body = {
        "model": TEE_MODEL,
        "messages": msgs,
        "venice_parameters": {"include_venice_system_prompt": False},
    }
    assert _chat(node, body).status_code == 200
    assert node.backend.requests[-1].messages == msgs


def test_parameters_passed_and_unknown_dropped(node: NodeHandle) -> None:
    body = {
        "model": TEE_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5,
        "max_tokens": 12,
        "stop": ["\n"],
        "seed": 3,
        "user": "someone",
        "frobnicate": True,
        "venice_parameters": {"unknown_key": 1},
        "stream_options": {"include_usage": True},
    }
    assert _chat(node, body).status_code == 200
    assert node.backend.requests[-1].params == {
        "temperature": 0.5,
        "max_tokens": 12,
        "stop": ["\n"],
        "seed": 3,
    }


def test_text_parts_joined(node: NodeHandle) -> None:
    body = {
        "model": TEE_MODEL,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ],
        "venice_parameters": {"include_venice_system_prompt": False},
    }
    assert _chat(node, body).status_code == 200
    assert node.backend.requests[-1].messages == [{"role": "user", "content": "a\nb"}]


def test_tools_only_where_supported(node: NodeHandle) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    msgs = [{"role": "user", "content": "hi"}]
    _error(
        _chat(node, {"model": TEE_MODEL, "messages": msgs, "tools": [tool]}),
        400,
        "unsupported_feature",
        f"Function calling is not supported by model {TEE_MODEL}",
    )
    assert _chat(node, {"model": TOOLS_MODEL, "messages": msgs, "tools": [tool]}).status_code == 200
    assert node.backend.requests[-1].params["tools"] == [tool]


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (b"{nope", 400, "invalid_json", "Request body is not valid JSON"),
        (b"", 400, "invalid_json", "Request body is not valid JSON"),
        (b"[1, 2]", 400, "invalid_body", "Request body must be a JSON object"),
        (
            {"messages": [{"role": "user", "content": "x"}]},
            400,
            "missing_required_parameter",
            "Missing required parameter: 'model'",
        ),
        ({"model": 3, "messages": []}, 400, "invalid_parameter", None),
        (
            {"model": "tee-nope", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model_not_found",
            "Model tee-nope not found",
        ),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model_not_found",
            "Model gpt-4o not found",
        ),
        (
            {"model": TEE_MODEL},
            400,
            "missing_required_parameter",
            "Missing required parameter: 'messages'",
        ),
        ({"model": TEE_MODEL, "messages": []}, 400, "invalid_parameter", None),
        (
            {"model": TEE_MODEL, "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "invalid_parameter",
            None,
        ),
        ({"model": TEE_MODEL, "messages": [{"role": "user"}]}, 400, "invalid_parameter", None),
        ({"model": TEE_MODEL, "messages": ["hi"]}, 400, "invalid_parameter", None),
        (
            {"model": TEE_MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2},
            400,
            "unsupported_parameter",
            "Only n=1 is supported",
        ),
        (
            {"model": TEE_MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
            400,
            "invalid_parameter",
            None,
        ),
        (
            {
                "model": TEE_MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "temperature": "hot",
            },
            400,
            "invalid_parameter",
            None,
        ),
        (
            {"model": TEE_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
            "invalid_parameter",
            None,
        ),
        (
            {
                "model": TEE_MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "venice_parameters": [],
            },
            400,
            "invalid_parameter",
            None,
        ),
        (
            {
                "model": TEE_MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "venice_parameters": {"enable_e2ee": True},
            },
            400,
            "e2ee_invalid_headers",
            None,
        ),
        (
            {
                "model": TEE_MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ],
            },
            400,
            "unsupported_feature",
            f"Image input is not supported by model {TEE_MODEL}",
        ),
        (
            {
                "model": TEE_MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "venice_parameters": {"enable_web_search": "on"},
            },
            400,
            "unsupported_feature",
            f"Web search is not supported by model {TEE_MODEL}",
        ),
    ],
)
def test_bad_requests(
    node: NodeHandle, body: Any, status: int, code: str, message: str | None
) -> None:
    before = len(node.backend.requests)
    _error(_chat(node, body), status, code, message)
    assert len(node.backend.requests) == before


def test_web_search_auto_is_ignored_without_e2ee(node: NodeHandle) -> None:
    body = {
        "model": TEE_MODEL,
        "messages": [{"role": "user", "content": "x"}],
        "venice_parameters": {"enable_web_search": "auto"},
    }
    assert _chat(node, body).status_code == 200


def test_body_too_large(tmp_path: Path) -> None:
    with fake_node(tmp_path, max_request_bytes=2048) as n:
        body = {"model": TEE_MODEL, "messages": [{"role": "user", "content": "x" * 4096}]}
        _error(_chat(n, body), 413, "request_too_large")
        assert n.backend.requests == []


@pytest.mark.parametrize("stream", [True, False])
def test_backend_fails_before_first_byte(tmp_path: Path, stream: bool) -> None:
    with fake_node(tmp_path, backend=FakeBackend(fail_before=True)) as n:
        r = _chat(
            n,
            {"model": TEE_MODEL, "stream": stream, "messages": [{"role": "user", "content": "x"}]},
        )
        err = _error(r, 503, "model_unavailable", "engine unavailable")
        assert err["type"] == "server_error"
        assert r.headers["x-venice-tee"] == "true"


def test_non_streaming_mid_failure_is_an_http_error(tmp_path: Path) -> None:
    with fake_node(tmp_path, backend=FakeBackend(crash_after=1)) as n:
        r = _chat(n, {"model": TEE_MODEL, "messages": [{"role": "user", "content": "x"}]})
        err = _error(r, 500, "internal_error", "Internal server error")
        assert "secret" not in err["message"]


# -- attestation ------------------------------------------------------------------------------------------------------

FIELDS = [
    "verified",
    "nonce",
    "request_nonce",
    "nonce_source",
    "model",
    "model_name",
    "upstream_model",
    "tee_provider",
    "tee_hardware",
    "intel_quote",
    "nvidia_payload",
    "signing_key",
    "signing_public_key",
    "signing_address",
    "signing_algo",
    "event_log",
    "info",
    "server_verification",
]


@pytest.mark.parametrize("prefix", ["/api/v1", "/v1"])
def test_attestation(node: NodeHandle, prefix: str) -> None:
    nonce = "0123456789abcdef" * 4
    r = httpx.get(
        node.url + prefix + "/tee/attestation",
        params={"model": E2EE_MODEL, "nonce": nonce},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-venice-tee"] == "true"
    doc = r.json()
    # PROTOCOL.md's fields in its order; then the ACI block (docs/server.md).
    assert [k for k in doc if k != "aci"] == FIELDS
    assert doc["nonce"] == doc["request_nonce"] == nonce
    assert doc["nonce_source"] == "client"
    assert doc["model"] == E2EE_MODEL
    assert doc["model_name"] == doc["upstream_model"] == FakeBackend.model_name
    assert doc["tee_provider"] == "enclaved" and doc["tee_hardware"] == "simulated"
    assert doc["nvidia_payload"] is None
    assert doc["signing_key"] == doc["signing_public_key"] == node.key.public_key_hex
    assert doc["signing_address"] == node.key.address
    assert doc["signing_algo"] == "ecdsa"
    assert isinstance(doc["event_log"], list) and isinstance(doc["info"], dict)
    # REPORTDATA = address || 12 zero bytes || nonce.
    quote = parse_quote(bytes.fromhex(doc["intel_quote"]))
    assert quote.report_data == bytes.fromhex(node.key.address[2:]) + bytes(12) + bytes.fromhex(
        nonce
    )


def test_attestation_verified_by_the_node_itself(node: NodeHandle) -> None:
    doc = httpx.get(
        node.api + "/tee/attestation", params={"model": TEE_MODEL, "nonce": "ab" * 32}, timeout=30
    ).json()
    assert doc["verified"] is True, doc["server_verification"]
    sv = doc["server_verification"]
    assert sv["ok"] is True
    assert sv["tdx"]["valid"] is True and sv["tdx"]["tcbStatus"] == "UpToDate"
    assert sv["signingAddressBinding"]["bound"] is True and sv["nonceBinding"]["bound"] is True
    # The development collateral is checked, not skipped.
    checks = {c["id"]: c["status"] for c in sv["checks"]}
    assert checks["tdx.collateral.pck_crl"] == "pass" and checks["tdx.tcb.status"] == "pass"


def test_attestation_verifies_with_the_project_verifier_client_side(node: NodeHandle) -> None:
    """What a client does: parse, verify under the development root, same nonce."""
    from enclaved.attestation import AttestationReport, Policy, Verifier

    nonce = bytes(range(32))
    r = httpx.get(
        node.api + "/tee/attestation",
        params={"model": E2EE_MODEL, "nonce": nonce.hex()},
        timeout=30,
    )
    root = (node.app.state.node.evidence.root_path).read_text()
    with pytest.warns(UserWarning):
        verdict = Verifier(Policy.development(root)).verify(
            AttestationReport.from_json(r.content), nonce=nonce
        )
    assert verdict.ok, verdict.table()
    # ...and a verifier that trusts only Intel rejects it.
    strict = Verifier(Policy.strict(), collateral=None).verify(
        AttestationReport.from_json(r.content), nonce=nonce
    )
    assert not strict.ok
    row = strict.get("tdx.pck.chain")
    assert row is not None and row.status.value == "fail"


def test_attestation_uppercase_nonce_echoed_as_sent(node: NodeHandle) -> None:
    nonce = "AB" * 32
    doc = httpx.get(
        node.api + "/tee/attestation", params={"model": TEE_MODEL, "nonce": nonce}, timeout=30
    ).json()
    assert doc["nonce"] == nonce
    quote = parse_quote(bytes.fromhex(doc["intel_quote"]))
    assert quote.report_data[32:] == bytes.fromhex(nonce)


def test_attestation_server_nonce(node: NodeHandle) -> None:
    docs = [
        httpx.get(node.api + "/tee/attestation", params={"model": TEE_MODEL}, timeout=30).json()
        for _ in range(2)
    ]
    for doc in docs:
        assert doc["nonce_source"] == "server"
        assert len(doc["nonce"]) == 64 and doc["nonce"] == doc["request_nonce"]
        quote = parse_quote(bytes.fromhex(doc["intel_quote"]))
        assert quote.report_data[32:].hex() == doc["nonce"]
        assert doc["verified"] is True
    assert docs[0]["nonce"] != docs[1]["nonce"]


@pytest.mark.parametrize(
    ("nonce", "message"),
    [
        (
            "ab" * 16,
            "Nonce must be 32 bytes (64 hex characters)",
        ),  # the seed doc's `openssl rand -hex 16`
        ("ab" * 33, "Nonce must be 32 bytes (64 hex characters)"),
        ("a" * 63, "Nonce must be 32 bytes (64 hex characters)"),
        ("", "Nonce must be 32 bytes (64 hex characters)"),
        ("zz" * 32, "Nonce must be hex-encoded"),
        ("0x" + "ab" * 31, "Nonce must be hex-encoded"),
        ("ab" * 31 + " a", "Nonce must be hex-encoded"),
    ],
)
def test_attestation_bad_nonce(node: NodeHandle, nonce: str, message: str) -> None:
    r = httpx.get(
        node.api + "/tee/attestation", params={"model": TEE_MODEL, "nonce": nonce}, timeout=30
    )
    err = _error(r, 400, "invalid_nonce", message)
    assert err["param"] == "nonce"


def test_attestation_model_errors(node: NodeHandle) -> None:
    _error(
        httpx.get(node.api + "/tee/attestation", params={"model": "e2ee-nope"}),
        404,
        "model_not_found",
        "Model e2ee-nope not found",
    )
    _error(httpx.get(node.api + "/tee/attestation"), 400, "missing_required_parameter")


def test_attestation_refused_for_a_model_without_tee(tmp_path: Path) -> None:
    """Unreachable through the config loader (every tee-/e2ee- model is attested),
    but the route still refuses such a model rather than attesting it."""
    import dataclasses

    from conftest import running_server
    from server_fakes import fake_config

    from enclaved.server.app import create_app
    from enclaved.server.config import Capabilities

    config = fake_config(tmp_path)
    odd = dataclasses.replace(
        config.models[1],
        capabilities=Capabilities(supports_e2ee=False, supports_tee_attestation=False),
    )
    config = config.replace(models=(config.models[0], odd, config.models[2]))
    backend = FakeBackend()
    app = create_app(config, backends={m.id: backend for m in config.models})
    with running_server(app) as url:
        r = httpx.get(url + "/v1/tee/attestation", params={"model": odd.id}, timeout=30)
        _error(r, 400, "tee_not_supported", f"Model {odd.id} does not support TEE attestation")


def test_a_node_without_gpus_reports_no_gpu_verification_not_a_failed_one(
    node: NodeHandle,
) -> None:
    # venice-e2ee (npm) refuses a node whose server_verification.nvidia is
    # present with valid: false ("Venice reported failed NVIDIA attestation").
    doc = httpx.get(
        node.api + "/tee/attestation", params={"model": TEE_MODEL, "nonce": "cd" * 32}, timeout=30
    ).json()
    assert doc["nvidia_payload"] is None
    sv = doc["server_verification"]
    assert sv["nvidia"] is None and sv["nvidiaNonceBinding"] is None
    assert doc["verified"] is True
