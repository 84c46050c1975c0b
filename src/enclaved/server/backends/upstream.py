"""An OpenAI-compatible inference engine reached over HTTP (vLLM, SGLang, ...).

:class:`UpstreamBackend` forwards a plaintext chat request to
``{base_url}/chat/completions`` with ``stream: true`` and yields every
``chat.completion.chunk`` the engine sends, as soon as its event is complete.
Nothing is buffered beyond one partial SSE event, so the first token reaches
the client while the engine is still generating.

What is checked:

* the HTTP status (non-2xx fails before the first chunk, with a status the
  server can report: see :func:`_status_error`);
* that every event is a JSON object, and that the stream ends with
  ``data: [DONE]`` - a stream cut short (engine crash, dropped connection) is
  an error, never a silently truncated answer that the node would then sign;
* ``{"error": ...}`` events sent mid-stream (vLLM does this): the engine's
  error ``type`` is mapped to a documented one, never copied (see
  :func:`_engine_error`).

What is NOT checked here: the shape of each chunk beyond "a JSON object"
(the server layer reads ``choices`` / ``usage``, rewrites ids and model
names, and refuses a role, index or finish reason outside
:mod:`enclaved.protocol.clear_fields`), or that the engine honoured the sampling parameters.

Error messages never contain prompt or completion content, nor the body of
an upstream error (engines sometimes echo the input there).

Requests sent to the engine:

* base_url includes the API prefix, as the OpenAI SDK expects:
  ``http://127.0.0.1:8000/v1``;
* the request's ``params`` pass through unchanged except ``model``,
  ``messages``, ``stream`` and ``stream_options``, which this class sets
  (``stream_options.include_usage`` asks the engine for the final usage chunk).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import orjson

from ...protocol import routes
from ...protocol.errors import INVALID_REQUEST, SERVER_ERROR
from ...protocol.sse import DONE_DATA as _DONE
from ...protocol.sse import SSEDecoder
from .base import BackendError, ChatRequest
from .engine_http import EngineHttp, Timeouts

__all__ = ["SSEDecoder", "UpstreamBackend"]

log = logging.getLogger(__name__)

#: Between two chunks an engine may be busy with a long prefill or queued
#: behind other requests; only connecting must be fast.
DEFAULT_TIMEOUTS = Timeouts(connect=10.0, read=300.0, write=30.0)

#: The largest SSE event (its unterminated line, or its data lines together)
#: the node holds while waiting for the engine to end it. A chat chunk is a
#: few hundred bytes, a chunk with logprobs a few KiB: 1 MiB leaves room and
#: bounds what a broken or hostile engine can make the node buffer.
MAX_ENGINE_EVENT_BYTES = 1024 * 1024

#: After ``[DONE]``: how long, and how many bytes, the end of the body is
#: waited for so that the connection can be reused (see ``_read_rest``).
REST_TIMEOUT = 1.0
REST_MAX_BYTES = 64 * 1024

#: The engine's model list, at most.
MODELS_MAX_BYTES = 4 * 1024 * 1024


def _status_error(status: int) -> BackendError:
    """Map an engine's HTTP error status to the one the server reports.

    A 4xx from the engine is about the request (context too long, bad
    parameter) and is reported as 400; 429 stays 429 (engine overloaded, the
    client may retry); anything else is the engine failing: 502.
    """
    if status == 429:
        return BackendError("upstream engine is busy (HTTP 429)", status=429, code="upstream_busy")
    if 400 <= status < 500:
        return BackendError(
            f"upstream engine rejected the request (HTTP {status})",
            status=400,
            code="upstream_rejected",
        )
    return BackendError(f"upstream engine failed (HTTP {status})", status=502)


class UpstreamBackend:
    """Streams chat completions from an OpenAI-compatible engine.

    >>> backend = UpstreamBackend("http://127.0.0.1:8000/v1", "Qwen/Qwen3-8B")  # doctest: +SKIP
    >>> await backend.start()  # doctest: +SKIP
    >>> async for chunk in backend.stream(ChatRequest(messages=[...])):  # doctest: +SKIP
    ...     ...

    The engine is reached through :class:`~.engine_http.EngineHttp` (see that
    module for why not httpx). ``headers`` are sent with every request, after
    the backend's own; ``timeout`` is a :class:`~.engine_http.Timeouts` or one
    number for every step; ``ssl_context`` replaces the default certificate
    check for an ``https://`` engine.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeouts | float = DEFAULT_TIMEOUTS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        #: The engine's name for the model: sent as ``model`` upstream.
        self.model_name = model
        self._timeouts = Timeouts.of(timeout)
        self._ssl_context = ssl_context
        common = {"Accept": "text/event-stream"}
        if api_key:
            common["Authorization"] = f"Bearer {api_key}"
        common.update(headers or {})
        self._http = EngineHttp(self.base_url, timeouts=self._timeouts, ssl_context=ssl_context)
        self._started = False
        # The header blocks never change: built once.
        self._models_head = self._http.head(
            "GET", routes.MODELS, {**common, "Accept": "application/json"}
        )
        self._post_head = self._http.head(
            "POST",
            routes.CHAT,
            {
                **common,
                # Compressing an event stream token by token only adds latency.
                "Accept-Encoding": "identity",
                "Content-Type": "application/json",
            },
        )

    def __repr__(self) -> str:  # never shows the api key
        return f"UpstreamBackend(base_url={self.base_url!r}, model={self.model_name!r})"

    async def start(self) -> None:
        """Get ready to connect. The engine need not be up yet (vLLM loads
        slowly); requests fail with a 502 until it is."""
        if self._http.closed:
            self._http = EngineHttp(
                self.base_url, timeouts=self._timeouts, ssl_context=self._ssl_context
            )
        self._started = True

    async def close(self) -> None:
        self._started = False
        await self._http.aclose()

    def _engine(self) -> EngineHttp:
        if not self._started:
            raise BackendError("upstream backend used before start()", status=503, code="not_ready")
        return self._http

    async def list_models(self) -> list[str]:
        """The model ids the engine serves (``GET {base_url}/models``): a health check."""
        response = await self._engine().send(self._models_head)
        try:
            if not response.is_success:
                raise _status_error(response.status)
            body = await response.read(MODELS_MAX_BYTES)
        finally:
            await response.aclose()
        try:
            return [str(entry["id"]) for entry in orjson.loads(body)["data"]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise BackendError("upstream engine sent a malformed model list") from exc

    async def ready(self) -> None:
        """Readiness (``/ready``): the engine answers its model list and serves this model."""
        if self.model_name not in await self.list_models():
            raise BackendError("the upstream engine does not serve the configured model")

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body = dict(request.params)
        body["model"] = self.model_name
        body["messages"] = request.messages
        body["stream"] = True
        options = body.get("stream_options")
        body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        """Yield each chunk the engine sends; raise :class:`BackendError` on
        any failure, before or during the stream.

        Closing the iterator (client gone) closes the connection to the engine,
        which makes vLLM-style engines abort the generation. After ``[DONE]``
        the rest of the body (the chunked encoding's last chunk, normally in
        the same read) is consumed, so that the connection goes back to the
        pool instead of being closed: the next request skips a TCP handshake.
        """
        response = await self._engine().send(self._post_head, orjson.dumps(self._body(request)))
        pieces = response.pieces()
        try:
            if not response.is_success:
                raise _status_error(response.status)
            encoding = response.headers.get(b"content-encoding", b"identity").strip().lower()
            if encoding not in (b"", b"identity"):
                # Asked for identity; an engine that compresses anyway is not understood.
                raise BackendError("upstream engine sent a compressed stream")
            decoder = SSEDecoder()
            async for raw in pieces:
                for event, data in decoder.feed(raw):
                    if data == _DONE:
                        await _read_rest(pieces)
                        return
                    yield _parse_event(event, data)
                # A read that ends with a blank line left nothing pending: the
                # common case costs one ``endswith`` per read, not a count.
                if not raw.endswith(b"\n\n") and decoder.buffered > MAX_ENGINE_EVENT_BYTES:
                    raise BackendError(
                        f"upstream engine sent an event over {MAX_ENGINE_EVENT_BYTES} bytes"
                    )
            for event, data in decoder.flush():
                if data == _DONE:
                    return
                yield _parse_event(event, data)
        finally:
            await pieces.aclose()  # a generator never started runs no finally:
            await response.aclose()  # so the answer is closed here too
        # The body ended without [DONE]: the answer may be truncated.
        raise BackendError("upstream stream ended without [DONE]", code="upstream_truncated")


async def _read_rest(pieces: AsyncGenerator[bytes, None]) -> None:
    """Read what follows ``[DONE]`` so that the connection can be kept.

    Normally that is only the end of the chunked body, already received or
    a moment away. An engine that sends more, or keeps the body open, is
    not waited for beyond :data:`REST_TIMEOUT` / :data:`REST_MAX_BYTES`: the
    answer is complete either way, and the connection is then closed
    instead of pooled. Nothing read here is looked at.
    """
    size = 0
    try:
        async with asyncio.timeout(REST_TIMEOUT):
            async for raw in pieces:
                size += len(raw)
                if size > REST_MAX_BYTES:
                    return
    except (TimeoutError, BackendError):
        pass


def _parse_event(event: str, data: bytes) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BackendError("upstream engine sent malformed JSON") from exc
    if not isinstance(chunk, dict):
        raise BackendError("upstream engine sent malformed JSON")
    if event == "error" or "error" in chunk:
        raise _engine_error(chunk.get("error"))
    return chunk


#: Engine error types that mean "the request was refused" (OpenAI's name;
#: vLLM's and SGLang's exception class names). Every other type, and none,
#: means the engine failed.
_REQUEST_ERROR_TYPES = frozenset({INVALID_REQUEST, "BadRequestError", "BadRequest"})


def _engine_error(err: object) -> BackendError:
    """An engine's ``{"error": ...}`` event -> the failure the node reports.

    Nothing of the engine's error is copied: its ``message`` may quote the
    input, and its ``type`` is whatever text the engine chose. The type is
    only *mapped* to one of the documented types (docs/errors.md):
    ``invalid_request_error`` for a refused request, ``server_error`` for
    anything else; the message names that documented type.
    """
    kind = err.get("type") if isinstance(err, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    refused = kind in _REQUEST_ERROR_TYPES or (
        type(code) is int and 400 <= code < 500 and code != 429
    )
    if refused:
        return BackendError(
            f"upstream engine reported an error mid-stream ({INVALID_REQUEST})",
            status=400,
            code="upstream_rejected",
        )
    return BackendError(f"upstream engine reported an error mid-stream ({SERVER_ERROR})")
