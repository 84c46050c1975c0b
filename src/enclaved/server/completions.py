"""``POST /chat/completions``: validate, decrypt, generate, seal, sign, stream.

The pipeline, in order (each step raises an :class:`HTTPError` that becomes
an OpenAI-style error before any response byte is written):

1. API key (when configured).
2. Read the body, at most ``max_request_bytes`` (413 above it), within
   ``request_body_timeout_seconds`` (408 after, connection closed). These exact
   bytes are what the signature's request hash covers. Steps 3-5 run on a
   worker thread for a body over ``PREPARE_INLINE_BYTES``.
3. E2EE headers: all three or none, algorithm, client key (``e2ee.parse_headers``).
4. JSON object; ``model`` present and served (404); ``messages`` well formed;
   ``stream``, ``n``, ``venice_parameters`` and sampling parameters typed.
5. Under E2EE: the model supports it, ``enable_e2ee`` is not false, the
   pinned model key is this node's (421), ``stream`` is true, no unsupported
   feature, then every user/system content is decrypted.
   Without E2EE: ``enable_e2ee: true`` is refused (it would silently send
   plaintext), features the model lacks are refused, and the operator's
   system prompt is prepended unless ``include_venice_system_prompt`` is false.
6. Generate. The first backend chunk is awaited before the status line is
   sent, so a backend that fails at once gets a real HTTP error status.
7. Stream: every backend chunk is rebuilt from an allow-list of fields (id,
   model, created rewritten; content and reasoning sealed under E2EE; role,
   index and finish_reason relayed only with a value :mod:`enclaved.protocol.clear_fields`
   allows, else the completion fails),
   serialized once, hashed and written. Up to the first token each chunk is
   written the moment it arrives; after it, the chunks that arrived while
   the previous write was under way go out with one write, and runs of
   plain text pieces among them are merged into one chunk (one envelope):
   see :mod:`.batching`. Then one usage chunk, then
   ``data: [DONE]``. A failure after the first byte becomes an SSE error
   event followed by ``[DONE]``, and no signature.
8. Sign: if the client is still connected when the stream is complete, the
   signature is stored *before* ``[DONE]`` is written, so a client that has
   read ``[DONE]`` can fetch it at once.

Non-streaming requests run steps 1-6 the same way, collect the chunks into
one ``chat.completion`` document, sign it and send it.

Never logged: content, keys, headers. Backend failures are logged by type
and by :class:`BackendError` message only (which must be content-free).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.datastructures import Headers

from ..crypto import Sealer
from ..protocol.clear_fields import ASSISTANT, choice_problem
from ..protocol.errors import MSG_STREAMING_REQUIRED
from ..protocol.headers import TEE_RESPONSE_HEADERS_RAW
from . import e2ee
from .backends.base import Backend, BackendError, ChatRequest
from .batching import ChunkPump, text_piece
from .config import ModelConfig
from .errors import (
    INVALID_REQUEST,
    SERVER_ERROR,
    HTTPError,
    internal_error,
    invalid_parameter,
    missing_parameter,
    model_not_found,
)
from .node import Node
from .signing import ResponseHasher, SignatureRecord

log = logging.getLogger("enclaved.server")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Response headers on every answer about a TEE model (all enclaved models are).
TEE_HEADERS = TEE_RESPONSE_HEADERS_RAW
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    *TEE_HEADERS,
]
DONE = b"data: [DONE]\n\n"

#: Request bodies up to this size are validated and decrypted on the event
#: loop (at most ~70 envelopes, a few milliseconds); larger ones on a thread.
PREPARE_INLINE_BYTES = 16 * 1024

#: How long a signature store may take to store or delete one record.
STORE_TIMEOUT_SECONDS = 5.0

#: The stream loop hands the event loop a turn after this many chunks (see
#: step 7 in ``ChatCompletions._stream``): a bare ``await asyncio.sleep(0)``,
#: a few microseconds against the ~100 us each chunk costs.
YIELD_EVERY_CHUNKS = 8

#: The most engine chunks that wait to be written (``batching.ChunkPump``):
#: the bound on one batch, and how far the server reads ahead of a slow
#: client before it stops reading the engine.
BATCH_MAX_CHUNKS = 64

_ROLES = ("system", "user", "assistant", "tool", "developer", "function")

#: Sampling parameters handed to the backend (everything else is dropped).
_NUMBER_PARAMS = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "min_p",
    "repetition_penalty",
)
_INT_PARAMS = ("max_tokens", "max_completion_tokens", "seed", "top_k", "top_logprobs")
_PASS_PARAMS = (
    "stop",
    "logit_bias",
    "logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
)


def new_completion_id() -> str:
    """``chatcmpl-`` + 32 random hex characters (128 bits): unguessable, so a
    signature id reveals nothing and cannot be enumerated."""
    return "chatcmpl-" + secrets.token_hex(16)


# -- step 2-5: the request ------------------------------------------------------


class Prepared:
    """A validated, decrypted chat request, ready for the backend."""

    __slots__ = ("backend", "body", "e2ee", "model", "request", "stream")

    def __init__(
        self,
        model: ModelConfig,
        backend: Backend,
        request: ChatRequest,
        stream: bool,
        e2ee_headers: e2ee.E2EEHeaders | None,
        body: bytes,
    ) -> None:
        self.model = model
        self.backend = backend
        self.request = request
        self.stream = stream
        self.e2ee = e2ee_headers
        self.body = body


def prepare(node: Node, headers: Mapping[str, str], body: bytes) -> Prepared:
    """Steps 3-5. Pure: reads nothing but its arguments, raises :class:`HTTPError`."""
    # 3. E2EE headers need no body: checked first.
    e2ee_headers = e2ee.parse_headers(headers)

    # 4. The body.
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HTTPError(400, "Request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "Request body must be a JSON object", code="invalid_body")
    model_id = data.get("model")
    if model_id is None or model_id == "":
        raise missing_parameter("model")
    if not isinstance(model_id, str):
        raise invalid_parameter("model", "'model' must be a string")
    model = node.model(model_id)
    backend = node.backends.get(model_id)
    if model is None or backend is None:
        raise model_not_found(model_id)

    messages = _validate_messages(data.get("messages"))
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid_parameter("stream", "'stream' must be true or false")
    n = data.get("n", 1)
    if n is not None and n != 1:
        raise HTTPError(400, "Only n=1 is supported", code="unsupported_parameter", param="n")
    venice = data.get("venice_parameters")
    if venice is None:
        venice = {}
    if not isinstance(venice, dict):
        raise invalid_parameter("venice_parameters", "'venice_parameters' must be an object")
    for key in ("enable_e2ee", "include_venice_system_prompt"):
        if venice.get(key) is not None and not isinstance(venice[key], bool):
            raise invalid_parameter(
                f"venice_parameters.{key}", f"'venice_parameters.{key}' must be true or false"
            )
    params = _sampling_params(data)

    # 5. E2EE, or plain TEE use.
    if e2ee_headers is not None:
        if not model.e2ee:
            raise HTTPError(
                400,
                f"Model {model.id} does not support E2EE",
                code="e2ee_not_supported",
                param="model",
            )
        if venice.get("enable_e2ee") is False:
            raise HTTPError(
                400,
                "E2EE headers were sent but venice_parameters.enable_e2ee is false",
                code="e2ee_invalid_headers",
                param="venice_parameters.enable_e2ee",
            )
        e2ee.check_model_key(e2ee_headers, node.key)
        if stream is not True:
            raise HTTPError(
                400, MSG_STREAMING_REQUIRED, code="e2ee_streaming_required", param="stream"
            )
        e2ee.check_features(data, venice)
        messages = e2ee.RequestDecryptor(node.key).open_messages(messages)
        # Under E2EE: no operator system prompt, no web search, no tools (PROTOCOL.md).
    else:
        if venice.get("enable_e2ee") is True:
            raise HTTPError(
                400,
                "venice_parameters.enable_e2ee is true but the E2EE headers "
                "(X-Venice-TEE-Client-Pub-Key, X-Venice-TEE-Model-Pub-Key, "
                "X-Venice-TEE-Signing-Algo) are missing",
                code="e2ee_invalid_headers",
                param="venice_parameters.enable_e2ee",
            )
        messages = _plain_messages(model, messages, data, venice)
        system_prompt = node.config.system_prompt
        if system_prompt and venice.get("include_venice_system_prompt", True) is not False:
            messages = [{"role": "system", "content": system_prompt}, *messages]

    return Prepared(
        model, backend, ChatRequest(messages=messages, params=params), stream, e2ee_headers, body
    )


def _validate_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise missing_parameter("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_parameter("messages", "'messages' must be a non-empty array")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise invalid_parameter(where, f"'{where}' must be an object")
        role = msg.get("role")
        if role not in _ROLES:
            raise invalid_parameter(
                f"{where}.role", f"'{where}.role' must be one of {', '.join(_ROLES)}"
            )
        content = msg.get("content")
        if content is None:
            if role == "assistant":  # an assistant turn that only called tools
                continue
            raise invalid_parameter(
                f"{where}.content", f"'{where}.content' is required for role '{role}'"
            )
        if isinstance(content, list):
            if not content:
                # No parts, hence no envelope: under E2EE it would be a
                # plaintext message. OpenAI refuses it as well.
                raise invalid_parameter(
                    f"{where}.content", f"'{where}.content' must not be an empty array"
                )
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise invalid_parameter(
                        f"{where}.content[{j}]",
                        f"'{where}.content[{j}]' must be an object with a 'type'",
                    )
        elif not isinstance(content, str):
            raise invalid_parameter(
                f"{where}.content", f"'{where}.content' must be a string or an array of parts"
            )
    return messages


def _plain_messages(
    model: ModelConfig,
    messages: list[dict[str, Any]],
    data: Mapping[str, Any],
    venice: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Plain TEE use: refuse what the model cannot do; text parts become one string."""
    caps = model.capabilities
    if not caps.supports_function_calling:
        for key in ("tools", "functions"):
            if data.get(key):
                raise HTTPError(
                    400,
                    f"Function calling is not supported by model {model.id}",
                    code="unsupported_feature",
                    param=key,
                )
    web = venice.get("enable_web_search")
    if web in (True, "on") and not caps.supports_web_search:
        raise HTTPError(
            400,
            f"Web search is not supported by model {model.id}",
            code="unsupported_feature",
            param="venice_parameters.enable_web_search",
        )
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if not isinstance(content, list):
            out.append(msg)
            continue
        texts: list[str] = []
        for j, part in enumerate(content):
            kind = part["type"]
            if kind != "text":
                feature = e2ee.PART_FEATURES.get(kind, f"Content part type {kind!r}")
                raise HTTPError(
                    400,
                    f"{feature} is not supported by model {model.id}",
                    code="unsupported_feature",
                    param=f"messages[{i}].content[{j}]",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid_parameter(
                    f"messages[{i}].content[{j}].text",
                    f"'messages[{i}].content[{j}].text' must be a string",
                )
            texts.append(text)
        out.append({**msg, "content": "\n".join(texts)})
    return out


def _sampling_params(data: Mapping[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key in _NUMBER_PARAMS:
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_parameter(key, f"'{key}' must be a number")
        params[key] = value
    for key in _INT_PARAMS:
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_parameter(key, f"'{key}' must be an integer")
        if key in ("max_tokens", "max_completion_tokens") and value < 1:
            raise invalid_parameter(key, f"'{key}' must be at least 1")
        params[key] = value
    stop = data.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise invalid_parameter("stop", "'stop' must be a string or an array of strings")
    for key in _PASS_PARAMS:
        if data.get(key) is not None:
            params[key] = data[key]
    return params


# -- step 7: chunks -------------------------------------------------------------------


class ChunkWriter:
    """Rebuilds backend chunks for the wire: one per completion.

    Only allow-listed fields survive (a backend cannot leak a plaintext field
    past the E2EE layer by inventing one), and the clear ones only with the
    values :mod:`enclaved.protocol.clear_fields` allows (nor by filling one with its own
    text: :meth:`choices` raises :class:`BackendError` instead); ``id``,
    ``model`` and ``created`` are the completion's; content and reasoning
    are sealed when a sealer is set.
    """

    __slots__ = ("_content_chunks", "_prefix", "_sealer", "created", "id", "model", "usage")

    def __init__(self, completion_id: str, model: str, created: int, sealer: Sealer | None) -> None:
        self.id = completion_id
        self.model = model
        self.created = created
        self._sealer = sealer
        self.usage: dict[str, Any] | None = None
        self._content_chunks = 0
        # Every event starts with the same bytes: encoded once. orjson writes
        # a dict's keys in order and without spaces, so prefix + choices + "}"
        # is byte for byte what encoding the whole chunk would give.
        head = orjson.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }
        )
        self._prefix = b"data: " + head[:-1] + b',"choices":'

    def choices(self, chunk: Mapping[str, Any], *, pieces: int = 1) -> list[dict[str, Any]]:
        """The rewritten choices of one backend chunk; remembers its usage.

        ``pieces``: how many engine chunks ``chunk`` stands for (merged text,
        see :meth:`batch`); the usage estimate counts them.
        """
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        out: list[dict[str, Any]] = []
        sealer = self._sealer
        for c in chunk.get("choices") or ():
            # The clear-text fields (role, index, finish_reason) are relayed
            # only when they hold one of the values clear_fields allows: an engine
            # must not put text of its own on the wire beside the envelopes.
            if not isinstance(c, dict) or not isinstance(c.get("delta") or {}, dict):
                raise _malformed("choices[]")
            problem = choice_problem(c)
            if problem is not None:
                raise _malformed(problem)
            delta = c.get("delta") or {}
            d: dict[str, Any] = {}
            if delta.get("role") is not None:
                d["role"] = ASSISTANT
            content = delta.get("content")
            if content is not None:
                if content:
                    self._content_chunks += pieces
                    if sealer is not None:
                        content = sealer.seal(content)
                d["content"] = content
            reasoning = delta.get("reasoning_content")
            if reasoning is None:
                reasoning = delta.get("reasoning")  # vLLM's newer name for the same field
            if reasoning is not None:
                d["reasoning_content"] = (
                    sealer.seal(reasoning) if (sealer is not None and reasoning) else reasoning
                )
            choice: dict[str, Any] = {"index": c.get("index", 0), "delta": d}
            if sealer is None:
                # Plain TEE use only: under E2EE these were refused at the door,
                # and a backend that produced them anyway is not trusted to.
                if delta.get("tool_calls"):
                    d["tool_calls"] = delta["tool_calls"]
                if c.get("logprobs") is not None:
                    choice["logprobs"] = c["logprobs"]
            choice["finish_reason"] = c.get("finish_reason")
            out.append(choice)
        return out

    def event(self, choices: list[dict[str, Any]]) -> bytes:
        """One SSE event: ``data: {id, object, created, model, choices}``."""
        return self._prefix + orjson.dumps(choices) + b"}\n\n"

    def batch(self, chunks: list[dict[str, Any]]) -> bytes:
        """The events of chunks that arrived together, to be written at once.

        Each run of consecutive chunks that are nothing but a piece of text of
        the same kind (:func:`~enclaved.server.batching.text_piece`) becomes
        one chunk carrying the run's text (one envelope under E2EE); every
        other chunk - role, finish reason, usage, tool calls, logprobs - is
        written on its own, in order, exactly as :meth:`choices` rewrites it.
        """
        out: list[bytes] = []
        n = len(chunks)
        pieces = [text_piece(chunk) for chunk in chunks]
        i = 0
        while i < n:
            piece = pieces[i]
            j = i + 1
            if piece is not None:
                field = piece[0]
                while j < n and (other := pieces[j]) is not None and other[0] == field:
                    j += 1
            if j - i > 1:
                assert piece is not None
                text = "".join(p[1] for p in pieces[i:j] if p is not None)
                merged = {"choices": [{"index": 0, "delta": {piece[0]: text}}]}
                choices = self.choices(merged, pieces=j - i)
            else:
                choices = self.choices(chunks[i])
            if choices:
                out.append(self.event(choices))
            i = j
        return b"".join(out)

    def final_usage(self) -> dict[str, int]:
        """The backend's token counts, or an estimate (one token per content
        chunk of the engine's, merged or not)."""
        u = self.usage or {}
        prompt = u.get("prompt_tokens")
        completion = u.get("completion_tokens")
        prompt = prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else 0
        completion = (
            completion
            if isinstance(completion, int) and not isinstance(completion, bool)
            else self._content_chunks
        )
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def usage_event(self) -> bytes:
        return (
            b"data: "
            + orjson.dumps(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self.final_usage(),
                }
            )
            + b"\n\n"
        )


