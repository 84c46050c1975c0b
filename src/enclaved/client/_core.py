"""The client's sans-IO core: everything both transports do, minus the I/O.

:class:`ClientCore` holds the configuration, the attestation cache and the
judgements (:mod:`._attest`, :mod:`._exchange`, :mod:`._signature`), and
walks one request through the steps of :mod:`.transport`'s docstring as a
generator. Where a step needs the outside world the generator *yields* an
operation - :class:`Send` this request, :class:`Read` this body,
:class:`Sleep`, :class:`Fetch` what the verifier needs from Intel PCS and
NRAS, :class:`Judge` (CPU-bound work), :class:`Drain` or :class:`Relay` a
stream, :class:`Close` a response - and its driver sends back the result,
or throws the exception the I/O raised in at the same point. The two
drivers, :class:`~.transport.EnclavedTransport` and
:class:`~.transport.AsyncEnclavedTransport`, do nothing else: one with an
``httpx.BaseTransport`` and plain calls, the other with an
``httpx.AsyncBaseTransport``, awaits, the verifier's async getters and a
worker thread for the judgements, so that its loop never blocks.

Why a generator, not a second source generated from the first (httpcore's
unasync): the retry-once on 421, the signature retries and the order in
which keys are forgotten are written once and read once, with no build step
and no generated file to keep in step. The cost is one generator step per
operation - a handful per request. The per-chunk loops (decrypting a stream
as it arrives) stay in the drivers' byte streams: a chunk goes from the
inner transport to the decoder with no operation in between.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

from ..crypto import KeyPair, sha256_hex
from ..errors import APIError, ConfigError, StaleAttestationError, VerificationError
from ..protocol.headers import (
    ACI_KEYSET_DIGEST,
    BINDING_SIGNATURE,
    CLIENT_KEY,
    RECEIPT_ID,
    RESPONSE_KEY,
    VERIFIED_ADDRESS,
    VERIFIED_HARDWARE,
)
from ._aci import (
    Channel,
    EstablishedKeyset,
    ReceiptCheck,
    check_revision,
    judge_aci_report,
    judge_receipt,
    observed_tls_spki,
    parse_aci_report,
    receipt_from_signature,
)
from ._attest import (
    AttestationCache,
    AttestedNode,
    VerifierLike,
    judge_attestation,
    new_nonce,
    parse_attestation,
)
from ._exchange import ChatPlan, Exchange, is_stale, plan_request
from ._signature import (
    SignatureCheck,
    check_binding,
    check_signature_document,
    raise_for_signature,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..attestation.document import AttestationReport
    from ._stream import ResponseDecoder

logger = logging.getLogger("enclaved.client")

#: ``True``: signature, address and both hashes; ``"address"``: the address
#: only; ``False``: no signature check.
SignatureMode = bool | Literal["address"]

#: Response headers the transport adds to a verified answer.
HEADER_HARDWARE = VERIFIED_HARDWARE
HEADER_ADDRESS = VERIFIED_ADDRESS

_HOP_HEADERS = (
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
)
#: Headers only this transport may set (an upstream's copies are dropped).
_OWN_HEADERS = (HEADER_HARDWARE, HEADER_ADDRESS)


# --------------------------------------------------------------------------
# The operations a driver performs for the core. Each says what it is
# answered with.


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """Send ``request`` through the inner transport -> the ``httpx.Response``, body unread."""

    request: httpx.Request


@dataclasses.dataclass(frozen=True, slots=True)
class Read:
    """Read ``response``'s whole body and close it -> ``bytes``."""

    response: httpx.Response


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    """Close ``response`` -> ``None``."""

    response: httpx.Response


@dataclasses.dataclass(frozen=True, slots=True)
class Sleep:
    """Pause -> ``None``."""

    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class Fetch:
    """What the verifier needs from the network for ``report`` (Intel PCS, NRAS) -> its answer.

    The sync driver uses the verifier's sync getters
    (:func:`~._attest.fetch_for`), the async one its async getters
    (:func:`~._attest.afetch_for`).
    """

    report: AttestationReport


