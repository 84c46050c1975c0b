"""Every row of PROTOCOL.md's E2EE error table, over a real socket.

Each test sends one bad request and asserts the status, the exact message,
the stable code, and that the backend never saw the request (no plaintext
fallback, no generation).
"""

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
    NodeHandle,
    SeedClient,
    fake_node,
    sse_events,
)

from enclaved.crypto import KeyPair, seal

# The node verifies its own simulated evidence under the development policy, which warns by design.
pytestmark = pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning")


MSG_TOGETHER = (
    "Invalid E2EE headers: X-Venice-TEE-Client-Pub-Key, X-Venice-TEE-Model-Pub-Key "
    "and X-Venice-TEE-Signing-Algo must be sent together"
)
MSG_STALE = (
    "The encryption key is no longer valid. Please refresh your attestation report and retry."
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeHandle]:
    with fake_node(tmp_path_factory.mktemp("node")) as handle:
        yield handle


@pytest.fixture
def client() -> SeedClient:
    return SeedClient()


def _post(node: NodeHandle, body: Any, headers: dict[str, str]) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        node.api + "/chat/completions",
        content=content,
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )


def _body(node: NodeHandle, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "model": E2EE_MODEL,
        "stream": True,
        "messages": [
            {"role": "user", "content": SeedClient.encrypt(text, node.key.public_key_hex)}
        ],
        **extra,
    }


def _assert_error(
    node: NodeHandle, r: httpx.Response, status: int, message: str, code: str, calls_before: int
) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["message"] == message
    assert err["code"] == code
    assert err["type"] == "invalid_request_error"
    assert set(err) == {"message", "type", "param", "code"}
    # Refused at the door: the engine never saw it.
    assert len(node.backend.requests) == calls_before


# -- row 1: some but not all headers -------------------------------------------------------


@pytest.mark.parametrize(
    "present",
    [
        ("X-Venice-TEE-Client-Pub-Key",),
        ("X-Venice-TEE-Model-Pub-Key",),
        ("X-Venice-TEE-Signing-Algo",),
        ("X-Venice-TEE-Client-Pub-Key", "X-Venice-TEE-Model-Pub-Key"),
        ("X-Venice-TEE-Client-Pub-Key", "X-Venice-TEE-Signing-Algo"),
        ("X-Venice-TEE-Model-Pub-Key", "X-Venice-TEE-Signing-Algo"),
    ],
)
def test_partial_headers(node: NodeHandle, client: SeedClient, present: tuple[str, ...]) -> None:
    before = len(node.backend.requests)
    headers = {k: v for k, v in client.headers(node.key.public_key_hex).items() if k in present}
    r = _post(node, _body(node), headers)
    _assert_error(node, r, 400, MSG_TOGETHER, "e2ee_invalid_headers", before)


def test_empty_header_counts_as_present(node: NodeHandle, client: SeedClient) -> None:
    """A header sent empty is still sent: no silent plaintext fallback."""
    before = len(node.backend.requests)
    headers = client.headers(node.key.public_key_hex)
    headers["X-Venice-TEE-Model-Pub-Key"] = ""
    r = _post(node, _body(node), headers)
    assert r.status_code in (400, 421)
    assert len(node.backend.requests) == before


