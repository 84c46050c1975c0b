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
4. **Check the response key's binding** (``e2ee-*``, before any byte of
   the body is read): with the ``X-Enclaved-E2EE-Response-Key`` and
   ``X-Enclaved-E2EE-Binding-Signature`` headers (docs/server.md,
   "Authenticated E2EE streams") the attested key must have signed our
   request hash, our session key and that response key, else
   :class:`~enclaved.errors.VerificationError`; from then on every envelope
   must be under that key (and new), else ``VerificationError`` before it
   is shown. Without the headers the stream is authenticated by step 5
   only - or refused, with ``require_stream_binding``.
   **Decrypt** the stream event by event as it arrives, failing closed
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

With ``aci="current"`` (or ``"rev-a"``) two more (:mod:`._aci`): before
step 2, the service's ``aci/1`` keyset is established from its
``/aci/attestation`` report and bound to the node attested in step 1; after
step 5, the answer's signed receipt is checked against that keyset and the
exact bytes exchanged. Either failing raises
:class:`~enclaved.errors.VerificationError`.

Streaming and signatures: a streaming caller receives each decrypted event
as soon as it arrives, and the signature can only be checked after the last
one; a failed one raises :class:`~enclaved.errors.VerificationError` at the
end, *instead of* the final ``data: [DONE]``. With the binding of step 4
every event shown was authenticated as the node's before it was shown
(``last_signature.stream_authenticated``); without it (a node without the
extension, ``e2ee_key_per_chunk``, ``tee-*`` models) a stream whose
signature fails has already shown its text: callers that must not show
unverified text set ``require_stream_binding=True``, ask for a
non-streaming completion (verified before it is returned) or wait for the
end of the stream. ``verify_signatures=False`` skips step 5;
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

The steps are written once, in :class:`~._core.ClientCore` (sans-IO: a
generator that yields the I/O it needs and is sent the results; its
docstring says why this shape). The two transports below are its drivers:
each performs those operations, sync or awaited, and decrypts a relayed
stream chunk by chunk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from ..crypto import KeyPair
from ..errors import ConfigError
from ._aci import EstablishedKeyset, ReceiptCheck
from ._attest import AttestationCache, AttestedNode, VerifierLike, afetch_for, fetch_for
from ._core import (
    HEADER_ADDRESS,
    HEADER_HARDWARE,
    ClientCore,
    Close,
    Drain,
    Fetch,
    Judge,
    Op,
    Read,
    Relay,
    RelayState,
    Send,
    SignatureMode,
    Sleep,
    Steps,
    T,
)
from ._signature import SignatureCheck
from ._stream import DONE_EVENT

#: Default lifetime of a cached attestation, in seconds.
DEFAULT_ATTESTATION_TTL = 300.0
#: ``GET /tee/signature`` may answer 404 for a moment after the stream ends
#: (the server stores the signature as the last byte goes out): tries, and
#: the pause before each retry.
SIGNATURE_ATTEMPTS = 4
SIGNATURE_RETRY_DELAY = 0.25


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
    return dataclasses.replace(
        policy, allow_development_roots=(*policy.allow_development_roots, pem)
    )


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


def _verifier_for(
    policy: Any, trust_root: str | os.PathLike[str] | None, verifier: VerifierLike | None
) -> VerifierLike:
    if verifier is None:
        return build_verifier(build_policy(policy, trust_root))
    if policy is not None or trust_root is not None:
        raise ConfigError("give either verifier= or policy=/trust_root=, not both")
    return verifier


class _CoreViews:
    """What both transports show of their core (the CLI prints it)."""

    _core: ClientCore

    @property
    def last_attestation(self) -> AttestedNode | None:
        """The most recent attestation this transport verified (for display)."""
        return self._core.last_attestation

    @property
    def last_signature(self) -> SignatureCheck | None:
        """The most recent response signature this transport checked."""
        return self._core.last_signature

    @property
    def last_keyset(self) -> EstablishedKeyset | None:
        """The most recent ``aci/1`` keyset this transport established (``aci=``)."""
        return self._core.last_keyset

    @property
    def last_receipt(self) -> ReceiptCheck | None:
        """The most recent ``aci/1`` receipt this transport checked (``aci=``)."""
        return self._core.last_receipt

    @property
    def cache(self) -> AttestationCache:
        return self._core.cache


# --------------------------------------------------------------------------
# sync driver


