"""The client transport against an in-memory node (tests/client_fakes.py).

Fast and offline: the protocol logic - attestation caching and refresh,
E2EE request sealing, incremental decryption, fail-closed stream handling,
signature checks, key lifetime, logging - through the official ``openai``
SDK and raw httpx. The same flows against a real enclaved server, with the
real verifier, are in test_client_sdk.py and test_client_mitm.py.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import json
import logging
import warnings
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from client_fakes import E2EE_MODEL, PLAIN_MODEL, TEE_MODEL, BindingVerifier, FakeNode, answer_text
from conftest import SHARED
from openai.types.chat import ChatCompletionMessageParam

import enclaved
from enclaved.attestation import Policy, Verifier
from enclaved.attestation.verifier import directory_collateral
from enclaved.client import (
    AsyncEnclavedTransport,
    EnclavedTransport,
    last_attestation,
    last_signature,
)
from enclaved.client._attest import check_attestation
from enclaved.crypto import KeyPair, keccak256, looks_like_envelope
from enclaved.errors import (
    APIError,
    ConfigError,
    DecryptionError,
    NetworkError,
    StaleAttestationError,
    VerificationError,
)

BASE = "http://node.test/v1"
PROMPT = "What is the capital of Atlantis? canary-prompt-7f3a"
ANSWER = ["Poseidonia", " is ", "the capital", ". canary-answer-91c2"]
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": PROMPT},
]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def sync_client(node: FakeNode, **kw: object) -> openai.OpenAI:
    kw.setdefault("verifier", BindingVerifier())
    kw.setdefault("sleep", lambda s: None)
    transport = EnclavedTransport(httpx.MockTransport(node), **kw)  # type: ignore[arg-type]
    return openai.OpenAI(
        base_url=BASE,
        api_key="k",
        http_client=httpx.Client(transport=transport),  # type: ignore[arg-type]  # openai types httpx2, takes httpx
        max_retries=0,
    )


def async_client(node: FakeNode, **kw: object) -> openai.AsyncOpenAI:
    kw.setdefault("verifier", BindingVerifier())

    async def no_sleep(s: float) -> None:
        return None

    kw.setdefault("sleep", no_sleep)
    transport = AsyncEnclavedTransport(httpx.MockTransport(node), **kw)  # type: ignore[arg-type]
    return openai.AsyncOpenAI(
        base_url=BASE,
        api_key="k",
        http_client=httpx.AsyncClient(transport=transport),  # type: ignore[arg-type]  # openai types httpx2, takes httpx
        max_retries=0,
    )


@pytest.fixture
def node() -> FakeNode:
    return FakeNode(list(ANSWER))


# -- the happy paths ---------------------------------------------------------------


def test_e2ee_non_streaming_returns_a_normal_completion(node: FakeNode) -> None:
    client = sync_client(node)
    reply = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content == "".join(ANSWER)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens == 7
    # What went over the wire: sealed content, the three headers, stream forced.
    seen = node.seen[0]
    assert seen.body["stream"] is True
    assert all(looks_like_envelope(m["content"]) for m in seen.body["messages"])
    assert [m["content"] for m in seen.plaintext_messages] == ["be brief", PROMPT]
    assert seen.headers["x-venice-tee-model-pub-key"] == node.key.public_key_hex
    assert seen.headers["x-venice-tee-signing-algo"] == "ecdsa"
    assert len(seen.headers["x-venice-tee-client-pub-key"]) == 130
    # Verified, and it says so.
    att = last_attestation(client)
    assert att is not None and att.describe() == f"simulated, {node.key.address}"
    sig = last_signature(client)
    assert sig is not None and sig.ok and sig.recovered_address == node.key.address


def test_e2ee_streaming_yields_decrypted_deltas(node: FakeNode) -> None:
    client = sync_client(node)
    stream = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True)
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert pieces == ANSWER
    assert last_signature(client) is not None


def test_each_message_gets_its_own_ephemeral_key_and_each_request_its_own_session_key(
    node: FakeNode,
) -> None:
    client = sync_client(node)
    for _ in range(2):
        client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    a, _ = (s.body["messages"] for s in node.seen)
    assert a[0]["content"][:130] != a[1]["content"][:130]  # fresh ephemeral key per message
    assert (
        node.seen[0].headers["x-venice-tee-client-pub-key"]
        != node.seen[1].headers["x-venice-tee-client-pub-key"]
    )


def test_prompt_keys_are_made_ahead_and_each_used_once(node: FakeNode) -> None:
    """The attested node holds the next prompt's sealers (made during the
    attestation, then after each answer): each message still gets a key of
    its own, and one made ahead of time is one of them."""
    from enclaved.client._attest import PROMPT_SEALERS

    client = sync_client(node)
    client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    att = last_attestation(client)
    assert att is not None and att.sealers is not None
    assert len(att.sealers) == PROMPT_SEALERS  # topped up after the answer
    ready = [s._prefix.hex() for s in list(att.sealers._items)]  # the keys waiting
    for _ in range(2):
        client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    keys = [m["content"][:130] for seen in node.seen for m in seen.body["messages"]]
    assert len(keys) == 3 * len(MESSAGES) and len(set(keys)) == len(keys)
    assert keys[len(MESSAGES)] == ready[0]  # the second request used a key made ahead
    assert node.attestations == 1


def test_text_parts_and_developer_role_are_sealed(node: FakeNode) -> None:
    client = sync_client(node)
    messages = [
        {"role": "developer", "content": "terse"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}],
        },
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "again"},
    ]
    client.chat.completions.create(model=E2EE_MODEL, messages=messages)  # type: ignore[arg-type]
    sent = node.seen[0].body["messages"]
    assert looks_like_envelope(sent[0]["content"])
    assert all(looks_like_envelope(p["text"]) for p in sent[1]["content"])
    assert sent[2]["content"] == "earlier answer"  # the protocol leaves assistant history as is
    assert [m["content"] for m in node.seen[0].plaintext_messages] == [
        "terse",
        "part one\npart two",
        "earlier answer",
        "again",
    ]


def test_async_streaming_and_not(node: FakeNode) -> None:
    async def main() -> None:
        client = async_client(node)
        reply = await client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
        assert reply.choices[0].message.content == "".join(ANSWER)
        stream = await client.chat.completions.create(
            model=E2EE_MODEL, messages=MESSAGES, stream=True
        )
        pieces = [
            c.choices[0].delta.content
            async for c in stream
            if c.choices and c.choices[0].delta.content
        ]
        assert pieces == ANSWER
        assert last_signature(client) is not None
        await client.close()

    asyncio.run(main())


@pytest.mark.parametrize("stream", [False, True])
def test_tee_model_is_attested_and_signed_but_not_encrypted(node: FakeNode, stream: bool) -> None:
    client = sync_client(node)
    text = answer_text(client, TEE_MODEL, MESSAGES, stream)
    assert text == "".join(ANSWER)
    assert node.seen[0].body["messages"] == MESSAGES
    assert "x-venice-tee-client-pub-key" not in node.seen[0].headers
    assert node.attestations == 1
    assert last_signature(client) is not None and last_signature(client).ok


def test_other_models_and_routes_pass_through(node: FakeNode) -> None:
    client = sync_client(node)
    client.chat.completions.create(model=PLAIN_MODEL, messages=MESSAGES)
    assert [m.id for m in client.models.list()] == [E2EE_MODEL]
    assert node.attestations == 0


def test_raw_httpx_stream_ends_with_done_only_after_verification(node: FakeNode) -> None:
    transport = EnclavedTransport(httpx.MockTransport(node), verifier=BindingVerifier())
    with httpx.Client(transport=transport) as http:
        body = {"model": E2EE_MODEL, "messages": MESSAGES, "stream": True}
        with http.stream("POST", BASE + "/chat/completions", json=body) as r:
            assert r.headers["x-enclaved-signing-address"] == node.key.address
            raw = r.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    deltas = [json.loads(e[6:]) for e in events[:-1]]
    assert "".join(
        c["choices"][0]["delta"].get("content") or "" for c in deltas if c["choices"]
    ) == "".join(ANSWER)
    assert deltas[-1]["usage"]["total_tokens"] == 7


# -- attestation cache and refresh --------------------------------------------------


def test_attestation_is_cached_then_refreshed_with_a_new_nonce(node: FakeNode) -> None:
    clock = Clock()
    client = sync_client(node, clock=clock, attestation_ttl=60)
    client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    first = last_attestation(client)
    clock.t += 59
    client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert node.attestations == 1
    clock.t += 2
    client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert node.attestations == 2
    assert first is not None and last_attestation(client).nonce != first.nonce


def test_a_rotated_node_key_is_re_attested_once_and_the_prompt_resealed(node: FakeNode) -> None:
    client = sync_client(node)
    client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    stale = last_attestation(client)
    assert stale is not None and stale.sealers is not None
    node.key = KeyPair.generate()  # the node restarted: the pinned key answers 421
    reply = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    # The 421 used the stale key's ready sealers; none were made again for it.
    assert len(stale.sealers) == 0
    assert reply.choices[0].message.content == "".join(ANSWER)
    assert node.attestations == 2
    assert node.seen[-1].plaintext_messages[1]["content"] == PROMPT


def test_stale_twice_raises(node: FakeNode) -> None:
    client = sync_client(node)
    node.stale_times = 2
    with pytest.raises(StaleAttestationError):
        client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert node.attestations == 2


def test_unknown_model_gets_the_servers_own_error(node: FakeNode) -> None:
    client = sync_client(node)
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(model="e2ee-nope", messages=MESSAGES)


# -- failing closed -------------------------------------------------------------------


def test_swapped_key_in_attestation_is_refused(node: FakeNode) -> None:
    node.report_override = {
        "signing_key": KeyPair.generate().public_key_hex,
        "signing_public_key": None,
    }
    with pytest.raises(VerificationError, match="binding.signing_key"):
        sync_client(node).chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert node.seen == []  # nothing was sent


def test_replayed_attestation_nonce_is_refused(node: FakeNode) -> None:
    node.report_override = {"nonce": "11" * 32, "request_nonce": "11" * 32}
    with pytest.raises(VerificationError, match="report.nonce"):
        sync_client(node).chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert node.seen == []


@pytest.mark.parametrize("stream", [False, True])
def test_plaintext_answer_is_refused(node: FakeNode, stream: bool) -> None:
    node.plaintext_answer = True
    client = sync_client(node)
    got: list[str] = []
    with pytest.raises(DecryptionError, match="^failed to decrypt$"):
        out = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=stream)
        for c in out:
            if c.choices and c.choices[0].delta.content:  # type: ignore[union-attr]
                got.append(c.choices[0].delta.content)  # type: ignore[union-attr]
    assert got == []


def test_one_flipped_ciphertext_byte_is_refused_before_it_is_shown(node: FakeNode) -> None:
    def flip(out: bytes) -> bytes:
        events = out.split(b"\n\n")
        doc = json.loads(events[2][6:])  # the second content chunk
        c = doc["choices"][0]["delta"]["content"]
        doc["choices"][0]["delta"]["content"] = c[:-1] + ("0" if c[-1] != "0" else "1")
        events[2] = b"data: " + json.dumps(doc).encode()
        return b"\n\n".join(events)

    node.tamper_response = flip
    client = sync_client(node)
    got: list[str] = []
    with pytest.raises(DecryptionError):
        for c in client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True):
            if c.choices and c.choices[0].delta.content:
                got.append(c.choices[0].delta.content)
    assert got == ANSWER[:1]  # what came before the tampered chunk; never the tampered one


def test_error_event_raises_api_error(node: FakeNode) -> None:
    node.error_event = {"message": "engine died", "type": "server_error", "code": "upstream_error"}
    with pytest.raises(APIError, match="engine died") as info:
        list(
            sync_client(node).chat.completions.create(
                model=E2EE_MODEL, messages=MESSAGES, stream=True
            )
        )
    assert info.value.code == "upstream_error"


def test_missing_done_raises(node: FakeNode) -> None:
    node.drop_done = True
    with pytest.raises(NetworkError, match="DONE"):
        sync_client(node).chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)


@pytest.mark.parametrize("stream", [False, True])
def test_signature_by_another_key_is_refused(node: FakeNode, stream: bool) -> None:
    node.sign_with = KeyPair.generate()
    client = sync_client(node)
    with pytest.raises(VerificationError, match="signature.address"):
        out = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=stream)
        if stream:
            list(out)


def test_response_bytes_changed_outside_the_ciphertext_break_the_signature(node: FakeNode) -> None:
    node.tamper_response = lambda out: out.replace(b'"created": 1', b'"created": 2', 1)
    with pytest.raises(VerificationError, match="signature.response_sha256"):
        sync_client(node).chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)


@pytest.mark.filterwarnings(
    "ignore::enclaved.attestation.InsecurePolicyWarning"
)  # relaxed on purpose
def test_address_only_mode_skips_the_hashes_but_not_the_signer(node: FakeNode) -> None:
    """For a gateway that rewrites bodies: the node signed bytes we never saw."""
    node.tamper_response = lambda out: out.replace(b'"created": 1', b'"created": 2', 1)
    client = sync_client(node, verify_signatures="address")
    reply = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content == "".join(ANSWER)
    sig = last_signature(client)
    assert sig is not None and sig.verdict.get("signature.response_sha256").enforced is False
    node.sign_with = KeyPair.generate()
    with pytest.raises(VerificationError, match="signature.address"):
        client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)


def test_a_failed_signature_drops_the_cached_attestation(node: FakeNode) -> None:
    client = sync_client(node)
    node.sign_with = KeyPair.generate()
    with pytest.raises(VerificationError):
        client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    node.sign_with = None
    client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert node.attestations == 2


def test_signature_not_yet_stored_is_retried(node: FakeNode) -> None:
    node.signature_404s = 2
    sync_client(node).chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)


@pytest.mark.filterwarnings(
    "ignore::enclaved.attestation.InsecurePolicyWarning"
)  # relaxed on purpose
def test_signature_missing_is_refused_unless_disabled(node: FakeNode) -> None:
    node.signature_404s = 100
    with pytest.raises(VerificationError, match="HTTP 404"):
        sync_client(node).chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    reply = sync_client(node, verify_signatures=False).chat.completions.create(
        model=E2EE_MODEL, messages=MESSAGES
    )
    assert reply.choices[0].message.content == "".join(ANSWER)


def test_e2ee_refuses_what_it_cannot_encrypt(node: FakeNode) -> None:
    client = sync_client(node)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(ConfigError, match="tools"):
        client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, tools=tools)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tool"):
        client.chat.completions.create(
            model=E2EE_MODEL,
            messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}],
        )
    with pytest.raises(ConfigError, match="image_url"):
        client.chat.completions.create(
            model=E2EE_MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                }
            ],
        )
    assert node.seen == []


def test_require_e2ee_refuses_plaintext_models(node: FakeNode) -> None:
    client = sync_client(node, require_e2ee=True)
    for model in (TEE_MODEL, PLAIN_MODEL):
        with pytest.raises(ConfigError, match="not an E2EE model"):
            client.chat.completions.create(model=model, messages=MESSAGES)
    assert node.seen == []


# -- secrets: the session key and the logs --------------------------------------------


def _live_keypairs() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, KeyPair))


@pytest.mark.parametrize("stream", [False, True])
def test_session_key_is_dropped_after_the_response(node: FakeNode, stream: bool) -> None:
    made: list[KeyPair] = []

    def factory() -> KeyPair:
        kp = KeyPair.generate()
        made.append(kp)
        return kp

    client = sync_client(node, keypair_factory=factory)
    before = _live_keypairs()
    out = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=stream)
    if stream:
        list(out)
    assert len(made) == 1
    made.clear()  # the test's own reference
    assert _live_keypairs() == before  # nothing in the transport, client or response holds it
    # ... and the response object itself is still alive here.
    assert out is not None


def test_session_key_is_dropped_when_the_stream_fails(node: FakeNode) -> None:
    node.plaintext_answer = True
    client = sync_client(node)
    before = _live_keypairs()
    stream = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True)
    with pytest.raises(DecryptionError):
        list(stream)
    assert _live_keypairs() == before


def test_nothing_secret_is_logged_at_any_level(
    node: FakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    for name in (None, "httpx", "httpcore", "openai", "enclaved"):
        caplog.set_level(logging.DEBUG, logger=name)
    client = sync_client(node)
    client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    list(client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True))
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)
    assert caplog.records  # the loggers did run
    for secret in (PROMPT, "canary-prompt", "canary-answer", "Poseidonia", "be brief"):
        assert secret not in logged


def test_lazy_exports() -> None:
    assert enclaved.OpenAI is enclaved.client.OpenAI
    assert "OpenAI" in enclaved.__all__ and "AsyncOpenAI" in enclaved.__all__


# -- the production service's attestation (a real capture) ---------------------------------

CAPTURE = SHARED / "testdata" / "captures" / "venice_e2ee-qwen3-5-122b-a10b_20260424_015841"
CAPTURED_AT = datetime.datetime(2026, 4, 24, 1, 58, 32, tzinfo=datetime.UTC)


def _capture() -> tuple[dict[str, object], bytes]:
    manifest = json.loads((CAPTURE / "manifest.json").read_text())
    doc = json.loads(
        (CAPTURE / "responses" / "0001_api.venice.ai_api_v1_tee_attestation.body").read_bytes()
    )
    return doc, bytes.fromhex(manifest["nonce_hex"])


def _capture_verifier() -> Verifier:
    return Verifier(
        Policy.strict(),
        collateral=directory_collateral(CAPTURE / "responses"),
        now=lambda: CAPTURED_AT,
    )


def _eip55(address: str) -> str:
    digest = keccak256(address[2:].lower().encode()).hex()
    return "0x" + "".join(
        c.upper() if int(h, 16) >= 8 else c
        for c, h in zip(address[2:].lower(), digest, strict=False)
    )


@pytest.mark.parametrize(
    "variant",
    ["as-captured", "128-hex-key-and-eip55", "signing-public-key-only", "event-log-as-string"],
)
def test_production_capture_verifies_under_the_strict_policy(variant: str) -> None:
    doc, nonce = _capture()
    if variant == "128-hex-key-and-eip55":
        doc["signing_key"] = str(doc["signing_key"])[2:]
        doc["signing_public_key"] = None
        doc["signing_address"] = _eip55(str(doc["signing_address"]))
        assert doc["signing_address"] != str(doc["signing_address"]).lower()
    elif variant == "signing-public-key-only":
        del doc["signing_key"]
    elif variant == "event-log-as-string":
        doc["event_log"] = json.dumps(doc["event_log"])
    node = check_attestation(
        json.dumps(doc).encode(),
        base_url="https://api.venice.ai/api/v1",
        model="e2ee-qwen3-5-122b-a10b",
        nonce=nonce,
        verifier=_capture_verifier(),
        e2ee=True,
    )
    assert node.describe() == "intel-tdx, 0x6525e128afcffebf7eed05d485d7be983cdae934"
    assert node.signing_key is not None and node.signing_key.hex().startswith("041d9bbc")


def test_production_capture_with_a_swapped_key_is_refused() -> None:
    doc, nonce = _capture()
    doc["signing_key"] = doc["signing_public_key"] = KeyPair.generate().public_key_hex
    with pytest.raises(VerificationError, match="signing_key"):
        check_attestation(
            json.dumps(doc).encode(),
            base_url="x",
            model="e2ee-qwen3-5-122b-a10b",
            nonce=nonce,
            verifier=_capture_verifier(),
            e2ee=True,
        )


def test_transport_seals_to_the_attested_production_key() -> None:
    """The whole client path up to the chat request, against the production document."""
    doc, nonce = _capture()
    sent: list[httpx.Request] = []

    def production(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/tee/attestation":
            assert request.url.params["nonce"] == nonce.hex()
            return httpx.Response(200, json=doc)
        sent.append(request)
        return httpx.Response(
            503, json={"error": {"message": "recorded node is offline", "type": "server_error"}}
        )

    transport = EnclavedTransport(
        httpx.MockTransport(production), verifier=_capture_verifier(), random=lambda n: nonce
    )
    client = openai.OpenAI(
        base_url="https://api.venice.ai/api/v1",
        api_key="k",
        http_client=httpx.Client(transport=transport),  # type: ignore[arg-type]  # openai types httpx2, takes httpx
        max_retries=0,
    )
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="e2ee-qwen3-5-122b-a10b", messages=MESSAGES)
    (request,) = sent
    assert request.headers["x-venice-tee-model-pub-key"] == doc["signing_key"]
    assert request.headers["x-venice-tee-signing-algo"] == "ecdsa"
    body = json.loads(request.content)
    assert body["stream"] is True
    assert all(looks_like_envelope(m["content"]) for m in body["messages"])
    assert PROMPT.encode() not in request.content


# -- the SSE reader, fed at every possible split ---------------------------------------------


def test_sse_parser_handles_any_split_and_every_line_ending() -> None:
    from enclaved.protocol.sse import SSEParser

    body = (
        b": keep-alive\r\n"
        b'data: {"a":\r\ndata: 1}\r\n\r\n'
        b"event: note\ndata: two\n\n"
        b"data: three\r\r"
        b"data: [DONE]"  # no final blank line: dispatched at close()
    )
    want = [('{"a":\n1}', None), ("two", "note"), ("three", None), ("[DONE]", None)]
    for size in range(1, len(body) + 1):
        parser = SSEParser()
        events = []
        for i in range(0, len(body), size):
            events += parser.feed(body[i : i + size])
        events += parser.close()
        assert [(e.data, e.event) for e in events] == want, size


def test_decoder_is_incremental_and_hashes_every_byte(node: FakeNode) -> None:
    from enclaved.client._stream import ResponseDecoder
    from enclaved.crypto import Opener, sha256_hex

    session = KeyPair.generate()
    body = node._stream_bytes("chatcmpl-x", E2EE_MODEL, session.public_key_hex)
    decoder = ResponseDecoder(Opener(session))
    out = b"".join(b"".join(decoder.feed(body[i : i + 7])) for i in range(0, len(body), 7))
    out += decoder.finish()
    assert decoder.response_sha256 == sha256_hex(body)
    assert decoder.completion_id == "chatcmpl-x"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in (json.loads(e[6:]) for e in out.split(b"\n\n") if e)
        if c["choices"]
    )
    assert text == "".join(ANSWER)
    assert b"[DONE]" not in out  # the transport adds it after the signature check


# -- review: fail-open paths, secrets, production forms ------------------------------------

_FORGED = {
    "id": "chatcmpl-forged",
    "object": "chat.completion",
    "created": 1,
    "model": E2EE_MODEL,
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "FORGED"}, "finish_reason": "stop"}
    ],
}


def _answering(node: FakeNode, route: str, response: httpx.Response) -> object:
    """``node``, except that ``route`` answers ``response``."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(route):
            return response
        return node(request)

    return handler


