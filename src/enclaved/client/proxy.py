"""The local proxy: any OpenAI-compatible app gets attestation and E2EE.

::

    enclaved proxy --upstream https://api.venice.ai/api/v1
    # then point any OpenAI client at http://127.0.0.1:8787/v1

Plaintext in, E2EE out. The proxy listens on loopback only and forwards

- ``GET /v1/models`` (and ``/v1/models/{id}``) as they are;
- ``POST /v1/chat/completions`` through :class:`AsyncEnclavedTransport`:
  the node is attested, the prompt sealed, the answer decrypted and its
  signature checked, streaming preserved (each event is passed on as it is
  decrypted). Chat apps resend the whole conversation every turn; the
  protocol encrypts only user and system contents, so earlier ``assistant``
  answers are folded into the encrypted system message rather than sent in
  the clear (:func:`enclaved.client._exchange.fold_history`).

The same routes are served under ``/api/v1``.

What it refuses:

- chat for a model that is not ``e2ee-*`` (the prompt would leave the
  machine in plaintext), unless started with ``allow_plaintext_models``;
- requests whose ``Host`` is not a loopback name or address (DNS
  rebinding: a web page must not be able to read answers through a name
  that resolves here);
- requests with an ``Origin`` that is not on this machine (a web page can
  send a "simple" cross-site POST to ``127.0.0.1`` without any preflight:
  it could not read the answer, but it would spend the proxy's API key).
  Apps that are not browsers send no ``Origin`` and are not affected.

Errors are OpenAI-style JSON (``{"error": {"message", "type", "param",
"code"}}``): 400 for requests enclaved will not send (and a foreign
``Host``), 403 for a foreign ``Origin``, 502 when the node
fails verification or decryption or cannot be reached. A failure after the
stream has started is sent as a ``data: {"error": ...}`` event, and the
stream then ends *without* ``data: [DONE]``: from this proxy, ``[DONE]``
means the answer was verified, signature included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import (
    APIError,
    AttestationError,
    ConfigError,
    CryptoError,
    Error,
    NetworkError,
    StaleAttestationError,
)
from ..protocol.headers import TEE, TEE_PROVIDER
from ..protocol.routes import API_PREFIXES, CHAT, MODELS
from ..protocol.sse import event as sse_event
from ..web import web_routes
from .transport import HEADER_ADDRESS, HEADER_HARDWARE, AsyncEnclavedTransport

logger = logging.getLogger("enclaved.client.proxy")

PREFIXES = tuple(reversed(API_PREFIXES))  # "/v1" first: what the SDKs use
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")

#: Response headers passed back to the local caller.
_PASS_HEADERS = (
    "content-type",
    HEADER_HARDWARE,
    HEADER_ADDRESS,
    TEE.lower(),
    TEE_PROVIDER.lower(),
)


def error_document(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_for(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI-style body for an error raised while proxying.

    Messages are enclaved's own (never content); decryption errors stay opaque.
    """
    if isinstance(exc, ConfigError):
        return 400, error_document(str(exc), type="invalid_request_error", code="enclaved_refused")
    if isinstance(exc, StaleAttestationError):
        return 502, error_document(
            str(exc), type="enclaved_verification_error", code="e2ee_attestation_stale"
        )
    if isinstance(exc, AttestationError):
        return 502, error_document(
            f"enclave verification failed: {exc}",
            type="enclaved_verification_error",
            code="verification_failed",
        )
    if isinstance(exc, CryptoError):
        return 502, error_document(
            str(exc), type="enclaved_verification_error", code="decryption_failed"
        )
    if isinstance(exc, APIError):
        status = exc.status if 400 <= exc.status < 600 else 502
        return status, error_document(
            exc.message, type=exc.type or "server_error", code=exc.code, param=exc.param
        )
    if isinstance(exc, (NetworkError, httpx.TransportError)):
        return 502, error_document(
            f"upstream unreachable: {type(exc).__name__}",
            type="server_error",
            code="upstream_unreachable",
        )
    return 500, error_document("internal proxy error", type="server_error", code="internal_error")


def _json(status: int, doc: dict[str, Any]) -> Response:
    return Response(json.dumps(doc), status_code=status, media_type="application/json")