def test_partial_headers_on_tee_model_is_not_plaintext(
    node: NodeHandle, client: SeedClient
) -> None:
    before = len(node.backend.requests)
    r = _post(
        node,
        {"model": TEE_MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        {"X-Venice-TEE-Client-Pub-Key": client.public_key_hex},
    )
    _assert_error(node, r, 400, MSG_TOGETHER, "e2ee_invalid_headers", before)


# -- row 2: algorithm ------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["ed25519", "ecdh", "", "ecdsa2", "secp256k1"])
def test_bad_algo(node: NodeHandle, client: SeedClient, algo: str) -> None:
    before = len(node.backend.requests)
    headers = client.headers(node.key.public_key_hex)
    headers["X-Venice-TEE-Signing-Algo"] = algo
    r = _post(node, _body(node), headers)
    _assert_error(
        node,
        r,
        400,
        "Invalid X-Venice-TEE-Signing-Algo: must be 'ecdsa'",
        "e2ee_invalid_signing_algo",
        before,
    )


# -- row 3: client key ---------------------------------------------------------------------------


def _off_curve_key() -> str:
    # 04 || x || y with y != sqrt(x^3 + 7): a valid-looking 65-byte key off the curve.
    good = bytes.fromhex(SeedClient().public_key_hex)
    bad = good[:-1] + bytes([good[-1] ^ 1])
    return bad.hex()


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda c: c.public_key_hex[2:], id="128-hex-without-04"),
        pytest.param(lambda c: "03" + c.public_key_hex[2:], id="wrong-prefix"),
        pytest.param(lambda c: c.public_key_hex[:-2], id="too-short"),
        pytest.param(lambda c: c.public_key_hex + "00", id="too-long"),
        pytest.param(lambda c: c.public_key_hex[:-1] + "g", id="not-hex"),
        pytest.param(lambda c: "0x" + c.public_key_hex, id="0x-prefix"),
        pytest.param(lambda c: KeyPair.generate().public_key.hex()[:68], id="compressed-length"),
        pytest.param(lambda c: _off_curve_key(), id="off-curve"),
        pytest.param(lambda c: "04" + "00" * 64, id="zero-point"),
        pytest.param(lambda c: "", id="empty"),
    ],
)
def test_bad_client_key(node: NodeHandle, client: SeedClient, key: Any) -> None:
    before = len(node.backend.requests)
    headers = client.headers(node.key.public_key_hex)
    headers["X-Venice-TEE-Client-Pub-Key"] = key(client)
    r = _post(node, _body(node), headers)
    _assert_error(node, r, 400, "Invalid public key", "e2ee_invalid_public_key", before)


# -- row 4: model key (421) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_key",
    [
        pytest.param(lambda n: KeyPair.generate().public_key_hex, id="another-node"),
        pytest.param(lambda n: n.key.public_key_hex[:-2] + "00", id="one-byte-off"),
        pytest.param(lambda n: "not a key", id="garbage"),
    ],
)
def test_stale_model_key(node: NodeHandle, client: SeedClient, model_key: Any) -> None:
    before = len(node.backend.requests)
    r = _post(node, _body(node), client.headers(model_key(node)))
    assert r.status_code == 421, r.text
    err = r.json()["error"]
    assert err["message"] == MSG_STALE
    assert err["code"] == "e2ee_attestation_stale"
    assert len(node.backend.requests) == before


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(lambda k: k, id="as-attested"),
        pytest.param(lambda k: k.upper(), id="uppercase"),
        pytest.param(lambda k: k[2:], id="128-hex-without-04"),
    ],
)
def test_model_key_forms_accepted(node: NodeHandle, client: SeedClient, form: Any) -> None:
    r = _post(node, _body(node), client.headers(form(node.key.public_key_hex)))
    assert r.status_code == 200, r.text


# -- row 5: streaming ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, None, "missing"])
def test_streaming_required(node: NodeHandle, client: SeedClient, stream: Any) -> None:
    before = len(node.backend.requests)
    body = _body(node)
    if stream == "missing":
        del body["stream"]
    else:
        body["stream"] = stream
    r = _post(node, body, client.headers(node.key.public_key_hex))
    _assert_error(node, r, 400, "E2EE requires streaming", "e2ee_streaming_required", before)