def _both(handler: object, **kw: object) -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    kw.setdefault("verifier", BindingVerifier())

    async def no_sleep(s: float) -> None:
        return None

    sync = EnclavedTransport(httpx.MockTransport(handler), sleep=lambda s: None, **kw)  # type: ignore[arg-type]
    async_ = AsyncEnclavedTransport(httpx.MockTransport(handler), sleep=no_sleep, **kw)  # type: ignore[arg-type]
    return (
        openai.OpenAI(
            base_url=BASE,
            api_key="k",
            http_client=httpx.Client(transport=sync),  # type: ignore[arg-type]  # openai types httpx2, takes httpx
            max_retries=0,
        ),
        openai.AsyncOpenAI(
            base_url=BASE,
            api_key="k",
            http_client=httpx.AsyncClient(transport=async_),  # type: ignore[arg-type]  # openai types httpx2, takes httpx
            max_retries=0,
        ),
    )


def _create_both(
    handler: object, model: str = E2EE_MODEL, **kw: object
) -> list[BaseException | str]:
    """Run the same non-streaming call through the sync and the async client."""
    sync, async_ = _both(handler, **kw)
    out: list[BaseException | str] = []
    try:
        out.append(
            sync.chat.completions.create(model=model, messages=MESSAGES).choices[0].message.content
            or ""
        )
    except (enclaved.Error, openai.OpenAIError) as exc:
        out.append(exc)

    async def main() -> BaseException | str:
        try:
            reply = await async_.chat.completions.create(model=model, messages=MESSAGES)
            return reply.choices[0].message.content or ""
        except (enclaved.Error, openai.OpenAIError) as exc:
            return exc

    out.append(asyncio.run(main()))
    return out