def create_proxy_app(
    upstream: str,
    *,
    policy: Any = None,
    trust_root: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    allow_plaintext_models: bool = False,
    require_stream_binding: bool = False,
    aci: str | None = None,
    transport: AsyncEnclavedTransport | None = None,
    timeout: float = 600.0,
) -> Starlette:
    """The proxy as an ASGI app (``enclaved proxy`` serves it with uvicorn).

    ``upstream`` is the API root of the real service (``.../v1`` or
    ``.../api/v1``). ``api_key``, when given, is sent upstream on every
    request (local callers may then send any placeholder key); without it
    the caller's own ``Authorization`` is forwarded. ``require_stream_binding``:
    refuse answers whose node did not bind its response key to the request
    (see :class:`~.transport.EnclavedTransport`). ``aci``: the ``aci/1``
    revision the service speaks: its keyset is established and every
    answer's receipt checked before the answer (or a stream's ``[DONE]``)
    is handed on. ``transport`` replaces the
    enclaved transport (tests); otherwise one is built from ``policy`` /
    ``trust_root`` and shared by every request, so attestations are cached
    across them.
    """
    root = upstream.rstrip("/")
    if not root.startswith(("http://", "https://")):
        raise ConfigError(f"--upstream must be an http(s) URL, got {upstream!r}")
    if transport is None:
        transport = AsyncEnclavedTransport(
            policy=policy,
            trust_root=trust_root,
            require_e2ee=not allow_plaintext_models,
            require_stream_binding=require_stream_binding,
            aci=aci,
        )
    client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(timeout, connect=10.0))

    def upstream_headers(request: Request) -> dict[str, str]:
        headers = {"accept": request.headers.get("accept", "application/json")}
        auth = request.headers.get("authorization")
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"  # the proxy's key wins
        elif auth:
            headers["authorization"] = auth
        if "content-type" in request.headers:
            headers["content-type"] = request.headers["content-type"]
        return headers

    def passed(resp: httpx.Response) -> dict[str, str]:
        return {k: v for k, v in resp.headers.items() if k.lower() in _PASS_HEADERS}

    async def models(request: Request) -> Response:
        tail = request.path_params.get("model_id")
        url = root + MODELS + (f"/{tail}" if tail else "")
        try:
            resp = await client.get(
                url, params=request.query_params, headers=upstream_headers(request)
            )
        except (Error, httpx.HTTPError) as exc:
            return _json(*error_for(exc))
        return Response(resp.content, status_code=resp.status_code, headers=passed(resp))

    async def chat(request: Request) -> Response:
        body = await request.body()
        req = client.build_request(
            "POST", root + CHAT, content=body, headers=upstream_headers(request)
        )
        try:
            resp = await client.send(req, stream=True)
        except (Error, httpx.HTTPError) as exc:
            logger.info("proxy: chat refused or failed: %s", type(exc).__name__)
            return _json(*error_for(exc))
        if "text/event-stream" not in resp.headers.get("content-type", ""):
            try:
                content = await resp.aread()
            except (Error, httpx.HTTPError) as exc:
                logger.info("proxy: reading the answer failed: %s", type(exc).__name__)
                return _json(*error_for(exc))
            finally:
                await resp.aclose()
            return Response(content, status_code=resp.status_code, headers=passed(resp))
        return StreamingResponse(_relay(resp), status_code=resp.status_code, headers=passed(resp))

    async def _relay(resp: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_bytes():
                yield chunk
        except (Error, httpx.HTTPError) as exc:
            logger.info("proxy: stream failed: %s", type(exc).__name__)
            _, doc = error_for(exc)
            yield sse_event(json.dumps(doc).encode())  # and no [DONE]
        finally:
            await resp.aclose()

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json(
            404, error_document("not found", type="invalid_request_error", code="not_found")
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal proxy error"
        return _json(status, error_document(str(detail), type="invalid_request_error", code=None))

    routes: list[BaseRoute] = []
    for prefix in PREFIXES:
        routes += [
            Route(prefix + MODELS, models, methods=["GET"]),
            Route(prefix + MODELS + "/{model_id:path}", models, methods=["GET"]),
            Route(prefix + CHAT, chat, methods=["POST"]),
        ]
    routes += web_routes("proxy")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    return Starlette(
        routes=routes,
        middleware=[Middleware(LoopbackOnly)],
        exception_handlers={404: not_found, HTTPException: http_error},
        lifespan=lifespan,
    )


class LoopbackOnly:
    """ASGI middleware: only this machine's own callers, by ``Host`` and ``Origin``.

    1. ``Host`` must be ``localhost`` or a loopback IP literal (any port). A
       DNS-rebinding page reaches us under *its* name, so its ``Host`` is
       that name.
    2. ``Origin``, when present (browsers send it on cross-origin POSTs and
       on fetches), must be an ``http(s)`` URL whose host is loopback too;
       ``Origin: null`` (sandboxed frames, ``file:``) is refused.

    Refusals are OpenAI-style JSON: 400 ``forbidden_host``, 403 ``forbidden_origin``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not is_loopback_host(_host_only(headers.get("host", ""))):
            doc = error_document(
                "the proxy answers loopback names only (Host)",
                type="invalid_request_error",
                code="forbidden_host",
            )
            await _json(400, doc)(scope, receive, send)
            return
        origin = headers.get("origin")
        if origin is not None and not _is_local_origin(origin):
            doc = error_document(
                "requests from web pages of other sites are refused (Origin)",
                type="invalid_request_error",
                code="forbidden_origin",
            )
            await _json(403, doc)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _host_only(host: str) -> str:
    """``[::1]:8787`` -> ``::1``; ``127.0.0.1:8787`` -> ``127.0.0.1``; ``localhost`` as is."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_local_origin(origin: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin.strip())
        hostname = parts.hostname
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and hostname is not None and is_loopback_host(hostname)


def is_loopback_host(host: str) -> bool:
    """Whether ``--host`` names a loopback address (the only kind the proxy binds)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


__all__ = ["LOOPBACK_NAMES", "LoopbackOnly", "create_proxy_app", "error_for", "is_loopback_host"]
