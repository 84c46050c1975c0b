"""``enclaved proxy``: plaintext in on loopback, attested E2EE out.

The proxy runs under uvicorn on a real loopback socket and is used by the
official ``openai`` package and by raw httpx. Its upstream is either the
in-memory FakeNode (fast protocol checks) or a real enclaved server
(``real_server`` fixture, see test_client_sdk.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from collections.abc import Iterator

import httpx
import openai
import pytest
from client_fakes import E2EE_MODEL, TEE_MODEL, BindingVerifier, FakeNode, answer_text
from client_server import E2EE_MODEL as REAL_E2EE
from client_server import FAKE_ANSWER, RealServer, embedded_server, real_server
from conftest import running_server
from openai.types.chat import ChatCompletionMessageParam

from enclaved.attestation import InsecurePolicyWarning
from enclaved.cli import main as cli_main
from enclaved.client import AsyncEnclavedTransport
from enclaved.client.proxy import create_proxy_app, is_loopback_host

__all__ = ["real_server"]

ANSWER = ["Proxied", " and ", "private."]
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "hello through the proxy"}
]


@pytest.fixture
def node() -> FakeNode:
    return FakeNode(list(ANSWER))


@pytest.fixture
def proxy(node: FakeNode) -> Iterator[str]:
    transport = AsyncEnclavedTransport(
        httpx.MockTransport(node), verifier=BindingVerifier(), require_e2ee=True
    )
    app = create_proxy_app("http://node.test/v1", transport=transport)
    with running_server(app) as url:
        yield url


def test_official_sdk_through_the_proxy(proxy: str, node: FakeNode) -> None:
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="local", max_retries=0)
    reply = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content == "".join(ANSWER)
    stream = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True)
    assert [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ] == ANSWER
    # The node only ever saw ciphertext.
    assert all(s.body["messages"][0]["content"] != MESSAGES[0]["content"] for s in node.seen)
    assert [m.id for m in client.models.list()] == [E2EE_MODEL]


def test_raw_httpx_stream_through_the_proxy(proxy: str, node: FakeNode) -> None:
    body = {"model": E2EE_MODEL, "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", proxy + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-enclaved-signing-address"] == node.key.address
        raw = r.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in (json.loads(e[6:]) for e in events[:-1])
        if c["choices"]
    )
    assert text == "".join(ANSWER)


def test_proxy_refuses_plaintext_models(proxy: str, node: FakeNode) -> None:
    r = httpx.post(proxy + "/v1/chat/completions", json={"model": TEE_MODEL, "messages": MESSAGES})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "enclaved_refused"
    assert node.seen == []


def test_proxy_reports_verification_failure_as_openai_error(proxy: str, node: FakeNode) -> None:
    node.report_override = {"nonce": "22" * 32, "request_nonce": "22" * 32}
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="local", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert info.value.status_code == 502
    assert "report.nonce" in str(info.value)
    assert node.seen == []


def test_proxy_mid_stream_failure_is_an_error_event_without_done(
    proxy: str, node: FakeNode
) -> None:
    node.plaintext_answer = True
    body = {"model": E2EE_MODEL, "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", proxy + "/v1/chat/completions", json=body) as r:
        raw = r.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert b"[DONE]" not in raw
    err = json.loads(events[-1][6:])["error"]
    assert err["code"] == "decryption_failed" and err["message"] == "failed to decrypt"
    # and the SDK raises on it
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="local", max_retries=0)
    with pytest.raises(openai.APIError, match="failed to decrypt"):
        list(client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True))


def test_proxy_rejects_foreign_host_headers(proxy: str) -> None:
    r = httpx.get(proxy + "/v1/models", headers={"host": "evil.example"})
    assert r.status_code == 400


def test_cli_refuses_non_loopback_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["proxy", "--host", "0.0.0.0", "--upstream", "http://127.0.0.1:1/v1"]) == 5
    assert "loopback" in capsys.readouterr().err
    assert (
        is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("localhost")
    )
    assert not is_loopback_host("192.168.1.2") and not is_loopback_host("example.com")


# -- against a real enclaved server ------------------------------------------------------


@pytest.fixture(scope="module")
def real_proxy(real_server: RealServer) -> Iterator[str]:
    app = create_proxy_app(real_server.base_url, trust_root=real_server.dev_root)
    with running_server(app) as url:
        yield url


@pytest.fixture(autouse=True)
def _quiet_dev_policy() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePolicyWarning)
        yield


@pytest.mark.parametrize("stream", [False, True])
def test_real_server_through_the_proxy_with_the_official_sdk(real_proxy: str, stream: bool) -> None:
    client = openai.OpenAI(base_url=real_proxy + "/v1", api_key="local", max_retries=0)
    text = answer_text(client, REAL_E2EE, MESSAGES, stream)
    assert text == FAKE_ANSWER


def test_real_server_through_the_proxy_with_curl(real_proxy: str) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = json.dumps({"model": REAL_E2EE, "messages": MESSAGES, "stream": True})
    out = subprocess.run(
        [
            curl,
            "-sS",
            "-N",
            real_proxy + "/v1/chat/completions",
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    events = [e for e in out.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == FAKE_ANSWER
    )


def test_proxy_without_the_dev_root_refuses_with_a_clear_error(real_server: RealServer) -> None:
    with running_server(create_proxy_app(real_server.base_url)) as url:
        r = httpx.post(
            url + "/v1/chat/completions", json={"model": REAL_E2EE, "messages": MESSAGES}
        )
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "verification_failed" and "client.simulated_tee" in err["message"]


@pytest.mark.model
def test_embedded_model_through_the_proxy(tmp_path_factory: pytest.TempPathFactory) -> None:
    with (
        embedded_server(tmp_path_factory.mktemp("embedded")) as server,
        running_server(create_proxy_app(server.base_url, trust_root=server.dev_root)) as url,
    ):
        client = openai.OpenAI(base_url=url + "/v1", api_key="local", max_retries=0)
        stream = client.chat.completions.create(
            model="e2ee-smollm2-135m",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=16,
            temperature=0,
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip()


# -- review: who may drive the proxy -------------------------------------------------------


def test_proxy_refuses_cross_site_requests_from_a_browser(proxy: str, node: FakeNode) -> None:
    """A web page can POST to 127.0.0.1 (a "simple" request, no preflight): its Host is
    loopback, so only the Origin tells it apart. It must not spend the proxy's key."""
    body = json.dumps({"model": E2EE_MODEL, "messages": MESSAGES})
    for origin in ("https://evil.example", "null", "http://127.0.0.1.evil.example"):
        r = httpx.post(
            proxy + "/v1/chat/completions",
            content=body,
            headers={"content-type": "text/plain", "origin": origin},
        )
        assert r.status_code == 403, origin
        assert r.json()["error"]["code"] == "forbidden_origin"
    assert node.seen == []
    # A page served from this machine (a local web UI) may.
    r = httpx.post(
        proxy + "/v1/chat/completions", content=body, headers={"origin": "http://localhost:3000"}
    )
    assert r.status_code == 200