# -- row 6: not hex ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("What is 2+2?", id="plaintext"),
        pytest.param(lambda env: env[:-1], id="odd-length"),
        pytest.param(lambda env: env[:100] + "zz" + env[102:], id="non-hex-chars"),
        pytest.param(lambda env: env[:100] + " " + env[101:], id="space"),
        # bytes.fromhex would skip whitespace between pairs: the node must not.
        pytest.param(lambda env: env[:100] + " " + env[100:], id="space-between-pairs"),
        pytest.param(lambda env: env + "\n", id="trailing-newline"),
        pytest.param(lambda env: env[:100] + "\u0663\u0663" + env[102:], id="non-ascii-digits"),
        pytest.param(lambda env: "0x" + env, id="0x-prefix"),
    ],
)
@pytest.mark.parametrize("role", ["user", "system"])
def test_not_hex(node: NodeHandle, client: SeedClient, content: Any, role: str) -> None:
    before = len(node.backend.requests)
    env = SeedClient.encrypt("hello", node.key.public_key_hex)
    value = content(env) if callable(content) else content
    body = {"model": E2EE_MODEL, "stream": True, "messages": [{"role": role, "content": value}]}
    r = _post(node, body, client.headers(node.key.public_key_hex))
    _assert_error(node, r, 400, "Encrypted field is not valid hex", "e2ee_invalid_hex", before)


def test_plaintext_among_encrypted_messages(node: NodeHandle, client: SeedClient) -> None:
    before = len(node.backend.requests)
    body = _body(node)
    body["messages"].insert(0, {"role": "system", "content": "You are helpful."})
    r = _post(node, body, client.headers(node.key.public_key_hex))
    _assert_error(node, r, 400, "Encrypted field is not valid hex", "e2ee_invalid_hex", before)


def test_plaintext_text_part(node: NodeHandle, client: SeedClient) -> None:
    before = len(node.backend.requests)
    body = _body(node)
    body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "plain"}]}]
    r = _post(node, body, client.headers(node.key.public_key_hex))
    _assert_error(node, r, 400, "Encrypted field is not valid hex", "e2ee_invalid_hex", before)


# -- row 7: decryption failures, all one message -----------------------------------------------------


def _flip(env: str, byte_index: int) -> str:
    raw = bytearray(bytes.fromhex(env))
    raw[byte_index] ^= 0x01
    return raw.hex()


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda env, n: env[:184], id="shorter-than-minimum"),
        pytest.param(lambda env, n: "", id="empty"),
        pytest.param(lambda env, n: _flip(env, len(bytes.fromhex(env)) - 1), id="tag-bit-flip"),
        pytest.param(lambda env, n: _flip(env, 80), id="ciphertext-bit-flip"),
        pytest.param(lambda env, n: _flip(env, 70), id="iv-bit-flip"),
        pytest.param(lambda env, n: _flip(env, 10), id="eph-key-off-curve-or-wrong"),
        pytest.param(lambda env, n: "05" + env[2:], id="eph-key-bad-prefix"),
        pytest.param(
            lambda env, n: SeedClient.encrypt("hi", KeyPair.generate().public_key_hex),
            id="wrong-recipient",
        ),
        pytest.param(
            # The last tag byte, changed (it is 00 one time in 256: then 01).
            lambda env, n: env.upper()[:-2] + ("01" if env.endswith("00") else "00"),
            id="uppercase-and-bad-tag",
        ),
    ],
)
def test_decryption_failures(node: NodeHandle, client: SeedClient, mutate: Any) -> None:
    before = len(node.backend.requests)
    env = SeedClient.encrypt("hello", node.key.public_key_hex)
    body = {
        "model": E2EE_MODEL,
        "stream": True,
        "messages": [{"role": "user", "content": mutate(env, node)}],
    }
    r = _post(node, body, client.headers(node.key.public_key_hex))
    _assert_error(node, r, 400, "Failed to decrypt field", "e2ee_decryption_failed", before)