@dataclasses.dataclass(frozen=True, slots=True)
class Judge:
    """Run ``work`` (CPU only) -> its result.

    Verifying a report is ECDSA signatures, X.509 chains and CRLs, eight
    GPU chains, the prompt keys: measured 65 ms for the first production
    report with 8 GPUs on one core, long enough to delay every other
    stream's chunks, so the async driver runs it on a worker thread, as the
    server runs the same verifier (server/attestation.py).
    """

    work: Callable[[], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Drain:
    """Feed every chunk of ``response`` to ``decoder``, then ``decoder.finish()``; close it -> ``None``."""

    response: httpx.Response
    decoder: ResponseDecoder


@dataclasses.dataclass(frozen=True, slots=True)
class Relay:
    """The driver's byte stream that decrypts ``response`` as it arrives -> that stream.

    It ends with :meth:`ClientCore.end_of_stream`, driven like the rest.
    """

    exchange: Exchange
    response: httpx.Response


Op = Send | Read | Close | Sleep | Fetch | Judge | Drain | Relay
T = TypeVar("T")
#: A walk through some steps: yields operations, is sent their results, returns a ``T``.
Steps = Generator[Op, Any, T]


class ClientCore:
    """What both transports share: configuration, cache, judgements, and the steps as generators."""

    def __init__(
        self,
        *,
        verifier: VerifierLike,
        attestation_ttl: float,
        verify_signatures: SignatureMode,
        require_e2ee: bool,
        clock: Callable[[], float],
        random: Callable[[int], bytes],
        keypair_factory: Callable[[], KeyPair],
        signature_attempts: int,
        signature_retry_delay: float,
        require_stream_binding: bool = False,
        aci: str | None = None,
    ) -> None:
        self.verifier = verifier
        self.cache = AttestationCache(attestation_ttl, clock=clock)
        if verify_signatures not in (True, False, "address"):
            raise ConfigError("verify_signatures must be True, False or 'address'")
        self.verify_signatures = verify_signatures
        _warn_signature_mode(verify_signatures)
        self.require_e2ee = require_e2ee
        if require_stream_binding and verify_signatures is not True:
            raise ConfigError(
                "require_stream_binding needs verify_signatures=True: the binding covers the "
                "hash of the exact request bytes"
            )
        self.require_stream_binding = require_stream_binding
        #: The ``aci/1`` revision the service speaks, or ``None``: no keyset, no receipts.
        self.aci = check_revision(aci)
        if self.aci is not None and verify_signatures is not True:
            raise ConfigError(
                "aci needs verify_signatures=True: a receipt is checked over the exact bytes "
                "sent and received"
            )
        #: Established keysets, per API root (a keyset is service-wide, not per model).
        self.keysets: dict[str, EstablishedKeyset] = {}
        self.clock = clock
        self.random = random
        self.keypair_factory = keypair_factory
        self.signature_attempts = max(1, signature_attempts)
        self.signature_retry_delay = signature_retry_delay
        self.last_attestation: AttestedNode | None = None
        self.last_signature: SignatureCheck | None = None
        self.last_keyset: EstablishedKeyset | None = None
        self.last_receipt: ReceiptCheck | None = None

    # -- the steps, as generators (a driver runs them) ------------------------

    def handle(self, request: httpx.Request) -> Steps[httpx.Response]:
        """One request, start to answer: passed through, or attested, sent and checked."""
        plan = self.plan(request)
        if plan is None:
            return _passed_through((yield Send(request)))
        for attempt in range(2):
            node = self.cached(plan) if attempt == 0 else None
            if node is None:
                attested = yield from self.attest(plan)
                if isinstance(attested, httpx.Response):
                    return attested  # the attestation route said no: hand its error on
                node = attested
            if self.aci is not None:
                yield from self.keyset_for(plan, node)
            exchange = Exchange(plan, node, keypair_factory=self.keypair_factory)
            try:
                upstream = yield Send(exchange.request)
                if upstream.status_code != 200:
                    body = yield Read(upstream)
                    exchange.close()
                    if is_stale(upstream.status_code, body):
                        if attempt == 0:
                            self.stale(exchange)
                            continue
                        raise _stale_error(upstream.status_code, body)
                    return _error_response(upstream, body, what="chat completion")
                return (yield from self.respond(exchange, upstream))
            except BaseException:
                exchange.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def attest(self, plan: ChatPlan) -> Steps[AttestedNode | httpx.Response]:
        """Step 1: a fresh nonce, the report, what the network knows, the verdict."""
        nonce = new_nonce(self.random)
        upstream = yield Send(plan.attestation_request(nonce))
        body = yield Read(upstream)
        if upstream.status_code != 200:
            return _error_response(upstream, body, what="attestation")
        report = self.parse_attestation(body)
        fetched = yield Fetch(report)
        node: AttestedNode = yield Judge(
            functools.partial(self.judge_attestation, plan, nonce, report, fetched)
        )
        return node

    def keyset_for(
        self, plan: ChatPlan, node: AttestedNode, *, digest: str | None = None
    ) -> Steps[EstablishedKeyset]:
        """The service's established ``aci/1`` keyset (:mod:`._aci`): the cached
        one while it is unexpired, lists ``node`` and is the one an answer
        names (``digest``, when given); else a new one, established now."""
        known = self.keysets.get(plan.cache_key)
        if (
            known is not None
            and not known.expired(self.wall_clock())
            and known.lists(node)
            and digest in (None, known.digest)
        ):
            return known
        established = yield from self.establish(plan, node)
        if digest is not None and digest != established.digest:
            raise VerificationError(
                f"aci/1: the answer names keyset {digest}, the service's verified report "
                f"{established.digest}"
            )
        return established

    def establish(self, plan: ChatPlan, node: AttestedNode) -> Steps[EstablishedKeyset]:
        """§9.1: a fresh nonce, the ``aci/1`` report, what the network knows, the verdict."""
        assert self.aci is not None
        self.keysets.pop(plan.cache_key, None)
        nonce = new_nonce(self.random)
        upstream = yield Send(plan.aci_attestation_request(nonce))
        channel = Channel(observed_tls_spki(upstream), plan.base_url.host)  # before Read closes it
        body = yield Read(upstream)
        if upstream.status_code != 200:
            raise VerificationError(
                f"aci/1: GET /aci/attestation answered HTTP {upstream.status_code}: "
                "no keyset to check receipts against"
            )
        policy = getattr(self.verifier, "policy", None)
        roots = policy.aci_kms_roots if policy is not None else frozenset()
        parsed = parse_aci_report(body, self.aci, self.wall_clock(), roots)
        fetched = yield Fetch(parsed.report)
        established: EstablishedKeyset = yield Judge(
            functools.partial(
                judge_aci_report,
                parsed,
                revision=self.aci,
                base_url=plan.cache_key,
                nonce=nonce,
                node=node,
                verifier=self.verifier,
                fetched=fetched,
                channel=channel,
            )
        )
        self.keysets[plan.cache_key] = established
        self.last_keyset = established
        logger.debug("aci/1 keyset %s established for %s", established.digest, plan.cache_key)
        return established

    def respond(self, exchange: Exchange, upstream: httpx.Response) -> Steps[httpx.Response]:
        """Steps 4-6 for a 200 answer."""
        decoder = exchange.decoder
        exchange.receipt_id = upstream.headers.get(RECEIPT_ID)
        exchange.keyset_digest = upstream.headers.get(ACI_KEYSET_DIGEST)
        try:
            self.check_binding(exchange, upstream)
        except VerificationError:
            yield Close(upstream)
            self.cache.invalidate(
                exchange.plan.cache_key, exchange.plan.model, exchange.node.signing_key
            )
            raise
        if decoder is None:
            # A non-streaming TEE answer: read it whole, check it, hand it on.
            body = yield Read(upstream)
            yield from self.check_signature(exchange, body, sha256_hex(body))
            exchange.close()
            return httpx.Response(
                200,
                headers=self.response_headers(exchange, upstream, "application/json"),
                content=body,
            )
        if exchange.plan.wants_stream:
            stream = yield Relay(exchange, upstream)
            return httpx.Response(
                200,
                headers=self.response_headers(exchange, upstream, "text/event-stream"),
                stream=stream,
            )
        # A non-streaming E2EE answer: stream underneath, verify, then assemble.
        yield Drain(upstream, decoder)
        yield from self.check_signature(exchange, None, decoder.response_sha256)
        body = decoder.completion_body()
        exchange.close()
        return httpx.Response(
            200, headers=self.response_headers(exchange, upstream, "application/json"), content=body
        )

    def end_of_stream(self, exchange: Exchange, upstream: httpx.Response) -> Steps[None]:
        """After a relayed stream's last event, before its ``[DONE]``."""
        decoder = exchange.decoder
        assert decoder is not None
        yield Close(upstream)
        exchange.close()  # the key is not needed to check a signature
        yield from self.check_signature(exchange, None, decoder.response_sha256)

    def check_signature(
        self, exchange: Exchange, answer: bytes | None, response_sha256: str
    ) -> Steps[None]:
        """Step 5; ``answer`` is the whole JSON answer of a non-streaming TEE call, else ``None``.

        The completion id is looked up only here: with signatures off, an
        answer without ids is fine.
        """
        if not self.verify_signatures:
            return
        request_id = self.completion_id(exchange, answer)
        status, body = yield from self.fetch_stored(exchange.plan.signature_request(request_id))
        self.judge_signature(
            exchange,
            status,
            body,
            request_id=request_id,
            response_sha256=response_sha256,
        )
        if self.aci is not None:
            yield from self.check_receipt(exchange, body, request_id, response_sha256)

    def fetch_stored(self, request: httpx.Request) -> Steps[tuple[int, bytes]]:
        """A signature or receipt the node stores as the answer's last byte goes
        out: retried briefly while it answers 404. -> (status, body)."""
        for attempt in range(self.signature_attempts):
            upstream = yield Send(request)
            body: bytes = yield Read(upstream)
            if upstream.status_code == 404 and attempt + 1 < self.signature_attempts:
                yield Sleep(self.signature_retry_delay * (attempt + 1))
                continue
            break
        return upstream.status_code, body

    def check_receipt(
        self, exchange: Exchange, signature_body: bytes, request_id: str, response_sha256: str
    ) -> Steps[None]:
        """Step 5b (``aci``): the answer's receipt against the established keyset.

        An enclaved node embeds the receipt in its ``/tee/signature``
        document (no second request); any other service is asked at
        ``/aci/receipts/{X-Receipt-Id}``.
        """
        plan = exchange.plan
        receipt_id = exchange.receipt_id or request_id
        try:
            established = yield from self.keyset_for(
                plan, exchange.node, digest=exchange.keyset_digest
            )
            receipt: Any = receipt_from_signature(signature_body, receipt_id)
            if receipt is None:
                status, receipt = yield from self.fetch_stored(plan.receipt_request(receipt_id))
                if status != 200:
                    raise VerificationError(
                        f"aci/1 receipt: GET /aci/receipts/{receipt_id} answered HTTP {status}"
                    )
            self.last_receipt = judge_receipt(
                established,
                receipt,
                receipt_id=receipt_id,
                request_sha256=exchange.request_sha256,
                response_sha256=response_sha256,
            )
            self.last_receipt.raise_for_status()
        except VerificationError:
            # Whatever went wrong, the next request establishes everything afresh.
            self.keysets.pop(plan.cache_key, None)
            self.cache.invalidate(plan.cache_key, plan.model, exchange.node.signing_key)
            raise
        logger.debug("receipt %s checked against keyset %s", receipt_id, established.digest)

    def wall_clock(self) -> float:
        """Unix seconds, for a keyset's ``not_after``: the verifier's clock (tests inject it)."""
        now = getattr(self.verifier, "now", None)
        return now().timestamp() if callable(now) else time.time()

    # -- judgements (pure) ---------------------------------------------------

    def plan(self, request: httpx.Request) -> ChatPlan | None:
        plan = plan_request(request, require_e2ee=self.require_e2ee)
        if plan is not None and self.require_stream_binding and plan.wants_stream and not plan.e2ee:
            raise ConfigError(
                f"require_stream_binding: a stream of {plan.model!r} (not e2ee-*) has no response "
                "key to bind, so its text could only be checked at its end; ask for an e2ee-* "
                "model or a non-streaming completion"
            )
        return plan

    def check_binding(self, exchange: Exchange, upstream: httpx.Response) -> None:
        """Step 4a, before any byte of an E2EE answer is read: the node's binding
        of its response key to this request (docs/server.md, "Authenticated E2EE
        streams"). Verified, the decoder refuses every chunk under another key.

        Checked only with ``verify_signatures=True`` (the binding covers the
        hash of the exact request bytes, which a gateway allowed by
        ``"address"`` may rewrite). Without the headers - a node without the
        extension, the production service - the answer is only authenticated
        by its signature at the end, unless ``require_stream_binding``.
        """
        decoder = exchange.decoder
        if decoder is None or not exchange.plan.e2ee or self.verify_signatures is not True:
            return
        key = check_binding(
            upstream.headers.get(RESPONSE_KEY),
            upstream.headers.get(BINDING_SIGNATURE),
            request_sha256=exchange.request_sha256,
            client_public_key=exchange.request.headers[CLIENT_KEY],
            expected_address=exchange.node.signing_address,
        )
        if key is not None:
            decoder.pin_response_key(key)
        elif self.require_stream_binding:
            raise VerificationError(
                "require_stream_binding: the node did not bind its response key to this request "
                "(no X-Enclaved-E2EE-Response-Key): refused before reading the answer"
            )

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
        self.cache.invalidate(
            exchange.plan.cache_key, exchange.plan.model, exchange.node.signing_key
        )
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
        decoder = exchange.decoder
        result = dataclasses.replace(
            result, stream_authenticated=decoder is not None and decoder.authenticated
        )
        self.last_signature = result
        if not result.ok:
            # Whatever went wrong, the next request attests afresh.
            self.cache.invalidate(
                exchange.plan.cache_key, exchange.plan.model, exchange.node.signing_key
            )
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
        raise VerificationError(
            "the response carries no completion id: its signature cannot be fetched"
        )

    def response_headers(
        self, exchange: Exchange, upstream: httpx.Response, content_type: str
    ) -> list[tuple[str, str]]:
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
    return httpx.Response(
        status, headers=_upstream_headers(upstream), content=body, extensions=upstream.extensions
    )


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


class RelayState:
    """What both drivers' byte streams keep: the exchange, the upstream, read-once."""

    def __init__(self, exchange: Exchange, upstream: httpx.Response) -> None:
        self._exchange: Exchange | None = exchange
        self._upstream = upstream
        self._iterated = False

    def _begin(self) -> tuple[Exchange, ResponseDecoder] | None:
        """The exchange and its decoder, the first time only.

        Read once: the OpenAI SDK drains a stream again after ``[DONE]``;
        ``[DONE]`` is our last event, so there is nothing left to give.
        """
        if self._iterated or self._exchange is None:
            return None
        self._iterated = True
        decoder = self._exchange.decoder
        assert decoder is not None
        return self._exchange, decoder

    def _forget(self) -> None:
        if self._exchange is not None:
            self._exchange.close()
            self._exchange = None
