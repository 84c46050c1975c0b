"""The official ``openai`` Python package, unmodified, against enclaved's plain TEE model.

PROTOCOL.md promises that any OpenAI SDK pointed at ``http://host:port/v1``
works. Here the stock ``openai.OpenAI`` / ``openai.AsyncOpenAI`` clients
talk to a real enclaved server on a loopback socket, serving the real
embedded SmolLM2-135M with an API key required, and:

- ``models.list()`` lists both default models with their capabilities;
- ``chat.completions.create`` works sync and async, streaming and not;
- what they get is the model's real output: the same text that an
  independent llama.cpp instance (llama-cpp-python's own chat pipeline, on
  the same GGUF, not enclaved's backend) produces for the same prompt at
  temperature 0, i.e. greedy decoding, where the output depends on the
  prompt alone;
- the answer carries the TEE headers and its response signature covers the
  exact bytes the SDK sent and received;
- a wrong key is the SDK's ``AuthenticationError``.

Every test needs the model (marker ``model``); completions are capped at
:data:`MAX_TOKENS` so the module runs in seconds on two cores.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import running_server

from enclaved.crypto import eip191_recover_address, sha256_hex

openai = pytest.importorskip("openai")

pytestmark = [
    pytest.mark.model,
    # The server runs on the simulated TEE; its self-check warns that this proves nothing.
    pytest.mark.filterwarnings("ignore::enclaved.attestation.policy.InsecurePolicyWarning"),
]

E2EE_MODEL = "e2ee-smollm2-135m"
TEE_MODEL = "tee-smollm2-135m"
API_KEY = "sdk-test-key"
MAX_TOKENS = 24
PROMPTS = {
    "sync": "Name three colors.",
    "async": "What is 2+2? Answer briefly.",
}


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An enclaved server with its default configuration plus one required API key."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from enclaved.server.app import create_app
    from enclaved.server.config import ServerConfig

    config = ServerConfig.from_dict(
        {"api_key_hashes": [hashlib.sha256(API_KEY.encode()).hexdigest()]},
        data_dir=tmp_path_factory.mktemp("enclaved-sdk"),
    )
    with running_server(create_app(config), startup_timeout=300) as url:
        yield url


@pytest.fixture(scope="module")
def reference() -> Iterator[Callable[[str], str]]:
    """What the model itself answers a one-message chat, greedy: llama-cpp-python's
    own ``create_chat_completion`` on the bundled GGUF, outside enclaved."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from enclaved.server.backends.embedded import bundled_model_path

    threads = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    llm = llama_cpp.Llama(
        model_path=str(bundled_model_path()),
        n_ctx=2048,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    answers: dict[str, str] = {}

    def answer(prompt: str) -> str:
        if prompt not in answers:
            out: Any = llm.create_chat_completion(
                messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=MAX_TOKENS
            )
            answers[prompt] = out["choices"][0]["message"]["content"]
        return answers[prompt]

    yield answer
    llm.close()


def _client(origin: str, api_key: str = API_KEY) -> Any:
    return openai.OpenAI(base_url=origin + "/v1", api_key=api_key, max_retries=0, timeout=120)


def _params(prompt: str) -> dict[str, Any]:
    return {
        "model": TEE_MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }


def test_models_list_has_both_models_with_their_capabilities(origin: str) -> None:
    with _client(origin) as client:
        models = {m.id: m for m in client.models.list()}
        assert {E2EE_MODEL, TEE_MODEL} <= set(models)
        caps = {
            mid: models[mid].model_extra["model_spec"]["capabilities"]
            for mid in (E2EE_MODEL, TEE_MODEL)
        }
        assert caps[E2EE_MODEL]["supportsE2EE"] is True
        assert caps[TEE_MODEL]["supportsE2EE"] is False
        assert caps[E2EE_MODEL]["supportsTeeAttestation"] is True
        assert caps[TEE_MODEL]["supportsTeeAttestation"] is True
        assert client.models.retrieve(TEE_MODEL).id == TEE_MODEL


def test_sync_completion_is_the_models_output_and_is_signed(
    origin: str, reference: Callable[[str], str]
) -> None:
    prompt = PROMPTS["sync"]
    with _client(origin) as client:
        raw = client.chat.completions.with_raw_response.create(**_params(prompt))
        completion = raw.parse()
    expected = reference(prompt)
    assert expected.strip()
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].message.role == "assistant"
    assert completion.model == TEE_MODEL
    assert completion.id.startswith("chatcmpl-")
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= MAX_TOKENS
    assert raw.headers["x-venice-tee"] == "true"

    # The signature covers the exact bytes the SDK sent and received.
    sent = raw.http_request.content
    received = raw.http_response.content
    doc = httpx.get(
        origin + "/v1/tee/signature",
        params={"model": TEE_MODEL, "request_id": completion.id},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    ).json()
    assert doc["text"] == sha256_hex(sent) + ":" + sha256_hex(received)
    attestation = httpx.get(
        origin + "/v1/tee/attestation", params={"model": TEE_MODEL}, timeout=30
    ).json()
    assert (
        eip191_recover_address(doc["text"], doc["signature"])
        == attestation["signing_address"].lower()
    )


def test_sync_stream_is_the_models_output(origin: str, reference: Callable[[str], str]) -> None:
    prompt = PROMPTS["sync"]
    with _client(origin) as client:
        chunks = list(client.chat.completions.create(**_params(prompt), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference(prompt)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["stop"], ["length"])
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None
    )  # the usage chunk ends the stream


def test_async_completion_and_stream_are_the_models_output(
    origin: str, reference: Callable[[str], str]
) -> None:
    prompt = PROMPTS["async"]

    async def go() -> tuple[Any, list[Any]]:
        async with openai.AsyncOpenAI(
            base_url=origin + "/v1", api_key=API_KEY, max_retries=0, timeout=120
        ) as client:
            completion = await client.chat.completions.create(**_params(prompt))
            stream = await client.chat.completions.create(**_params(prompt), stream=True)
            chunks = [c async for c in stream]
            return completion, chunks

    completion, chunks = asyncio.run(go())
    expected = reference(prompt)
    assert expected.strip()
    assert completion.choices[0].message.content == expected
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[0].id != completion.id


def test_wrong_api_key_is_an_authentication_error(origin: str) -> None:
    with (
        _client(origin, api_key="not-the-key") as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.chat.completions.create(**_params("Hi"))