@pytest.mark.parametrize("status", [201, 203, 206, 299])
@pytest.mark.parametrize("model", [E2EE_MODEL, TEE_MODEL])
def test_a_2xx_that_is_not_200_is_never_handed_on_as_an_answer(
    node: FakeNode, status: int, model: str
) -> None:
    """A plaintext completion under another success status must not skip decryption and signatures."""
    for result in _create_both(
        _answering(node, "/chat/completions", httpx.Response(status, json=_FORGED)), model
    ):
        assert isinstance(result, APIError) and f"HTTP {status}" in str(result), result


@pytest.mark.parametrize("status", [201, 202, 204, 301, 302, 307, 308])
def test_an_attestation_answer_that_is_neither_200_nor_an_error_is_refused(
    node: FakeNode, status: int
) -> None:
    """A 2xx / 3xx from the attestation route is not handed on in place of the chat answer."""
    forged = httpx.Response(
        status, json=_FORGED, headers={"location": "http://node.test/elsewhere"}
    )
    for result in _create_both(_answering(node, "/tee/attestation", forged)):
        assert isinstance(result, APIError) and f"HTTP {status}" in str(result), result
    assert node.seen == []  # nothing was sent


def test_a_redirect_is_not_followed_even_by_a_client_that_follows_redirects(node: FakeNode) -> None:
    """Raw httpx with follow_redirects: a 307 to a plain route must not yield its body."""
    handler = _answering(
        node,
        "/chat/completions",
        httpx.Response(307, headers={"location": "http://node.test/v1/models"}),
    )
    transport = EnclavedTransport(httpx.MockTransport(handler), verifier=BindingVerifier())  # type: ignore[arg-type]
    with (
        httpx.Client(transport=transport, follow_redirects=True) as http,
        pytest.raises(APIError, match="HTTP 307"),
    ):
        http.post(BASE + "/chat/completions", json={"model": E2EE_MODEL, "messages": MESSAGES})