def _malformed(field: str) -> BackendError:
    """The engine sent a chunk whose ``field`` breaks the rules of :mod:`enclaved.protocol.clear_fields`.

    The message names the field, never its value: the value is the engine's
    text, and this message reaches the client and the log.
    """
    return BackendError(f"the engine sent a malformed chunk ({field})", code="upstream_error")


def _carries_text(choices: list[dict[str, Any]]) -> bool:
    """Whether rewritten choices hold a token: non-empty content or reasoning."""
    for c in choices:
        d = c["delta"]
        if d.get("content") or d.get("reasoning_content"):
            return True
    return False


def _role_only(choices: list[dict[str, Any]]) -> bool:
    """Whether rewritten choices say nothing but the role (and empty text)."""
    for c in choices:
        if c["finish_reason"] is not None or len(c) > 3:  # index, delta, finish_reason
            return False
        for key, value in c["delta"].items():
            if key != "role" and value:
                return False
    return True


def error_event(message: str, code: str) -> bytes:
    """The mid-stream failure event (PROTOCOL.md): exactly message, type, code."""
    return (
        b"data: "
        + orjson.dumps({"error": {"message": message, "type": SERVER_ERROR, "code": code}})
        + b"\n\n"
    )


# -- the route -------------------------------------------------------------------------