class EnclavedTransport(_CoreViews, httpx.BaseTransport):
    """The sync transport. See the module docstring for what it does.

    ``inner`` is the transport that does the network I/O (default
    :class:`httpx.HTTPTransport`). ``policy`` (a :class:`Policy` or a TOML
    path) and ``trust_root`` (a PEM path) choose what an attestation must
    prove (:func:`build_policy`); tests may pass a ready ``verifier``.
    ``aci`` (``"current"`` or ``"rev-a"``: the revision the service speaks)
    also establishes the service's ``aci/1`` keyset and checks every
    answer's receipt (:mod:`._aci`); ``None`` (the default) does neither.
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
        require_stream_binding: bool = False,
        aci: str | None = None,
    ) -> None:
        self._inner = inner if inner is not None else httpx.HTTPTransport()
        self._sleep = sleep
        self._core = ClientCore(
            verifier=_verifier_for(policy, trust_root, verifier),
            attestation_ttl=attestation_ttl,
            verify_signatures=verify_signatures,
            require_e2ee=require_e2ee,
            clock=clock,
            random=random,
            keypair_factory=keypair_factory,
            signature_attempts=signature_attempts,
            signature_retry_delay=signature_retry_delay,
            require_stream_binding=require_stream_binding,
            aci=aci,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._run(self._core.handle(request))

    def _run(self, steps: Steps[T]) -> T:
        """Perform each operation ``steps`` yields; hand its result (or its exception) back."""
        advance: Callable[[Any], Op] = steps.send
        result: Any = None
        while True:
            try:
                op = advance(result)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]  # Steps[T] returns a T
            try:
                result, advance = self._perform(op), steps.send
            except BaseException as exc:  # noqa: BLE001 - thrown into the core, where it asked
                result, advance = exc, steps.throw

    def _perform(self, op: Op) -> Any:
        if isinstance(op, Send):
            return self._inner.handle_request(op.request)
        if isinstance(op, Read):
            try:
                return op.response.read()
            finally:
                op.response.close()
        if isinstance(op, Close):
            return op.response.close()
        if isinstance(op, Sleep):
            return self._sleep(op.seconds)
        if isinstance(op, Fetch):
            return fetch_for(self._core.verifier, op.report)  # Intel PCS, NRAS: sync getters
        if isinstance(op, Judge):
            return op.work()
        if isinstance(op, Drain):
            try:
                for chunk in op.response.iter_bytes():
                    for _ in op.decoder.feed(chunk):
                        pass
                return op.decoder.finish()
            finally:
                op.response.close()
        assert isinstance(op, Relay)
        return _SyncStream(self, op.exchange, op.response)

    def close(self) -> None:
        self._inner.close()


class _SyncStream(RelayState, httpx.SyncByteStream):
    """The decrypted body of a streaming answer, produced as it arrives."""

    def __init__(
        self, transport: EnclavedTransport, exchange: Any, upstream: httpx.Response
    ) -> None:
        super().__init__(exchange, upstream)
        self._transport = transport

    def __iter__(self) -> Iterator[bytes]:
        begun = self._begin()
        if begun is None:
            return
        exchange, decoder = begun
        try:
            for chunk in self._upstream.iter_bytes():
                yield from decoder.feed(chunk)
            tail = decoder.finish()
            if tail:
                yield tail
            self._transport._run(self._transport._core.end_of_stream(exchange, self._upstream))
            yield DONE_EVENT  # only now: the caller's [DONE] means "verified"
        finally:
            self.close()

    def close(self) -> None:
        self._forget()
        self._upstream.close()


# --------------------------------------------------------------------------
# async driver: the same operations, awaited


async def _async_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class AsyncEnclavedTransport(_CoreViews, httpx.AsyncBaseTransport):
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
        require_stream_binding: bool = False,
        aci: str | None = None,
    ) -> None:
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._sleep = sleep
        self._core = ClientCore(
            verifier=_verifier_for(policy, trust_root, verifier),
            attestation_ttl=attestation_ttl,
            verify_signatures=verify_signatures,
            require_e2ee=require_e2ee,
            clock=clock,
            random=random,
            keypair_factory=keypair_factory,
            signature_attempts=signature_attempts,
            signature_retry_delay=signature_retry_delay,
            require_stream_binding=require_stream_binding,
            aci=aci,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.ByteStream):
            await request.aread()  # the core reads request.content
        return await self._run(self._core.handle(request))

    async def _run(self, steps: Steps[T]) -> T:
        """:meth:`EnclavedTransport._run`, each operation awaited."""
        advance: Callable[[Any], Op] = steps.send
        result: Any = None
        while True:
            try:
                op = advance(result)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]  # Steps[T] returns a T
            try:
                result, advance = await self._perform(op), steps.send
            except BaseException as exc:  # noqa: BLE001 - thrown into the core, where it asked
                result, advance = exc, steps.throw

    async def _perform(self, op: Op) -> Any:
        if isinstance(op, Send):
            return await self._inner.handle_async_request(op.request)
        if isinstance(op, Read):
            try:
                return await op.response.aread()
            finally:
                await op.response.aclose()
        if isinstance(op, Close):
            return await op.response.aclose()
        if isinstance(op, Sleep):
            return await self._sleep(op.seconds)
        if isinstance(op, Fetch):
            # The verifier's async getters: the loop runs other tasks (the
            # proxy's other streams) while Intel PCS and NRAS answer.
            return await afetch_for(self._core.verifier, op.report)
        if isinstance(op, Judge):
            return await asyncio.to_thread(op.work)  # CPU-bound: off the loop (see Judge)
        if isinstance(op, Drain):
            try:
                async for chunk in op.response.aiter_bytes():
                    for _ in op.decoder.feed(chunk):
                        pass
                return op.decoder.finish()
            finally:
                await op.response.aclose()
        assert isinstance(op, Relay)
        return _AsyncStream(self, op.exchange, op.response)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _AsyncStream(RelayState, httpx.AsyncByteStream):
    def __init__(
        self, transport: AsyncEnclavedTransport, exchange: Any, upstream: httpx.Response
    ) -> None:
        super().__init__(exchange, upstream)
        self._transport = transport

    async def __aiter__(self) -> AsyncIterator[bytes]:
        begun = self._begin()
        if begun is None:
            return
        exchange, decoder = begun
        try:
            async for chunk in self._upstream.aiter_bytes():
                for out in decoder.feed(chunk):
                    yield out
            tail = decoder.finish()
            if tail:
                yield tail
            await self._transport._run(
                self._transport._core.end_of_stream(exchange, self._upstream)
            )
            yield DONE_EVENT
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self._forget()
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