def test_error_answers_are_still_handed_on_as_the_sdks_own_errors(node: FakeNode) -> None:
    error = httpx.Response(429, json={"error": {"message": "slow down", "type": "rate_limit"}})
    for result in _create_both(_answering(node, "/chat/completions", error)):
        assert isinstance(result, openai.RateLimitError), result


def test_spoofed_verification_headers_from_upstream_are_dropped(node: FakeNode) -> None:
    """x-enclaved-* headers say what THIS client verified; an upstream cannot set them."""
    node.response_headers = {
        "x-enclaved-signing-address": "0x" + "de" * 20,
        "x-enclaved-tee-hardware": "intel-tdx",
    }
    transport = EnclavedTransport(httpx.MockTransport(node), verifier=BindingVerifier())
    with httpx.Client(transport=transport) as http:
        r = http.post(BASE + "/chat/completions", json={"model": E2EE_MODEL, "messages": MESSAGES})
        assert r.headers.get_list("x-enclaved-signing-address") == [node.key.address]
        assert r.headers.get_list("x-enclaved-tee-hardware") == ["simulated"]
        # An error answer, and a request that is not verified at all, carry none.
        node.chat_status = 500
        r = http.post(BASE + "/chat/completions", json={"model": E2EE_MODEL, "messages": MESSAGES})
        assert r.status_code == 500 and "x-enclaved-signing-address" not in r.headers
        node.chat_status = 200
        r = http.post(BASE + "/chat/completions", json={"model": PLAIN_MODEL, "messages": MESSAGES})
        assert r.status_code == 200 and "x-enclaved-signing-address" not in r.headers
        assert "x-enclaved-tee-hardware" not in r.headers


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_held_decryption_error_does_not_keep_the_session_key_alive(
    node: FakeNode, asynchronous: bool
) -> None:
    """The caller keeps the exception (logs it, stores it): its traceback must not reach the key."""

    def flip(out: bytes) -> bytes:
        events = out.split(b"\n\n")
        doc = json.loads(events[2][6:])
        c = doc["choices"][0]["delta"]["content"]
        doc["choices"][0]["delta"]["content"] = c[:-1] + ("0" if c[-1] != "0" else "1")
        events[2] = b"data: " + json.dumps(doc).encode()
        return b"\n\n".join(events)

    node.tamper_response = flip
    made: list[KeyPair] = []

    def factory() -> KeyPair:
        made.append(KeyPair.generate())
        return made[-1]

    sync, async_ = _both(node, keypair_factory=factory)
    held: list[BaseException] = []
    for stream in (False, True):
        before = _live_keypairs()
        try:
            if asynchronous:

                async def main(stream: bool = stream) -> None:
                    if stream:
                        chunks = await async_.chat.completions.create(
                            model=E2EE_MODEL, messages=MESSAGES, stream=True
                        )
                        [c async for c in chunks]
                    else:
                        await async_.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)

                asyncio.run(main())
            else:
                out = sync.chat.completions.create(
                    model=E2EE_MODEL, messages=MESSAGES, stream=stream
                )
                if stream:
                    list(out)
        except DecryptionError as exc:
            held.append(exc)
        made.clear()
        assert len(held) == (2 if stream else 1)
        assert _live_keypairs() == before, "a held exception keeps the session key alive"


