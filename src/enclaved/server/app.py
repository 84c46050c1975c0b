"""The enclaved ASGI application.

>>> from enclaved.server.app import create_app
>>> from enclaved.server.config import ServerConfig
>>> app = create_app(ServerConfig.default())  # doctest: +SKIP

Routes (PROTOCOL.md "Routes"), under ``/api/v1`` and mirrored under ``/v1``:

=========================  ====================================  ============
route                      what                                  API key
=========================  ====================================  ============
``GET /models``            model list (``?type=text`` filters)   open
``GET /models/{id}``       one model (OpenAI ``models.retrieve``) open
``POST /chat/completions`` chat, SSE or JSON, E2EE or plain      required*
``GET /tee/attestation``   attestation report                    open
``GET /tee/signature``     response signature                    required*
``GET /health``            liveness (top level only)             open
``GET /ready``             readiness: engines, evidence, store   open
``GET /``                  the chat page (``enclaved.web``)      open
=========================  ====================================  ============

\\* only when the configuration lists API keys.

Everything the app uses is passed in or built from the config: the node key
(made in memory when not given), the evidence source, the signature store,
the backends and the clock. There is no module-level state, so several
nodes can run in one process.

Ownership: what ``create_app`` builds it also closes at shutdown; what the
caller injects the caller closes. Every backend is ``start()``-ed at
startup (backends' ``start`` is idempotent), so a caller may share one
backend between several apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import __version__
from ..crypto import Ed25519KeyPair, KeyPair
from ..errors import NetworkError
from ..evidence.base import EvidenceSource
from ..protocol import routes
from ..protocol.headers import TEE_RESPONSE_HEADERS
from ..web import web_routes
from .aci import Aci, AciCore, api_key_digest
from .attestation import VerifyFn, aci_report, attestation_report
from .auth import ApiKeys
from .backends.base import Backend
from .chat import STORE_TIMEOUT_SECONDS, ChatCompletions, send_error
from .config import ModelConfig, ServerConfig
from .errors import (
    NOT_FOUND,
    SERVER_ERROR,
    HTTPError,
    internal_error,
    missing_parameter,
    model_not_found,
)
from .metrics import ATTESTATION as ATTESTATION_ROUTE
from .metrics import Metrics
from .node import Node
from .ratelimit import RateLimiter
from .signing import ResponseSigner
from .store import open_store
from .store.base import SignatureStore

log = logging.getLogger("enclaved.server")
access_log = logging.getLogger("enclaved.access")

PREFIXES = routes.API_PREFIXES
TEE_HEADERS = TEE_RESPONSE_HEADERS
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
#: Characters the access log shows as they are; the rest are percent-encoded.
_PATH_SAFE = "/-._~:@!$&'()*+,;="


def json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(obj), status_code=status, media_type="application/json", headers=headers
    )


def build_backends(config: ServerConfig) -> dict[str, Backend]:
    """The backends the configuration names (see :func:`.backends.make_backends`:
    one embedded model shared by every id that uses it; one upstream client
    per engine, model and key). A missing API-key variable is a ConfigError."""
    from .backends import make_backends

    return make_backends(config.models)


def build_evidence(config: ServerConfig, *, now: float | None = None) -> EvidenceSource:
    """The evidence source of the configured TEE mode (``config.tee``).

    ``auto`` never falls back to the simulated TEE: without a hardware source
    that answers, the node refuses to start and says how to ask for one.
    """
    from ..errors import ConfigError

    tee = config.tee
    if tee == "auto":
        from ..evidence import dstack
        from ..evidence.configfs_tsm import ConfigfsTsm

        if dstack.agent_answers():
            tee = "dstack"
        else:
            try:
                ConfigfsTsm().check()
                tee = "configfs"
            except ConfigError:
                raise ConfigError(
                    f"tee = auto: no TEE evidence source answers (no dstack guest agent at "
                    f"{dstack.endpoint()}, no TDX configfs-tsm); on a development machine ask "
                    "for the simulated TEE with --tee simulated"
                ) from None
    if tee == "configfs":
        if config.gpus:
            raise ConfigError('gpus = true: only with tee = "dstack" for now')
        from ..evidence.configfs_tsm import ConfigfsEvidence, ConfigfsTsm

        tsm = ConfigfsTsm()
        tsm.check()
        return ConfigfsEvidence(tsm)
    if tee == "dstack":
        from ..evidence.dstack import DstackEvidence

        gpus = None
        if config.gpus:
            from ..evidence.nvidia_gpus import NvmlGpus

            gpus = NvmlGpus()
            gpus.start()
        return DstackEvidence.connect(gpus=gpus)
    if config.gpus:
        raise ConfigError('gpus = true needs a hardware TEE (tee = "dstack")')
    from ..evidence.simulated_source import SimulatedEvidence

    return SimulatedEvidence.load_or_create(
        config.data_dir,
        now=now,
        models=[m.id for m in config.models],
        provenance=config.aci.source_provenance() if config.aci.enabled else None,
    )


def build_rate_limiter(config: ServerConfig, clock: Callable[[], float]) -> RateLimiter:
    """The rate limiter of ``[rate_limits]``: counters in Redis when the
    signature store is Redis (replicas share the budget), else in memory."""
    from .ratelimit import Limits, MemoryCounter, RateLimiter, RedisCounter

    rl = config.rate_limits
    store = config.signatures
    counter: Any = (
        RedisCounter(store.url) if store.kind == "redis" and store.url else MemoryCounter()
    )
    per_key = {digest: Limits(r, t) for digest, r, t in rl.keys}
    return RateLimiter(
        Limits(rl.requests_per_minute, rl.tokens_per_minute), per_key, counter, clock
    )


def node_key_for(evidence: EvidenceSource) -> KeyPair:
    """The node key when no key file is configured (``node_key_file``: see
    :func:`load_node_key`): derived by the KMS where the evidence source has
    one (dstack: every replica of the app holds the same key, a restart keeps
    it); else made now, in memory only."""
    derive = getattr(evidence, "kms_node_key", None)
    return derive() if callable(derive) else KeyPair.generate()


def load_node_key(path: Path) -> KeyPair:
    """The node key of a key file: 64 hex characters (a secp256k1 private
    key), readable by its owner only. A file others may read is refused: the
    key is the node's identity to every client."""
    from ..errors import ConfigError, InvalidKeyError

    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(
                f"node_key_file {path}: readable by others (mode {mode & 0o777:o}); "
                f"chmod 600 {path}"
            )
        text = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ConfigError(f"node_key_file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        text = ""
    bad = ConfigError(f"node_key_file {path}: not a secp256k1 private key (64 hex characters)")
    if len(text) != 64:
        raise bad
    try:
        return KeyPair(bytes.fromhex(text))
    except (ValueError, InvalidKeyError):  # not hex; zero or not below the group order
        raise bad from None


def create_app(
    config: ServerConfig,
    *,
    node_key: KeyPair | None = None,
    evidence: EvidenceSource | None = None,
    store: SignatureStore | None = None,
    backends: Mapping[str, Backend] | None = None,
    clock: Callable[[], float] | None = None,
    verify: VerifyFn | None = None,
    receipt_key: Ed25519KeyPair | None = None,
    aci_core: AciCore | None = None,
) -> Starlette:
    """One serving node as an ASGI app. See the module docstring.

    ``verify`` replaces the self-verification of attestation reports (tests
    of the route layer only; the default runs :mod:`enclaved.attestation`).
    """
    clock = clock or time.time
    owned: list[Any] = []
    if backends is None:
        backends = build_backends(config)
        owned.extend({id(b): b for b in backends.values()}.values())
    missing = [m.id for m in config.models if m.id not in backends]
    if missing:
        from ..errors import ConfigError

        raise ConfigError(f"no backend for model(s): {', '.join(missing)}")
    if store is None:
        store = open_store(config, clock=clock)
        owned.append(store)
    if node_key is None and config.node_key_file is not None:
        node_key = load_node_key(config.node_key_file)  # before anything else is made
    if evidence is None:
        evidence = build_evidence(config, now=clock())
    key = node_key or node_key_for(evidence)
    # The receipt key is made here, in memory, like the node key: the keyset lists it.
    aci = build_aci(config, key, receipt_key or Ed25519KeyPair.generate(), clock(), aci_core)
    if aci is not None:
        problem = provenance_problem(config.aci.source_provenance(), evidence.info())
        if problem is not None:
            log.warning("[aci] the stated source provenance will not count: %s", problem)
    node = Node(
        config=config,
        key=key,
        backends=dict(backends),
        store=store,
        evidence=evidence,
        signer=ResponseSigner(key),
        api_keys=ApiKeys(config.api_key_hashes),
        clock=clock,
        metrics=Metrics([m.id for m in config.models]) if config.metrics.enabled else None,
        aci=aci,
        rate_limiter=build_rate_limiter(config, clock) if config.rate_limits.enabled else None,
    )
    created = int(clock())
    chat = ChatCompletions(node)

    # -- routes ------------------------------------------------------------------

    def model_entry(m: ModelConfig) -> dict[str, Any]:
        return {
            "id": m.id,
            "object": "model",
            "created": created,
            "owned_by": "enclaved",
            "type": "text",
            "model_spec": {
                "name": m.name,
                "privacy": m.privacy,
                "availableContextTokens": m.available_context_tokens,
                "capabilities": m.capabilities.to_wire(),
                "offline": False,
            },
        }

    async def list_models(request: Request) -> Response:
        kind = request.query_params.get("type", "text")
        # Every enclaved model is a text model: ``text``/``all``/``code`` list
        # them; any other type (image, tts, ...) is an empty list, as OpenAI does.
        data = [model_entry(m) for m in config.models] if kind in ("text", "all", "code") else []
        return json_response({"object": "list", "data": data})

    async def get_model(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        m = node.model(model_id)
        if m is None:
            raise model_not_found(model_id)
        return json_response(model_entry(m))

    async def attestation(request: Request) -> Response:
        q = request.query_params
        started, status = time.monotonic(), 500
        try:
            doc = await attestation_report(node, q.get("model"), q.get("nonce"), verify=verify)
            status = 200
        except HTTPError as exc:
            status = exc.status
            raise
        finally:
            if node.metrics is not None:
                node.metrics.request(
                    ATTESTATION_ROUTE, q.get("model"), status, time.monotonic() - started
                )
        return json_response(doc, headers={**TEE_HEADERS, "Cache-Control": "no-store"})

    async def signature(request: Request) -> Response:
        node.api_keys.check(request.headers.get("authorization"))
        q = request.query_params
        request_id = q.get("request_id")
        if not request_id:
            raise missing_parameter("request_id")
        model_id = q.get("model")
        if model_id and node.model(model_id) is None:
            raise model_not_found(model_id)
        record = None
        if _REQUEST_ID.fullmatch(request_id):
            try:
                record = await asyncio.wait_for(node.store.get(request_id), STORE_TIMEOUT_SECONDS)
            except (NetworkError, TimeoutError) as exc:
                log.error("signature store unavailable: %s", type(exc).__name__)
                if node.metrics is not None:
                    node.metrics.store_errors.inc()
                raise HTTPError(
                    503,
                    "Signature store unavailable, retry later",
                    code="store_unavailable",
                    type=SERVER_ERROR,
                ) from None
        if record is None or (model_id and record.model != model_id):
            raise HTTPError(
                404,
                "Signature not found for this request_id",
                code="signature_not_found",
                type=NOT_FOUND,
                param="request_id",
            )
        doc = record.to_dict()
        if record.api_key_sha256 is not None and not hmac.compare_digest(
            record.api_key_sha256, api_key_digest(request.headers.get("authorization")) or ""
        ):
            doc.pop("receipt", None)  # bound to another API key (docs/server.md)
        return json_response(doc, headers=TEE_HEADERS)

    async def aci_attestation(request: Request) -> Response:
        doc = await aci_report(node, request.query_params.get("nonce"))
        return json_response(doc, headers={"Cache-Control": "no-store"})

    async def aci_receipt(request: Request) -> Response:
        receipt_id = request.path_params["receipt_id"]
        auth = request.headers.get("authorization")
        record = None
        if node.aci is not None and _REQUEST_ID.fullmatch(receipt_id):
            try:
                record = await asyncio.wait_for(node.store.get(receipt_id), STORE_TIMEOUT_SECONDS)
            except (NetworkError, TimeoutError) as exc:
                log.error("signature store unavailable: %s", type(exc).__name__)
                raise HTTPError(
                    503,
                    "Receipt store unavailable, retry later",
                    code="store_unavailable",
                    type=SERVER_ERROR,
                ) from None
        if record is not None and record.api_key_sha256 is not None:
            # Spec §7.6: no credential, 401; another key, 404 as if absent.
            presented = api_key_digest(auth)
            if presented is None:
                raise HTTPError(
                    401,
                    "Missing API key: send the key that made the request",
                    code="unauthorized",
                    type="authentication_error",
                )
            if not hmac.compare_digest(record.api_key_sha256, presented):
                record = None
        if record is None or record.receipt is None:
            raise HTTPError(404, "Receipt not found", code="not_found", type=NOT_FOUND)
        return json_response(record.receipt, headers={"Cache-Control": "no-store"})

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "version": __version__, "tee": config.tee})

    async def ready(request: Request) -> Response:
        from .readiness import readiness

        ok, body = await readiness(node)
        return json_response(body, status=200 if ok else 503, headers={"Cache-Control": "no-store"})

    table: list[BaseRoute] = [
        Route(routes.HEALTH, health, methods=["GET"]),
        Route(routes.READY, ready, methods=["GET"]),
        *web_routes("node"),
    ]
    for prefix in PREFIXES:
        table += [
            Route(prefix + routes.MODELS, list_models, methods=["GET"]),
            Route(prefix + routes.MODELS + "/{model_id:path}", get_model, methods=["GET"]),
            Route(prefix + routes.CHAT, chat, methods=["POST"]),
            Route(prefix + routes.ATTESTATION, attestation, methods=["GET"]),
            Route(prefix + routes.SIGNATURE, signature, methods=["GET"]),
            Route(prefix + routes.ACI_ATTESTATION, aci_attestation, methods=["GET"]),
            Route(prefix + routes.ACI_RECEIPTS + "/{receipt_id}", aci_receipt, methods=["GET"]),
        ]

    # -- errors ------------------------------------------------------------------

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPError)
        return Response(
            exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers
        )

    async def on_starlette_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            err = HTTPError(405, f"Method {request.method} not allowed", code="method_not_allowed")
            return Response(
                err.body(), 405, media_type="application/json", headers=dict(exc.headers or {})
            )
        if exc.status_code == 404:
            err = HTTPError(
                404, f"No route {request.url.path}", code="route_not_found", type=NOT_FOUND
            )
        else:
            err = HTTPError(exc.status_code, str(exc.detail), code="http_error")
        return Response(err.body(), status_code=err.status, media_type="application/json")

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Type only: exception text may quote request content.
        log.error("unhandled error on %s: %s", request.url.path, type(exc).__name__)
        err = internal_error()
        return Response(err.body(), status_code=500, media_type="application/json")

    # -- lifecycle ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await start_backends(app)
        try:
            yield
        finally:
            for thing in owned:
                with contextlib.suppress(Exception):
                    await thing.close()

    app = EnclavedApp(
        extra_headers=aci.headers_raw if aci is not None else [],
        direct={("POST", prefix + routes.CHAT): chat for prefix in PREFIXES},
        routes=table,
        exception_handlers={
            HTTPError: on_http_error,
            StarletteHTTPException: on_starlette_error,
            Exception: on_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.node = node
    return app


def load_aci_core() -> AciCore | None:
    """The shared core, :mod:`enclaved.aci`, seen through :class:`AciCore`: its
    ``node_core()`` returns the object the node calls (:class:`~.aci.AciCore`
    says what each method must return). ``None`` where this build has no core:
    the node then serves no ACI, and says so in its log."""
    import importlib

    try:
        module = importlib.import_module("enclaved.aci")
    except ImportError:
        return None
    adapter = getattr(module, "node_core", None)
    return adapter() if callable(adapter) else None


def build_aci(
    config: ServerConfig,
    node_key: KeyPair,
    receipt_key: Ed25519KeyPair,
    now: float,
    core: AciCore | None,
) -> Aci | None:
    if not config.aci.enabled:
        return None
    core = core or load_aci_core()
    if core is None:
        log.warning("ACI core not available: no ACI report, headers or receipts")
        return None
    tls: list[tuple[str, str | None]] = []
    if config.aci.tls_certificate is not None:
        tls.append((spki_sha256(config.aci.tls_certificate), config.aci.tls_domain))
    return Aci(
        config.aci,
        core,
        node_key=node_key,
        receipt_key=receipt_key,
        started_at=now,
        tls_spki_sha256=tls,
    )


def provenance_problem(stated: Mapping[str, str], info: Mapping[str, Any]) -> str | None:
    """Why clients' ``aci.provenance`` will not pass for the ``[aci]`` provenance
    ``stated``, given the evidence source's ``info``; ``None`` when nothing is
    stated or the booted app compose names the stated image digest or commit.
    Said once at start, rather than learnt from every client's refusal."""
    if not stated:
        return None
    from .attestation import compose_evidence

    compose = compose_evidence(info).get("app_compose")
    if compose is None:
        return "the TEE evidence carries no app_compose to corroborate it"
    named = [stated[k] for k in ("image_digest", "repo_commit") if k in stated]
    if not any(value in compose for value in named):
        return "the booted app compose names neither the stated image_digest nor repo_commit"
    return None


def spki_sha256(path: Path) -> str:
    """SHA-256 (hex) of the SubjectPublicKeyInfo of the PEM certificate at ``path``."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from ..errors import ConfigError

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"aci.tls_certificate {path}: not a PEM certificate") from exc
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


async def start_backends(app: Starlette) -> None:
    """Start (load) every backend of ``app``'s node, once.

    The lifespan calls it; ``enclaved serve`` calls it before it starts
    serving, so that a model that cannot load fails the start with a clear
    message. A :class:`~enclaved.server.backends.base.BackendError` says why.
    """
    if getattr(app.state, "backends_started", False):
        return
    backends = app.state.node.backends
    unique = {id(b): b for b in backends.values()}.values()
    for backend in unique:
        ids = ", ".join(m for m, b in backends.items() if b is backend)
        log.info("starting backend %s for %s", backend.model_name, ids)
        started = time.monotonic()
        await backend.start()
        log.info("backend %s ready in %.1f s", backend.model_name, time.monotonic() - started)
        await _engine_health(backend)
    app.state.backends_started = True


async def _engine_health(backend: Backend) -> None:
    """At start, say whether an upstream engine already answers for its model.

    Not fatal: vLLM may still be loading its weights (minutes), and requests
    fail with 502 until it answers; ``/ready`` tells a load balancer the same.
    """
    from .backends.base import BackendError
    from .backends.upstream import UpstreamBackend

    if not isinstance(backend, UpstreamBackend):
        return
    try:
        await asyncio.wait_for(backend.ready(), 5.0)
    except (BackendError, TimeoutError) as exc:
        code = getattr(exc, "code", "timeout")
        log.warning(
            "engine for %s does not answer yet (%s): requests get 502 and /ready 503 until it does",
            backend.model_name,
            code,
        )
    else:
        log.info("engine for %s answers and serves the model", backend.model_name)


class EnclavedApp(Starlette):
    """Starlette, plus what every request needs and uvicorn gets wrong for us.

    - A content-free access log (``enclaved.access``): method, path (never
      the query string), status, milliseconds. Use it instead of uvicorn's,
      which prints query strings. Headers are never looked at.
    - No tracebacks reach the server's log: Starlette re-raises unhandled
      errors after answering 500 so that the server can log them, and the
      exception text may quote request content. Only the type is logged.
    - ``direct``: ASGI endpoints called without Starlette's middleware and
      router, for the chat route, which is on the path of every first token.
      The endpoint answers its own errors (``ChatCompletions`` does); an
      exception that escapes it is answered 500 and logged by type here, as
      Starlette would. Skipping the two middleware layers, the route walk and
      their per-message ``send`` wrappers saves ~0.1 ms of the node's time
      to first token (``bench/stream.py``).
    """

    def __init__(
        self,
        *,
        direct: Mapping[tuple[str, str], Callable[..., Any]],
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._direct = dict(direct)
        #: Added to every response: ``X-ACI-Version`` and ``X-ACI-Keyset-Digest``.
        self._extra_headers = list(extra_headers or ())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.monotonic()
        status = 0
        extra = self._extra_headers

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        endpoint = self._direct.get((scope["method"], scope["path"]))
        try:
            if endpoint is None:
                await super().__call__(scope, receive, send_wrapper)
            else:
                scope["app"] = self
                try:
                    await endpoint(scope, receive, send_wrapper)
                except Exception as exc:  # noqa: BLE001 - answered 500, logged by type only
                    log.error("unhandled error on %s: %s", scope["path"], type(exc).__name__)
                    if not status:
                        await send_error(send_wrapper, internal_error())
        except Exception:  # noqa: BLE001, S110 - see below
            # Already answered (500) and logged by type in ``on_unexpected``;
            # re-raising would hand the traceback to uvicorn's log.
            pass
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    # Decoded, the path may hold %0a: a line of the client's choosing.
                    quote(scope["path"], safe=_PATH_SAFE),
                    status,
                    (time.monotonic() - started) * 1000,
                )