def test_uppercase_envelope_accepted(node: NodeHandle, client: SeedClient) -> None:
    env = SeedClient.encrypt("hello", node.key.public_key_hex).upper()
    body = {"model": E2EE_MODEL, "stream": True, "messages": [{"role": "user", "content": env}]}
    r = _post(node, body, client.headers(node.key.public_key_hex))
    assert r.status_code == 200, r.text
    assert node.backend.requests[-1].messages == [{"role": "user", "content": "hello"}]


# -- row 8: UTF-8 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", [b"\xff\xfe", b"caf\xc3", b"\xed\xa0\x80"])
def test_not_utf8(node: NodeHandle, client: SeedClient, plaintext: bytes) -> None:
    before = len(node.backend.requests)
    env = SeedClient.encrypt(plaintext, node.key.public_key_hex)
    body = {"model": E2EE_MODEL, "stream": True, "messages": [{"role": "user", "content": env}]}
    r = _post(node, body, client.headers(node.key.public_key_hex))
    _assert_error(node, r, 400, "Decrypted content is not valid UTF-8", "e2ee_invalid_utf8", before)


# -- row 9: features -------------------------------------------------------------------------------------------------

_TOOL = {
    "type": "function",
    "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"tools": [_TOOL]}, "Function calling is not supported with E2EE", id="tools"),
        pytest.param(
            {"tool_choice": "auto"}, "Function calling is not supported with E2EE", id="tool_choice"
        ),
        pytest.param(
            {"functions": [_TOOL["function"]]},
            "Function calling is not supported with E2EE",
            id="functions",
        ),
        pytest.param(
            {"venice_parameters": {"enable_web_search": "on"}},
            "Web search is not supported with E2EE",
            id="web-on",
        ),
        pytest.param(
            {"venice_parameters": {"enable_web_search": "auto"}},
            "Web search is not supported with E2EE",
            id="web-auto",
        ),
        pytest.param(
            {"venice_parameters": {"enable_web_search": True}},
            "Web search is not supported with E2EE",
            id="web-true",
        ),
        pytest.param({"logprobs": True}, "Logprobs is not supported with E2EE", id="logprobs"),
    ],
)
def test_unsupported_features(
    node: NodeHandle, client: SeedClient, change: dict[str, Any], message: str
) -> None:
    before = len(node.backend.requests)
    r = _post(node, {**_body(node), **change}, client.headers(node.key.public_key_hex))
    _assert_error(node, r, 400, message, "e2ee_unsupported_feature", before)


@pytest.mark.parametrize(
    ("part", "message"),
    [
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            "Image input is not supported with E2EE",
        ),
        (
            {"type": "file", "file": {"file_data": "AAAA", "filename": "a.pdf"}},
            "File upload is not supported with E2EE",
        ),
        (
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            "Audio input is not supported with E2EE",
        ),
    ],
)
def test_unsupported_parts(
    node: NodeHandle, client: SeedClient, part: dict[str, Any], message: str
) -> None:
    before = len(node.backend.requests)
    env = SeedClient.encrypt("describe this", node.key.public_key_hex)
    body = _body(node)
    body["messages"] = [{"role": "user", "content": [{"type": "text", "text": env}, part]}]
    r = _post(node, body, client.headers(node.key.public_key_hex))
    _assert_error(node, r, 400, message, "e2ee_unsupported_feature", before)


def test_tool_messages_in_history(node: NodeHandle, client: SeedClient) -> None:
    before = len(node.backend.requests)
    body = _body(node)
    body["messages"] += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    r = _post(node, body, client.headers(node.key.public_key_hex))
    _assert_error(
        node,
        r,
        400,
        "Function calling is not supported with E2EE",
        "e2ee_unsupported_feature",
        before,
    )


def test_web_search_off_is_fine(node: NodeHandle, client: SeedClient) -> None:
    body = {**_body(node), "venice_parameters": {"enable_web_search": "off"}}
    r = _post(node, body, client.headers(node.key.public_key_hex))
    assert r.status_code == 200, r.text


# -- row 10: model without E2EE -------------------------------------------------------------------------------------------