def test_per_chunk_and_per_response_ephemeral_keys_both_decrypt(node: FakeNode) -> None:
    """The production inference nodes differ: one key per chunk, or one per response."""
    for per_chunk in (True, False):
        node.per_chunk_keys = per_chunk
        for result in _create_both(node):
            assert result == "".join(ANSWER), result
        sync, _ = _both(node)
        stream = sync.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True)
        assert [
            c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
        ] == ANSWER
    sent = node._stream_bytes("x", E2EE_MODEL, KeyPair.generate().public_key_hex)
    assert sent  # (the knob works: see the fake)


@pytest.mark.parametrize("prefix", ["Qwen/Qwen3.5-122B-A10B", "e2ee-fake-1", "org:model:v2"])
@pytest.mark.parametrize("model", [E2EE_MODEL, TEE_MODEL])
def test_signature_text_with_the_model_prefix_is_accepted_and_hashes_still_checked(
    node: FakeNode, prefix: str, model: str
) -> None:
    node.signature_prefix = prefix
    for result in _create_both(node, model):
        assert result == "".join(ANSWER), result
    # The prefix form does not loosen the hash check.
    node.tamper_response = lambda out: out.replace(b'"created": 1', b'"created": 2', 1)
    for result in _create_both(node, model):
        assert isinstance(result, VerificationError) and "signature.response_sha256" in str(
            result
        ), result


