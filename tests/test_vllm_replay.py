"""The upstream backend against vLLM's own stream framing, byte for byte.

A stand-in engine replays the files in tests/data/vllm/ (vLLM's chat
stream: role chunk, reasoning under either of vLLM's names, content,
finish reason, usage chunk, ``[DONE]``; see their README for provenance) in
small slices, so events split across reads as they do on a socket. A real
node in front of it, and ``enclaved.OpenAI`` (E2EE) or the official SDK
(plain TEE), must give the caller exactly the engine's text, reasoning,
finish reason and usage, with a verified signature.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import running_server
from server_fakes import E2EE_MODEL, TEE_MODEL, TOOLS_MODEL, fake_config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

import enclaved
from enclaved.attestation.policy import InsecurePolicyWarning
from enclaved.client import last_signature
from enclaved.server.app import create_app
from enclaved.server.backends.upstream import UpstreamBackend

DATA = Path(__file__).parent / "data" / "vllm"
SLICE = 7  # bytes per write: events split across reads


def _recorded(name: str) -> dict[str, Any]:
    """What the file says the answer is: text, reasoning, finish reason, usage."""
    text, reasoning, finish, usage = [], [], None, None
    for line in (DATA / name).read_text(encoding="utf-8").splitlines():
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line[6:])
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning") or delta.get("reasoning_content") or "")
            finish = choice.get("finish_reason") or finish
    return {
        "text": "".join(text),
        "reasoning": "".join(reasoning),
        "finish": finish,
        "usage": usage,
    }


class ReplayEngine:
    def __init__(self) -> None:
        self.body = b""
        self.requests: list[dict[str, Any]] = []

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            self.requests.append(json.loads(await request.body()))

            async def slices() -> AsyncIterator[bytes]:
                for i in range(0, len(self.body), SLICE):
                    yield self.body[i : i + SLICE]

            return StreamingResponse(slices(), media_type="text/event-stream")

        async def models(request: Request) -> Response:
            return Response(json.dumps({"object": "list", "data": [{"id": "Qwen/Qwen3-8B"}]}))

        return Starlette(
            routes=[
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/models", models, methods=["GET"]),
            ]
        )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ReplayEngine, Path]]:
    tmp = tmp_path_factory.mktemp("vllm")
    engine = ReplayEngine()
    with running_server(engine.app()) as engine_url:
        backend = UpstreamBackend(engine_url + "/v1", "Qwen/Qwen3-8B")
        app = create_app(
            fake_config(tmp),
            backends={E2EE_MODEL: backend, TEE_MODEL: backend, TOOLS_MODEL: backend},
        )
        with running_server(app) as url:
            yield url, engine, tmp / "dev-root-ca.pem"


@pytest.mark.parametrize(
    "name",
    ["chat_stream_reasoning_content.sse", "chat_stream_reasoning.sse", "chat_stream_length.sse"],
)
@pytest.mark.parametrize("model", [E2EE_MODEL, TEE_MODEL])
def test_vllm_stream_reaches_the_caller_intact(
    node: tuple[str, ReplayEngine, Path], name: str, model: str
) -> None:
    url, engine, root = node
    engine.body = (DATA / name).read_bytes()
    want = _recorded(name)
    client = enclaved.OpenAI(base_url=url + "/v1", api_key="k", trust_root=str(root), max_retries=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePolicyWarning)
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "capital of France?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, reasoning, finish, usage = [], [], None, None
        for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                extra = choice.delta.model_extra or {}
                reasoning.append(extra.get("reasoning_content") or extra.get("reasoning") or "")
                finish = choice.finish_reason or finish
    assert "".join(text) == want["text"]
    assert "".join(reasoning) == want["reasoning"]
    assert finish == want["finish"]
    assert usage is not None and usage.completion_tokens == want["usage"]["completion_tokens"]
    assert usage.prompt_tokens == want["usage"]["prompt_tokens"]
    signature = last_signature(client)
    assert signature is not None and signature.ok
    # The engine was asked for a stream with usage, whatever the caller asked.
    sent = engine.requests[-1]
    assert sent["stream"] is True and sent["stream_options"]["include_usage"] is True
    assert sent["model"] == "Qwen/Qwen3-8B"