def test_model_without_e2ee(node: NodeHandle, client: SeedClient) -> None:
    before = len(node.backend.requests)
    body = {**_body(node), "model": TEE_MODEL}
    r = _post(node, body, client.headers(node.key.public_key_hex))
    _assert_error(
        node, r, 400, f"Model {TEE_MODEL} does not support E2EE", "e2ee_not_supported", before
    )


def test_e2ee_disabled_by_parameter_but_headers_sent(node: NodeHandle, client: SeedClient) -> None:
    before = len(node.backend.requests)
    body = {**_body(node), "venice_parameters": {"enable_e2ee": False}}
    r = _post(node, body, client.headers(node.key.public_key_hex))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "e2ee_invalid_headers"
    assert len(node.backend.requests) == before


# -- what does work ------------------------------------------------------------------------------------------------------------


def test_text_parts_each_an_envelope(node: NodeHandle, client: SeedClient) -> None:
    k = node.key.public_key_hex
    body = _body(node)
    body["messages"] = [
        {"role": "system", "content": SeedClient.encrypt("Be brief.", k)},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": SeedClient.encrypt("part one", k)},
                {"type": "text", "text": SeedClient.encrypt("part two", k)},
            ],
        },
        {"role": "assistant", "content": "plaintext history"},
        {"role": "user", "content": seal("thé end", bytes.fromhex(k))},
    ]
    r = _post(node, body, client.headers(k))
    assert r.status_code == 200, r.text
    assert node.backend.requests[-1].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "part one\npart two"},
        {"role": "assistant", "content": "plaintext history"},
        {"role": "user", "content": "thé end"},
    ]
    events = sse_events(r.content)
    text = "".join(
        client.decrypt(c["delta"]["content"])
        for e in events
        if isinstance(e, dict)
        for c in e.get("choices", [])
        if c["delta"].get("content")
    )
    assert text == "".join(node.backend.pieces)


def test_no_system_prompt_under_e2ee(tmp_path: Path) -> None:
    with fake_node(tmp_path, system_prompt="OPERATOR PROMPT") as n:
        client = SeedClient()
        r = _post(n, _body(n), client.headers(n.key.public_key_hex))
        assert r.status_code == 200, r.text
        assert all(m["content"] != "OPERATOR PROMPT" for m in n.backend.requests[-1].messages)
        body = {**_body(n), "venice_parameters": {"include_venice_system_prompt": True}}
        r = _post(n, body, client.headers(n.key.public_key_hex))
        assert r.status_code == 200
        assert [m["role"] for m in n.backend.requests[-1].messages] == ["user"]


def test_header_checks_come_before_body_checks(node: NodeHandle, client: SeedClient) -> None:
    """A deterministic order: header errors win over body errors (docs/server.md)."""
    headers = client.headers(node.key.public_key_hex)
    headers["X-Venice-TEE-Signing-Algo"] = "rsa"
    r = _post(node, b"{not json", headers)
    assert r.json()["error"]["code"] == "e2ee_invalid_signing_algo"


def test_unknown_model_with_e2ee_is_404(node: NodeHandle, client: SeedClient) -> None:
    r = _post(node, {**_body(node), "model": "e2ee-nope"}, client.headers(node.key.public_key_hex))
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "Model e2ee-nope not found"


def test_backend_never_gets_ciphertext_of_other_roles(node: NodeHandle, client: SeedClient) -> None:
    """Assistant history that happens to look like an envelope is passed on untouched."""
    k = node.key.public_key_hex
    env = SeedClient.encrypt("x", k)
    body = _body(node)
    body["messages"] = [
        {"role": "assistant", "content": env},
        {"role": "user", "content": SeedClient.encrypt("y", k)},
    ]
    r = _post(node, body, client.headers(k))
    assert r.status_code == 200
    assert node.backend.requests[-1].messages[0]["content"] == env