@pytest.mark.filterwarnings(
    "ignore::enclaved.attestation.InsecurePolicyWarning"
)  # relaxed on purpose
@pytest.mark.parametrize("stream", [False, True])
def test_signatures_off_does_not_need_a_completion_id(node: FakeNode, stream: bool) -> None:
    node.omit_ids = True
    client = sync_client(node, verify_signatures=False)
    text = answer_text(client, E2EE_MODEL, MESSAGES, stream)
    assert text == "".join(ANSWER)
    # ... while with signatures on, a missing id is refused.
    with pytest.raises(VerificationError, match="completion id"):
        sync_client(node).chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)


def _forging(node: FakeNode) -> object:
    """A man in the middle who replaces every delta with text sealed to the client's key.

    Anyone can seal to the session key (it travels in a request header), so a
    delta that decrypts proves nothing about who wrote it: only the response
    signature does.
    """
    from enclaved.crypto import seal

    def handler(request: httpx.Request) -> httpx.Response:
        response = node(request)
        key = request.headers.get("x-venice-tee-client-pub-key")
        if not request.url.path.endswith("/chat/completions") or key is None:
            return response
        events = response.content.split(b"\n\n")
        for n, event in enumerate(events):
            if event.startswith(b"data: {"):
                doc = json.loads(event[6:])
                for choice in doc.get("choices") or []:
                    if choice["delta"].get("content"):
                        choice["delta"]["content"] = seal("FORGED ", bytes.fromhex(key))
                events[n] = b"data: " + json.dumps(doc).encode()
        return httpx.Response(200, headers=response.headers, content=b"\n\n".join(events))

    return handler