def test_proxy_host_check_answers_openai_errors_and_accepts_every_loopback_literal(
    proxy: str,
) -> None:
    r = httpx.get(proxy + "/v1/models", headers={"host": "evil.example:8787"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "forbidden_host"
    r = httpx.get(proxy + "/v1/models", headers={"host": "localhost.evil.example"})
    assert r.status_code == 400
    for host in ("127.0.0.2:8787", "localhost", "[::1]:8787", "127.0.0.1"):
        assert httpx.get(proxy + "/v1/models", headers={"host": host}).status_code == 200, host


def test_proxy_wrong_method_is_an_openai_error(proxy: str) -> None:
    r = httpx.get(proxy + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(proxy + "/v1/embeddings")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_proxy_never_sends_the_conversation_history_in_plaintext(
    proxy: str, node: FakeNode
) -> None:
    """Chat apps send the whole conversation each turn. The protocol encrypts only
    user/system contents, so earlier answers as ``assistant`` messages would leave
    the machine in the clear: the proxy folds them into the encrypted system message."""
    earlier = "the earlier answer canary-history-5be1"
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": earlier},
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},
    ]
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="local", max_retries=0)
    reply = client.chat.completions.create(model=E2EE_MODEL, messages=messages)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "".join(ANSWER)
    (seen,) = node.seen
    assert earlier.encode() not in json.dumps(seen.body).encode()
    assert [m["role"] for m in seen.body["messages"]] == ["system", "user"]
    system, user = seen.plaintext_messages
    assert system["content"].startswith("be brief")
    assert "User: first question\nAssistant: " + earlier in system["content"]
    assert user["content"] == "second question"
    # An assistant message after the last user turn (a "prefill") cannot be folded: refused.
    r = httpx.post(
        proxy + "/v1/chat/completions",
        json={
            "model": E2EE_MODEL,
            "messages": [*messages, {"role": "assistant", "content": "Sure,"}],
        },
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "enclaved_refused"
    assert len(node.seen) == 1


def test_proxy_with_require_stream_binding(real_server: RealServer, node: FakeNode) -> None:
    """An enclaved node binds its response key: served. A node without the binding
    (the fake one here, the production service today): refused, as an OpenAI error."""
    app = create_proxy_app(
        real_server.base_url, trust_root=real_server.dev_root, require_stream_binding=True
    )
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="local", max_retries=0)
        out = client.chat.completions.create(model=REAL_E2EE, messages=MESSAGES, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in out if c.choices) == FAKE_ANSWER
    transport = AsyncEnclavedTransport(
        httpx.MockTransport(node),
        verifier=BindingVerifier(),
        require_e2ee=True,
        require_stream_binding=True,
    )
    with running_server(create_proxy_app("http://node.test/v1", transport=transport)) as url:
        body = {"model": E2EE_MODEL, "messages": MESSAGES, "stream": True}
        r = httpx.post(url + "/v1/chat/completions", json=body)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "verification_failed" and "require_stream_binding" in err["message"]
    assert all(word not in r.text for word in ANSWER)