class _Connection:
    """Watches the client after its body was read. ``finishing`` protects the
    final sign-and-store step from cancellation (its outcome is decided by
    checking ``disconnected`` instead)."""

    __slots__ = ("_receive", "_task", "cancelled", "disconnected", "finishing")

    def __init__(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        self._receive = receive
        self._task = task
        self.disconnected = False
        self.finishing = False
        #: Whether ``watch`` cancelled the request's task.
        self.cancelled = False

    async def watch(self) -> None:
        """Until the client leaves; then stop the request's task, unless it
        is signing and storing (``finishing``) or has already returned."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                if not self.finishing and not self._task.done():
                    self.cancelled = True
                    self._task.cancel()
                return


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body as received; ``None`` if the client left. 413 above ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(
                413, f"Request body is larger than {limit} bytes", code="request_too_large"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send, error: HTTPError, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send_json(send, error.status, error.body(), headers + (extra or []))


class ChatCompletions:
    """The ASGI endpoint. One instance per node."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        try:
            # 1. Authenticate before reading anything else.
            self.node.api_keys.check(headers.get("authorization"))
            # 2. The body, exactly as received, in bounded time: a client that
            # trickles its body must not hold a connection and a task forever.
            deadline = self.node.config.request_body_timeout_seconds
            try:
                async with asyncio.timeout(deadline):
                    body = await _read_body(receive, self.node.config.max_request_bytes)
            except TimeoutError:
                raise HTTPError(
                    408,
                    f"Request body not received within {deadline} seconds",
                    code="request_timeout",
                    headers={"Connection": "close"},
                ) from None
            if body is None:
                return
            if len(body) <= PREPARE_INLINE_BYTES:
                prepared = prepare(self.node, headers, body)
            else:
                # Each envelope costs an ECDH (~0.1 ms): a large request
                # would freeze every other stream of the node while it is
                # parsed and decrypted. ``prepare`` is pure, so a worker
                # thread may run it.
                prepared = await asyncio.to_thread(prepare, self.node, headers, body)
        except HTTPError as exc:
            await send_error(send, exc)
            return

        # The completion runs in this task (a task of its own would cost the
        # first token a turn of the event loop); a watcher task cancels it
        # when the client leaves mid-generation, which stops the engine now.
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(receive, task)
        run = self._stream if prepared.stream else self._complete
        watcher = asyncio.ensure_future(conn.watch())
        try:
            await run(prepared, send, conn)
        except asyncio.CancelledError:
            if not conn.cancelled or task.cancelling() > 1:
                raise  # cancelled from outside (server shutdown)
        finally:
            watcher.cancel()
            if conn.cancelled:
                task.uncancel()  # the watcher's request, handled

    # -- shared --------------------------------------------------------------------

    def _sealer(self, prepared: Prepared) -> Sealer | None:
        if prepared.e2ee is None:
            return None
        return e2ee.new_sealer(prepared.e2ee, per_chunk=self.node.config.e2ee_key_per_chunk)

    async def _sign(
        self, prepared: Prepared, completion_id: str, response_sha256: str
    ) -> SignatureRecord | None:
        """Step 8: sign and store. A store failure costs the signature, not the answer."""
        record = self.node.signer.sign(
            request_id=completion_id,
            model=prepared.model.id,
            request_body=prepared.body,
            response_sha256=response_sha256,
        )
        try:
            # Bounded: [DONE] waits for this, and a store that never answers
            # (a black-holed Redis) must not hold every answer back.
            await asyncio.wait_for(self.node.store.put(record), STORE_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - any failure, reported by type only
            log.error("signature store failed for %s: %s", completion_id, type(exc).__name__)
            return None
        return record

    async def _forget(self, record: SignatureRecord | None) -> None:
        if record is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.node.store.delete(record.request_id), STORE_TIMEOUT_SECONDS
                )

    @staticmethod
    async def _first(stream: AsyncIterator[dict[str, Any]]) -> dict[str, Any] | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    # -- streaming -------------------------------------------------------------------

    async def _stream(self, prepared: Prepared, send: Send, conn: _Connection) -> None:
        node = self.node
        stream: AsyncIterator[dict[str, Any]] | None = None
        pump: ChunkPump | None = None
        try:
            # 6. Failures before the first byte are real HTTP errors (a
            # backend may raise when called, or at its first chunk).
            try:
                stream = prepared.backend.stream(prepared.request)
                chunk = await self._first(stream)
            except BackendError as exc:
                log.warning("backend failed before streaming (%s): %s", exc.code, exc.message)
                await send_error(send, _backend_http_error(exc), TEE_HEADERS)
                return
            except Exception as exc:  # noqa: BLE001 - any failure, reported by type only
                log.error("backend failed before streaming: %s", type(exc).__name__)
                await send_error(send, internal_error(), TEE_HEADERS)
                return

            writer = ChunkWriter(
                new_completion_id(), prepared.model.id, int(node.clock()), self._sealer(prepared)
            )
            hasher = ResponseHasher()
            update = hasher.update
            started = False

            async def write(data: bytes, *, more: bool = True) -> None:
                # The status line goes out with the first bytes of the body:
                # the client is woken once for both (each wake-up of an idle
                # process costs ~0.1 ms on a virtual machine).
                nonlocal started
                if not started:
                    started = True
                    await send(
                        {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS}
                    )
                await send({"type": "http.response.body", "body": data, "more_body": more})

            # 7. Every byte written goes through the hasher first, in the
            # order written: batching changes how many ``send`` calls carry
            # the bytes, never which bytes.
            tail = b""
            held = b""
            try:
                # 7a. Up to and including the first chunk that carries text,
                # each chunk is written the moment it is read, on its own:
                # the first token never waits for company.
                #
                # An engine whose output is already buffered hands over chunk
                # after chunk without this loop ever waiting, and the event
                # loop only runs when it waits: a client that left would go
                # unnoticed and no other stream on the node would be served.
                # So the loop yields every YIELD_EVERY_CHUNKS chunks and stops
                # once the client is gone (this matters for a stream with no
                # text, e.g. tool calls only; 7b always yields).
                #
                # Chunks that only announce the role (engines send one before
                # the first token) are held and written with the next one, so
                # that the first token costs the client one wake-up, not two.
                since_yield = 0
                while chunk is not None:
                    choices = writer.choices(chunk)
                    if choices:
                        held += writer.event(choices)
                        if not _role_only(choices):
                            data, held = held, b""
                            update(data)
                            await write(data)
                            if _carries_text(choices):
                                break
                    since_yield += 1
                    if since_yield == YIELD_EVERY_CHUNKS:
                        since_yield = 0
                        await asyncio.sleep(0)
                        if conn.disconnected:
                            return  # nothing was delivered: no signature
                    chunk = await anext(stream, None)

                # 7b. The rest in batches: a pump reads the engine in a task of
                # its own, and every chunk that arrived while the previous batch
                # was being written goes out with one ``send``, runs of text
                # pieces merged into one chunk (``ChunkWriter.batch``). Nothing
                # waits for a batch to fill: one ready chunk is a batch.
                if chunk is not None:
                    pump = ChunkPump(stream, limit=BATCH_MAX_CHUNKS)
                    while True:
                        batch, finished = await pump.take()
                        if conn.disconnected:
                            return  # nothing was delivered: no signature
                        data = writer.batch(batch)
                        if finished and pump.error is None:
                            tail = data  # written with the usage chunk, below
                            break
                        if data:
                            update(data)
                            await write(data)
                        if finished:
                            assert pump.error is not None
                            raise pump.error
            except Exception as exc:  # noqa: BLE001 - any failure, reported by type only
                if isinstance(exc, BackendError):
                    log.warning("backend failed mid-stream (%s): %s", exc.code, exc.message)
                    event = error_event(exc.message, exc.code)
                else:
                    log.error("completion failed mid-stream: %s", type(exc).__name__)
                    event = error_event("Internal server error", "internal_error")
                # No signature for a failed completion.
                await write(held + event + DONE, more=False)
                return

            # ``held``: role chunks of a stream that ended before anything else.
            data = held + tail + writer.usage_event()
            update(data)
            await write(data)

            # 8. Sign over everything including [DONE], store, then write [DONE].
            conn.finishing = True
            update(DONE)
            record = None
            if not conn.disconnected:
                record = await self._sign(prepared, writer.id, hasher.hexdigest())
                if conn.disconnected:  # left while we stored: the answer was not delivered
                    await self._forget(record)
            await write(DONE, more=False)
        finally:
            if pump is not None:
                await pump.aclose()  # it owns the stream now, and closes it
            elif stream is not None:
                await _aclose(stream)

    # -- non-streaming ---------------------------------------------------------------

    async def _complete(self, prepared: Prepared, send: Send, conn: _Connection) -> None:
        node = self.node
        writer = ChunkWriter(new_completion_id(), prepared.model.id, int(node.clock()), None)
        stream: AsyncIterator[dict[str, Any]] | None = None
        collector = _Collector()
        try:
            stream = prepared.backend.stream(prepared.request)
            async for chunk in stream:
                collector.add(writer.choices(chunk))
        except BackendError as exc:
            log.warning("backend failed (%s): %s", exc.code, exc.message)
            await send_error(send, _backend_http_error(exc), TEE_HEADERS)
            return
        except Exception as exc:  # noqa: BLE001 - any failure, reported by type only
            log.error("completion failed: %s", type(exc).__name__)
            await send_error(send, internal_error(), TEE_HEADERS)
            return
        finally:
            if stream is not None:
                await _aclose(stream)

        body = orjson.dumps(
            {
                "id": writer.id,
                "object": "chat.completion",
                "created": writer.created,
                "model": writer.model,
                "choices": [collector.choice()],
                "usage": writer.final_usage(),
            }
        )
        conn.finishing = True
        if not conn.disconnected:
            hasher = ResponseHasher()
            hasher.update(body)
            record = await self._sign(prepared, writer.id, hasher.hexdigest())
            if conn.disconnected:
                await self._forget(record)
        await send_json(send, 200, body, TEE_HEADERS)


class _Collector:
    """Folds rewritten stream choices into one ``chat.completion`` choice."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: list[Any] = []
        self.finish_reason: str | None = None

    def add(self, choices: list[dict[str, Any]]) -> None:
        for c in choices:
            if c.get("index", 0) != 0:
                continue
            d = c["delta"]
            if d.get("content"):
                self.content.append(d["content"])
            if d.get("reasoning_content"):
                self.reasoning.append(d["reasoning_content"])
            for call in d.get("tool_calls") or ():
                self._merge_tool_call(call)
            lp = c.get("logprobs")
            if isinstance(lp, dict) and isinstance(lp.get("content"), list):
                self.logprobs.extend(lp["content"])
            if c.get("finish_reason"):
                self.finish_reason = c["finish_reason"]

    def _merge_tool_call(self, call: Mapping[str, Any]) -> None:
        index = call.get("index", len(self.tool_calls))
        entry = self.tool_calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if call.get("id"):
            entry["id"] = call["id"]
        if call.get("type"):
            entry["type"] = call["type"]
        fn = call.get("function") or {}
        if fn.get("name"):
            entry["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            entry["function"]["arguments"] += fn["arguments"]

    def choice(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            if not self.content:
                message["content"] = None
        return {
            "index": 0,
            "message": message,
            "logprobs": {"content": self.logprobs} if self.logprobs else None,
            "finish_reason": self.finish_reason or "stop",
        }


def _backend_http_error(exc: BackendError) -> HTTPError:
    """A backend failure before the first byte: its status, its (content-free) message."""
    status = exc.status if 400 <= exc.status <= 599 else 502
    return HTTPError(
        status, exc.message, code=exc.code, type=INVALID_REQUEST if status < 500 else SERVER_ERROR
    )


async def _aclose(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