def test_text_sealed_to_the_session_key_by_someone_else_is_caught_by_the_signature(
    node: FakeNode,
) -> None:
    for result in _create_both(_forging(node)):
        assert isinstance(result, VerificationError) and "signature.response_sha256" in str(
            result
        ), result


def test_relaxed_signature_checks_warn(node: FakeNode) -> None:
    """With signatures off (or signer only) the forgery above goes through: say so."""
    from enclaved.attestation import InsecurePolicyWarning

    for mode in (False, "address"):
        with pytest.warns(InsecurePolicyWarning, match="signature"):
            results = _create_both(_forging(node), verify_signatures=mode)
        assert results == ["FORGED " * len(ANSWER)] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecurePolicyWarning)
        EnclavedTransport(httpx.MockTransport(node), verifier=BindingVerifier())


def test_sync_and_async_fail_the_same_way(node: FakeNode) -> None:
    """The twins share the judgements; this checks that they also share the I/O steps."""

    def outcome(results: list[BaseException | str]) -> list[str]:
        return [type(r).__name__ if isinstance(r, BaseException) else r for r in results]

    sync, async_ = _both(node)
    node.stale_times, node.attestations = 1, 0  # one 421: re-attested once, then fine
    assert (
        sync.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES).choices[0].message.content
    )
    assert node.attestations == 2
    node.stale_times, node.attestations = 1, 0
    reply = asyncio.run(async_.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES))
    assert reply.choices[0].message.content and node.attestations == 2
    node.stale_times = 4  # 421 twice per call: StaleAttestationError
    assert outcome(_create_both(node)) == ["StaleAttestationError"] * 2
    node.stale_times = 0
    node.drop_done = True
    assert outcome(_create_both(node)) == ["NetworkError"] * 2
    node.drop_done = False
    node.error_event = {"message": "engine died", "type": "server_error", "code": "upstream_error"}
    assert outcome(_create_both(node)) == ["APIError"] * 2
    node.error_event = None
    node.plaintext_answer = True
    assert outcome(_create_both(node)) == ["DecryptionError"] * 2
    node.plaintext_answer = False
    node.sign_with = KeyPair.generate()
    assert outcome(_create_both(node)) == ["VerificationError"] * 2
    node.sign_with = None
    node.report_override = {"nonce": "33" * 32, "request_nonce": "33" * 32}
    assert outcome(_create_both(node)) == ["VerificationError"] * 2


