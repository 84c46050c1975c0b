"""httpx transports that attest, encrypt, decrypt and check signatures.

:class:`EnclavedTransport` (sync) and :class:`AsyncEnclavedTransport`
(async) wrap a real httpx transport. Every request passes through
unchanged except ``POST .../chat/completions`` for a ``tee-*`` or
``e2ee-*`` model, which goes like this (a JSON POST naming such a model
on any other route is refused: nothing there would be checked):

1. **Attest** the node: ``GET {base}/tee/attestation?model=M&nonce=N`` with
   a fresh 32-byte nonce, verified under the client's policy
   (:mod:`._attest`; the server's ``verified`` flag is never trusted). The
   verified node (its signing key and address) is cached per
   (base URL, model) for ``attestation_ttl`` seconds; every refresh uses a
   new nonce.
2. **Encrypt** (``e2ee-*`` only): a fresh session key pair for this request
   alone, every user/system message sealed to the attested key, the three
   ``X-Venice-TEE-*`` headers, ``stream: true`` (:mod:`._exchange`).
3. **Send.** On HTTP 421, or an error with code ``e2ee_attestation_stale``,
   the cached attestation is dropped and steps 1-3 run once more (a new
   nonce, a new session key, the prompt sealed again to the new key). A
   second stale answer raises :class:`~enclaved.errors.StaleAttestationError`.
   Other error answers (HTTP 4xx / 5xx) are handed to the caller as they
   are (the OpenAI SDK raises its usual errors for them). Any other status
   but 200 - another 2xx, a redirect - raises
   :class:`~enclaved.errors.APIError` (code ``unexpected_status``), from the
   chat route and from the attestation route alike: handing it on would
   let a ``203`` carrying a plaintext completion, or a redirect followed
   to a route that is not checked, skip every step below.
4. **Decrypt** the stream event by event as it arrives, failing closed
   (:mod:`._stream`): a delta that is not an envelope to our key raises
   :class:`~enclaved.errors.DecryptionError`, an ``error`` event raises
   :class:`~enclaved.errors.APIError`, a stream without ``[DONE]`` raises
   :class:`~enclaved.errors.NetworkError`. Nothing that failed is yielded.
5. **Check the signature** once the body has ended: ``GET
   {base}/tee/signature?model=M&request_id=<completion id>``, the hashes of
   the exact bytes sent and received, the address the signature recovers to
   against the attested one (:mod:`._signature`). Failure raises
   :class:`~enclaved.errors.VerificationError`.
6. **Forget** the session key, however the response ended.

Streaming and signatures: a streaming caller receives each decrypted event
as soon as it arrives, and the signature can only be checked after the last
one. So a stream whose signature fails has already shown its text, and
raises :class:`~enclaved.errors.VerificationError` at the end, *instead of*
the final ``data: [DONE]``. Callers that must not show unverified text ask
for a non-streaming completion (verified before it is returned) or wait
for the end of the stream. ``verify_signatures=False`` skips step 5;
``verify_signatures="address"`` checks only that the signature recovers to
the attested address (for a gateway that rewrites bodies on the way, so that
the node signed bytes the client never saw: the hash rows are then skipped).

A non-streaming ``e2ee-*`` call streams underneath and returns an ordinary
``chat.completion`` document assembled from the decrypted deltas, with
``usage``, after the signature check.

Errors raised by the steps above are :class:`enclaved.Error` subclasses and
propagate through httpx (and the OpenAI SDK, which passes through
exceptions that are not transport errors). Transport errors of the wrapped
transport (connection refused, timeouts) propagate unchanged, so the SDK
retries them as usual.

The ``x-enclaved-*`` response headers are set by this transport only:
the same names coming from upstream are removed from every response,
verified or not.

Nothing here logs prompts, answers or keys; debug logs name models,
addresses and outcomes only (logger ``enclaved.client``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx

from ..crypto import KeyPair, sha256_hex
from ..errors import APIError, ConfigError, StaleAttestationError, VerificationError
from ._attest import (
    AttestationCache,
    AttestedNode,
    VerifierLike,
    afetch_for,
    fetch_for,
    judge_attestation,
    new_nonce,
    parse_attestation,
)
from ._exchange import ChatPlan, Exchange, is_stale, plan_request
from ._signature import SignatureCheck, check_signature_document, raise_for_signature
from ._stream import DONE_EVENT

if TYPE_CHECKING:  # pragma: no cover
    from ..attestation.document import AttestationReport

logger = logging.getLogger("enclaved.client")

#: ``True``: signature, address and both hashes; ``"address"``: the address
#: only; ``False``: no signature check.
SignatureMode = bool | Literal["address"]

#: Default lifetime of a cached attestation, in seconds.
DEFAULT_ATTESTATION_TTL = 300.0
#: ``GET /tee/signature`` may answer 404 for a moment after the stream ends
#: (the server stores the signature as the last byte goes out): tries, and
#: the pause before each retry.
SIGNATURE_ATTEMPTS = 4
SIGNATURE_RETRY_DELAY = 0.25

#: Response headers the transport adds to a verified answer.
HEADER_HARDWARE = "x-enclaved-tee-hardware"
HEADER_ADDRESS = "x-enclaved-signing-address"

_HOP_HEADERS = ("content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive")
#: Headers only this transport may set (an upstream's copies are dropped).
_OWN_HEADERS = (HEADER_HARDWARE, HEADER_ADDRESS)


def load_trust_root(trust_root: str | os.PathLike[str]) -> str:
    """PEM text from a path (``~`` is expanded), or PEM text given directly."""
    text = os.fspath(trust_root)
    if "-----BEGIN" in text:
        return text
    text = os.path.expanduser(text)
    try:
        pem = Path(text).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read trust root {text}: {exc}") from exc
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise ConfigError(f"trust root {text} is not a PEM certificate")
    return pem


def build_policy(policy: Any = None, trust_root: str | os.PathLike[str] | None = None) -> Any:
    """The attestation policy a client uses.

    - neither given: :meth:`Policy.strict` (Intel's root, everything required);
    - ``trust_root`` only: :meth:`Policy.development` for that root (the
      simulated TEE: no Intel collateral, no GPUs - it proves nothing about
      hardware, and says so with a warning every time it is used);
    - ``policy`` (a :class:`Policy`, or a path to a TOML file) and
      ``trust_root``: the policy, with the root added to
      ``allow_development_roots`` and nothing else relaxed.
    """
    from ..attestation.policy import Policy

    if isinstance(policy, (str, os.PathLike)):
        policy = Policy.from_file(os.fspath(policy))
    if trust_root is None:
        return policy if policy is not None else Policy.strict()
    pem = load_trust_root(trust_root)
    if policy is None:
        return Policy.development(pem)
    return dataclasses.replace(policy, allow_development_roots=(*policy.allow_development_roots, pem))


def build_verifier(policy: Any) -> VerifierLike:
    """The attestation verifier for ``policy``.

    Intel collateral comes from Intel PCS when the policy needs it (cached
    in memory by this verifier; never for the development policy); NVIDIA's
    attestation service is asked only when the policy sets ``require_nras``.
    Both are fetched through the getters of the transport that drives the
    verifier: sync for :class:`EnclavedTransport`, async for
    :class:`AsyncEnclavedTransport`.
    """
    from ..attestation import Verifier
    from ..attestation.verifier import online_nras

    return Verifier(policy, nras=online_nras() if policy.require_nras else None)


class _Engine:
    """The sans-IO half both transports share: configuration, cache, judgements."""

    def __init__(
        self,
        *,
        policy: Any,
        trust_root: str | os.PathLike[str] | None,
        verifier: VerifierLike | None,
        attestation_ttl: float,
        verify_signatures: SignatureMode,
        require_e2ee: bool,
        clock: Callable[[], float],
        random: Callable[[int], bytes],
        keypair_factory: Callable[[], KeyPair],
        signature_attempts: int,
        signature_retry_delay: float,
    ) -> None:
        if verifier is None:
            verifier = build_verifier(build_policy(policy, trust_root))
        elif policy is not None or trust_root is not None:
            raise ConfigError("give either verifier= or policy=/trust_root=, not both")
        self.verifier = verifier
        self.cache = AttestationCache(attestation_ttl, clock=clock)
        if verify_signatures not in (True, False, "address"):
            raise ConfigError("verify_signatures must be True, False or 'address'")
        self.verify_signatures = verify_signatures
        _warn_signature_mode(verify_signatures)
        self.require_e2ee = require_e2ee
        self.clock = clock
        self.random = random
        self.keypair_factory = keypair_factory
        self.signature_attempts = max(1, signature_attempts)
        self.signature_retry_delay = signature_retry_delay
        self.last_attestation: AttestedNode | None = None
        self.last_signature: SignatureCheck | None = None

    def plan(self, request: httpx.Request) -> ChatPlan | None:
        return plan_request(request, require_e2ee=self.require_e2ee)

    def cached(self, plan: ChatPlan) -> AttestedNode | None:
        return self.cache.get(plan.cache_key, plan.model)

    def parse_attestation(self, body: bytes) -> AttestationReport:
        return parse_attestation(body, verifier=self.verifier)

    def judge_attestation(
        self, plan: ChatPlan, nonce: bytes, report: AttestationReport, fetched: Any
    ) -> AttestedNode:
        node = judge_attestation(
            report,
            base_url=plan.cache_key,
            model=plan.model,
            nonce=nonce,
            verifier=self.verifier,
            e2ee=plan.e2ee,
            fetched=fetched,
            now=self.clock(),
        )
        self.cache.put(node)
        self.last_attestation = node
        logger.debug("attested %s at %s: %s", plan.model, plan.cache_key, node.describe())
        return node

    def stale(self, exchange: Exchange) -> None:
        self.cache.invalidate(exchange.plan.cache_key, exchange.plan.model, exchange.node.signing_key)
        logger.debug("model key for %s is stale: re-attesting", exchange.plan.model)

    def judge_signature(
        self,
        exchange: Exchange,
        status: int,
        body: bytes,
        *,
        request_id: str,
        response_sha256: str,
    ) -> SignatureCheck:
        if status != 200:
            raise VerificationError(
                f"response signature: GET /tee/signature for {request_id} answered HTTP {status}"
            )
        hashes = self.verify_signatures is True
        result = check_signature_document(
            body,
            request_id=request_id,
            expected_address=exchange.node.signing_address,
            request_sha256=exchange.request_sha256 if hashes else None,
            response_sha256=response_sha256 if hashes else None,
        )
        self.last_signature = result
        if not result.ok:
            # Whatever went wrong, the next request attests afresh.
            self.cache.invalidate(exchange.plan.cache_key, exchange.plan.model, exchange.node.signing_key)
        raise_for_signature(result)
        logger.debug("response %s signed by the attested key", request_id)
        return result

    @staticmethod
    def completion_id(exchange: Exchange, body: bytes | None) -> str:
        """The id the signature is filed under: from the stream, or the JSON body."""
        if exchange.decoder is not None and exchange.decoder.completion_id:
            return exchange.decoder.completion_id
        if body is not None:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            request_id = doc.get("id") if isinstance(doc, dict) else None
            if isinstance(request_id, str):
                return request_id
        raise VerificationError("the response carries no completion id: its signature cannot be fetched")

    def response_headers(self, exchange: Exchange, upstream: httpx.Response, content_type: str) -> list[tuple[str, str]]:
        headers = _upstream_headers(upstream)
        headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
        headers.append(("content-type", content_type))
        headers.append((HEADER_HARDWARE, exchange.node.tee_hardware or "unknown"))
        headers.append((HEADER_ADDRESS, exchange.node.signing_address))
        return headers


def _warn_signature_mode(mode: SignatureMode) -> None:
    """A relaxed signature check is a relaxation like any policy one: say so (one warning).

    Decrypting proves nothing about who wrote a delta - anyone can seal to
    the session key, which travels in a request header - so without the
    full signature check a man in the middle can replace the answer.
    """
    if mode is True:
        return
    from ..attestation.policy import InsecurePolicyWarning

    what = (
        "response signatures are NOT checked"
        if mode is False
        else "response signatures: only the signer is checked, not the hashes of the bytes exchanged"
    )
    text = f"INSECURE client setting: {what} - a man in the middle can replace the answer"
    warnings.warn(text, InsecurePolicyWarning, stacklevel=4)


def _upstream_headers(upstream: httpx.Response) -> list[tuple[str, str]]:
    """The upstream's headers minus hop-by-hop ones and minus ours (it may not set those)."""
    drop = (*_HOP_HEADERS, *_OWN_HEADERS)
    return [(k, v) for k, v in upstream.headers.multi_items() if k.lower() not in drop]


def _error_response(upstream: httpx.Response, body: bytes, *, what: str) -> httpx.Response:
    """An error answer (HTTP 4xx / 5xx) handed on as it is (already read, decoded).

    Any other status but 200 raises: a success status other than 200 (a
    ``203`` with a plaintext completion) or a redirect (followed by a client
    with ``follow_redirects=True`` to a route nothing checks) would
    otherwise reach the caller as an answer that skipped attestation,
    decryption and the signature check.
    """
    status = upstream.status_code
    if not 400 <= status < 600:
        raise APIError(
            f"{what}: the server answered HTTP {status}, which is neither 200 nor an error: refused",
            status=status,
            code="unexpected_status",
        )
    return httpx.Response(status, headers=_upstream_headers(upstream), content=body, extensions=upstream.extensions)


def _passed_through(response: httpx.Response) -> httpx.Response:
    """A response to a request this transport does not check: as it is, minus our headers."""
    for name in _OWN_HEADERS:
        if name in response.headers:
            del response.headers[name]
    return response


def _stale_error(status: int, body: bytes) -> StaleAttestationError:
    return StaleAttestationError(
        "the server still rejects the model key after a fresh attestation",
        status=status,
        code="e2ee_attestation_stale",
        body=body,
    )


class _EngineViews:
    """What both transports show of their engine (the CLI prints it)."""

    _engine: _Engine

    @property
    def last_attestation(self) -> AttestedNode | None:
        """The most recent attestation this transport verified (for display)."""
        return self._engine.last_attestation

    @property
    def last_signature(self) -> SignatureCheck | None:
        """The most recent response signature this transport checked."""
        return self._engine.last_signature

    @property
    def cache(self) -> AttestationCache:
        return self._engine.cache


# --------------------------------------------------------------------------
# sync


class EnclavedTransport(_EngineViews, httpx.BaseTransport):
    """The sync transport. See the module docstring for what it does.

    ``inner`` is the transport that does the network I/O (default
    :class:`httpx.HTTPTransport`). ``policy`` (a :class:`Policy` or a TOML
    path) and ``trust_root`` (a PEM path) choose what an attestation must
    prove (:func:`build_policy`); tests may pass a ready ``verifier``.
    """

    def __init__(
        self,
        inner: httpx.BaseTransport | None = None,
        *,
        policy: Any = None,
        trust_root: str | os.PathLike[str] | None = None,
        verifier: VerifierLike | None = None,
        attestation_ttl: float = DEFAULT_ATTESTATION_TTL,
        verify_signatures: SignatureMode = True,
        require_e2ee: bool = False,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[int], bytes] = os.urandom,
        sleep: Callable[[float], None] = time.sleep,
        keypair_factory: Callable[[], KeyPair] = KeyPair.generate,
        signature_attempts: int = SIGNATURE_ATTEMPTS,
        signature_retry_delay: float = SIGNATURE_RETRY_DELAY,
    ) -> None:
        self._inner = inner if inner is not None else httpx.HTTPTransport()
        self._sleep = sleep
        self._engine = _Engine(
            policy=policy,
            trust_root=trust_root,
            verifier=verifier,
            attestation_ttl=attestation_ttl,
            verify_signatures=verify_signatures,
            require_e2ee=require_e2ee,
            clock=clock,
            random=random,
            keypair_factory=keypair_factory,
            signature_attempts=signature_attempts,
            signature_retry_delay=signature_retry_delay,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        plan = self._engine.plan(request)
        if plan is None:
            return _passed_through(self._inner.handle_request(request))
        for attempt in range(2):
            node = self._engine.cached(plan) if attempt == 0 else None
            if node is None:
                attested = self._attest(plan)
                if isinstance(attested, httpx.Response):
                    return attested  # the attestation route said no: hand its error on
                node = attested
            exchange = Exchange(plan, node, keypair_factory=self._engine.keypair_factory)
            try:
                upstream = self._inner.handle_request(exchange.request)
                if upstream.status_code != 200:
                    body = _read(upstream)
                    exchange.close()
                    if is_stale(upstream.status_code, body):
                        if attempt == 0:
                            self._engine.stale(exchange)
                            continue
                        raise _stale_error(upstream.status_code, body)
                    return _error_response(upstream, body, what="chat completion")
                return self._respond(exchange, upstream)
            except BaseException:
                exchange.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _attest(self, plan: ChatPlan) -> AttestedNode | httpx.Response:
        nonce = new_nonce(self._engine.random)
        upstream = self._inner.handle_request(plan.attestation_request(nonce))
        body = _read(upstream)
        if upstream.status_code != 200:
            return _error_response(upstream, body, what="attestation")
        report = self._engine.parse_attestation(body)
        fetched = fetch_for(self._engine.verifier, report)  # Intel PCS, NRAS: sync getters
        return self._engine.judge_attestation(plan, nonce, report, fetched)

    def _respond(self, exchange: Exchange, upstream: httpx.Response) -> httpx.Response:
        engine = self._engine
        decoder = exchange.decoder
        if decoder is None:
            # A non-streaming TEE answer: read it whole, check it, hand it on.
            body = _read(upstream)
            self._check_signature(exchange, body, sha256_hex(body))
            exchange.close()
            return httpx.Response(
                200, headers=engine.response_headers(exchange, upstream, "application/json"), content=body
            )
        if exchange.plan.wants_stream:
            return httpx.Response(
                200,
                headers=engine.response_headers(exchange, upstream, "text/event-stream"),
                stream=_SyncStream(self, exchange, upstream),
            )
        # A non-streaming E2EE answer: stream underneath, verify, then assemble.
        try:
            for chunk in upstream.iter_bytes():
                for _ in decoder.feed(chunk):
                    pass
            decoder.finish()
        finally:
            upstream.close()
        self._check_signature(exchange, None, decoder.response_sha256)
        body = decoder.completion_body()
        exchange.close()
        return httpx.Response(
            200, headers=engine.response_headers(exchange, upstream, "application/json"), content=body
        )

    def _check_signature(self, exchange: Exchange, answer: bytes | None, response_sha256: str) -> None:
        """Step 5; ``answer`` is the whole JSON answer of a non-streaming TEE call, else ``None``.

        The completion id is looked up only here: with signatures off, an
        answer without ids is fine.
        """
        if not self._engine.verify_signatures:
            return
        request_id = self._engine.completion_id(exchange, answer)
        request = exchange.plan.signature_request(request_id)
        for attempt in range(self._engine.signature_attempts):
            upstream = self._inner.handle_request(request)
            body = _read(upstream)
            if upstream.status_code == 404 and attempt + 1 < self._engine.signature_attempts:
                self._sleep(self._engine.signature_retry_delay * (attempt + 1))
                continue
            break
        self._engine.judge_signature(
            exchange, upstream.status_code, body, request_id=request_id, response_sha256=response_sha256
        )

    def close(self) -> None:
        self._inner.close()


def _read(response: httpx.Response) -> bytes:
    try:
        return response.read()
    finally:
        response.close()


class _SyncStream(httpx.SyncByteStream):
    """The decrypted body of a streaming answer, produced as it arrives."""

    def __init__(self, transport: EnclavedTransport, exchange: Exchange, upstream: httpx.Response) -> None:
        self._transport = transport
        self._exchange: Exchange | None = exchange
        self._upstream = upstream
        self._iterated = False

    def __iter__(self) -> Iterator[bytes]:
        if self._iterated:
            # Read once. (The OpenAI SDK drains a stream again after [DONE];
            # [DONE] is our last event, so there is nothing left to give.)
            return
        self._iterated = True
        exchange = self._exchange
        if exchange is None:
            return
        decoder = exchange.decoder
        assert decoder is not None
        try:
            for chunk in self._upstream.iter_bytes():
                yield from decoder.feed(chunk)
            tail = decoder.finish()
            if tail:
                yield tail
            self._upstream.close()
            exchange.close()  # the key is not needed to check a signature
            self._transport._check_signature(exchange, None, decoder.response_sha256)
            yield DONE_EVENT  # only now: the caller's [DONE] means "verified"
        finally:
            self.close()

    def close(self) -> None:
        if self._exchange is not None:
            self._exchange.close()
            self._exchange = None
        self._upstream.close()


# --------------------------------------------------------------------------
# async: the same steps, awaited


async def _async_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class AsyncEnclavedTransport(_EngineViews, httpx.AsyncBaseTransport):
    """The async twin of :class:`EnclavedTransport`; same arguments, ``sleep`` awaited."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        policy: Any = None,
        trust_root: str | os.PathLike[str] | None = None,
        verifier: VerifierLike | None = None,
        attestation_ttl: float = DEFAULT_ATTESTATION_TTL,
        verify_signatures: SignatureMode = True,
        require_e2ee: bool = False,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[int], bytes] = os.urandom,
        sleep: Callable[[float], Awaitable[None]] = _async_sleep,
        keypair_factory: Callable[[], KeyPair] = KeyPair.generate,
        signature_attempts: int = SIGNATURE_ATTEMPTS,
        signature_retry_delay: float = SIGNATURE_RETRY_DELAY,
    ) -> None:
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._sleep = sleep
        self._engine = _Engine(
            policy=policy,
            trust_root=trust_root,
            verifier=verifier,
            attestation_ttl=attestation_ttl,
            verify_signatures=verify_signatures,
            require_e2ee=require_e2ee,
            clock=clock,
            random=random,
            keypair_factory=keypair_factory,
            signature_attempts=signature_attempts,
            signature_retry_delay=signature_retry_delay,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.ByteStream):
            await request.aread()
        plan = self._engine.plan(request)
        if plan is None:
            return _passed_through(await self._inner.handle_async_request(request))
        for attempt in range(2):
            node = self._engine.cached(plan) if attempt == 0 else None
            if node is None:
                attested = await self._attest(plan)
                if isinstance(attested, httpx.Response):
                    return attested
                node = attested
            exchange = Exchange(plan, node, keypair_factory=self._engine.keypair_factory)
            try:
                upstream = await self._inner.handle_async_request(exchange.request)
                if upstream.status_code != 200:
                    body = await _aread(upstream)
                    exchange.close()
                    if is_stale(upstream.status_code, body):
                        if attempt == 0:
                            self._engine.stale(exchange)
                            continue
                        raise _stale_error(upstream.status_code, body)
                    return _error_response(upstream, body, what="chat completion")
                return await self._respond(exchange, upstream)
            except BaseException:
                exchange.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attest(self, plan: ChatPlan) -> AttestedNode | httpx.Response:
        nonce = new_nonce(self._engine.random)
        upstream = await self._inner.handle_async_request(plan.attestation_request(nonce))
        body = await _aread(upstream)
        if upstream.status_code != 200:
            return _error_response(upstream, body, what="attestation")
        report = self._engine.parse_attestation(body)
        # Intel PCS and NRAS through the verifier's async getters: awaited, so
        # the loop runs other tasks (the proxy's other streams) meanwhile.
        fetched = await afetch_for(self._engine.verifier, report)
        # Judging is CPU only (ECDSA signatures, X.509 chains and CRLs, eight
        # GPU chains, the prompt keys): measured 65 ms for the first production report
        # with 8 GPUs on one core, long enough to delay every other stream's
        # chunks, so it runs on a worker thread, as the server runs the same
        # verifier (server/attestation.py).
        return await asyncio.to_thread(self._engine.judge_attestation, plan, nonce, report, fetched)

    async def _respond(self, exchange: Exchange, upstream: httpx.Response) -> httpx.Response:
        engine = self._engine
        decoder = exchange.decoder
        if decoder is None:
            body = await _aread(upstream)
            await self._check_signature(exchange, body, sha256_hex(body))
            exchange.close()
            return httpx.Response(
                200, headers=engine.response_headers(exchange, upstream, "application/json"), content=body
            )
        if exchange.plan.wants_stream:
            return httpx.Response(
                200,
                headers=engine.response_headers(exchange, upstream, "text/event-stream"),
                stream=_AsyncStream(self, exchange, upstream),
            )
        try:
            async for chunk in upstream.aiter_bytes():
                for _ in decoder.feed(chunk):
                    pass
            decoder.finish()
        finally:
            await upstream.aclose()
        await self._check_signature(exchange, None, decoder.response_sha256)
        body = decoder.completion_body()
        exchange.close()
        return httpx.Response(
            200, headers=engine.response_headers(exchange, upstream, "application/json"), content=body
        )

    async def _check_signature(self, exchange: Exchange, answer: bytes | None, response_sha256: str) -> None:
        if not self._engine.verify_signatures:
            return
        request_id = self._engine.completion_id(exchange, answer)
        request = exchange.plan.signature_request(request_id)
        for attempt in range(self._engine.signature_attempts):
            upstream = await self._inner.handle_async_request(request)
            body = await _aread(upstream)
            if upstream.status_code == 404 and attempt + 1 < self._engine.signature_attempts:
                await self._sleep(self._engine.signature_retry_delay * (attempt + 1))
                continue
            break
        self._engine.judge_signature(
            exchange, upstream.status_code, body, request_id=request_id, response_sha256=response_sha256
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _aread(response: httpx.Response) -> bytes:
    try:
        return await response.aread()
    finally:
        await response.aclose()


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, transport: AsyncEnclavedTransport, exchange: Exchange, upstream: httpx.Response) -> None:
        self._transport = transport
        self._exchange: Exchange | None = exchange
        self._upstream = upstream
        self._iterated = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._iterated:
            # Read once. (The OpenAI SDK drains a stream again after [DONE];
            # [DONE] is our last event, so there is nothing left to give.)
            return
        self._iterated = True
        exchange = self._exchange
        if exchange is None:
            return
        decoder = exchange.decoder
        assert decoder is not None
        try:
            async for chunk in self._upstream.aiter_bytes():
                for out in decoder.feed(chunk):
                    yield out
            tail = decoder.finish()
            if tail:
                yield tail
            await self._upstream.aclose()
            exchange.close()
            await self._transport._check_signature(exchange, None, decoder.response_sha256)
            yield DONE_EVENT
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._exchange is not None:
            self._exchange.close()
            self._exchange = None
        await self._upstream.aclose()


__all__ = [
    "DEFAULT_ATTESTATION_TTL",
    "HEADER_ADDRESS",
    "HEADER_HARDWARE",
    "AsyncEnclavedTransport",
    "EnclavedTransport",
    "SignatureMode",
    "build_policy",
    "build_verifier",
    "load_trust_root",
]