@pytest.mark.parametrize("model", [E2EE_MODEL, TEE_MODEL])
def test_other_routes_never_carry_a_private_models_prompt_in_plaintext(
    node: FakeNode, model: str
) -> None:
    """Only chat completions are attested and encrypted: the legacy completions route,
    the responses API, embeddings... for an e2ee-* / tee-* model are refused, not passed."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return node(request)

    sync, async_ = _both(handler)
    calls: list[Callable[[Any], Any]] = [
        lambda c: c.completions.create(model=model, prompt=PROMPT),
        lambda c: c.embeddings.create(model=model, input=PROMPT),
        lambda c: c.responses.create(model=model, input=PROMPT),
    ]
    for call in calls:
        with pytest.raises(ConfigError, match="only chat completions"):
            call(sync)

        async def main(call: Callable[[Any], Any] = call) -> None:
            await call(async_)

        with pytest.raises(ConfigError, match="only chat completions"):
            asyncio.run(main())
    assert seen == []
    # Other models, and reads, pass as before.
    with pytest.raises(openai.NotFoundError):  # (the fake node has no /completions)
        sync.completions.create(model=PLAIN_MODEL, prompt="public")
    assert [r.url.path for r in seen] == ["/v1/completions"]
    assert [m.id for m in sync.models.list()] == [E2EE_MODEL]
