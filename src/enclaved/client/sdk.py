"""The OpenAI drop-in: the official SDK, over an attesting, encrypting transport.

>>> import enclaved
>>> client = enclaved.OpenAI(  # doctest: +SKIP
...     base_url="http://127.0.0.1:8000/v1",
...     api_key="sk-...",
...     trust_root="data/dev-root-ca.pem",   # only for a simulated (development) TEE
... )
>>> reply = client.chat.completions.create(  # doctest: +SKIP
...     model="e2ee-smollm2-135m",
...     messages=[{"role": "user", "content": "Hello"}],
... )

:func:`OpenAI` and :func:`AsyncOpenAI` return the official
``openai.OpenAI`` / ``openai.AsyncOpenAI`` objects - every method, type and
error of the SDK is unchanged - with ``http_client`` set to an httpx client
whose transport is :class:`~enclaved.client.transport.EnclavedTransport`
(or its async twin). ``e2ee-*`` models are attested, encrypted, decrypted
and signature-checked; ``tee-*`` models attested and signature-checked;
other models pass through untouched.

Errors: the SDK's own errors for HTTP error answers; enclaved's
(:class:`~enclaved.errors.VerificationError`, :class:`~enclaved.errors.PolicyError`,
:class:`~enclaved.errors.DecryptionError`...) when a check fails. Those are
not connection errors, so the SDK neither retries nor wraps them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from .transport import (
    DEFAULT_ATTESTATION_TTL,
    AsyncEnclavedTransport,
    EnclavedTransport,
    SignatureMode,
)

if TYPE_CHECKING:  # pragma: no cover
    import openai

#: Where ``base_url`` comes from when none is given: ``$ENCLAVED_BASE_URL``,
#: else a local enclaved server.
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


def default_base_url() -> str:
    return os.environ.get("ENCLAVED_BASE_URL") or DEFAULT_BASE_URL


def OpenAI(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    policy: Any = None,
    trust_root: str | os.PathLike[str] | None = None,
    attestation_ttl: float = DEFAULT_ATTESTATION_TTL,
    verify_signatures: SignatureMode = True,
    require_stream_binding: bool = False,
    aci: str | None = None,
    transport: httpx.BaseTransport | None = None,
    verifier: Any = None,
    **openai_kwargs: Any,
) -> openai.OpenAI:
    """An ``openai.OpenAI`` that verifies the enclave and encrypts end to end.

    ``policy`` is an :class:`enclaved.attestation.Policy` or a path to a
    policy TOML file (default: strict). ``trust_root`` is a PEM file to trust
    besides Intel's root - the development root of a simulated TEE
    (``<data_dir>/dev-root-ca.pem``); it proves nothing about hardware.
    ``attestation_ttl`` is how long a verified attestation is reused
    (seconds). ``verify_signatures``: ``True`` (address and hashes),
    ``"address"`` (address only) or ``False``. ``require_stream_binding``:
    refuse an ``e2ee-*`` answer whose node did not bind its response key to
    the request (so that no byte is shown before it is authenticated; the
    production service does not send the binding yet), and any ``tee-*``
    stream. ``aci``: the ``aci/1`` revision the service speaks (``"current"``
    or ``"rev-a"``, never guessed): the service's keyset is established from
    its ``/aci/attestation`` report, bound to the node attested, and every
    answer's signed receipt is checked over the exact bytes exchanged
    (:func:`last_receipt`); ``None`` (default): no ACI checks.
    ``transport`` is the inner transport that does the network I/O (default
    :class:`httpx.HTTPTransport`); ``verifier`` replaces the attestation
    verifier altogether (tests; exclusive with ``policy`` / ``trust_root``). ``api_key`` defaults to
    ``$ENCLAVED_API_KEY``, then ``$OPENAI_API_KEY`` (the SDK needs one; a
    server without keys accepts any). Other keyword arguments go to
    ``openai.OpenAI``; ``timeout`` also configures the httpx client.
    """
    import openai

    enclaved = EnclavedTransport(
        transport,
        policy=policy,
        trust_root=trust_root,
        attestation_ttl=attestation_ttl,
        verify_signatures=verify_signatures,
        require_stream_binding=require_stream_binding,
        aci=aci,
        verifier=verifier,
    )
    return openai.OpenAI(
        **_sdk_arguments(httpx.Client, enclaved, base_url, api_key, openai_kwargs),
        **openai_kwargs,
    )


def AsyncOpenAI(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    policy: Any = None,
    trust_root: str | os.PathLike[str] | None = None,
    attestation_ttl: float = DEFAULT_ATTESTATION_TTL,
    verify_signatures: SignatureMode = True,
    require_stream_binding: bool = False,
    aci: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    verifier: Any = None,
    **openai_kwargs: Any,
) -> openai.AsyncOpenAI:
    """The async twin of :func:`OpenAI`: an ``openai.AsyncOpenAI``."""
    import openai

    enclaved = AsyncEnclavedTransport(
        transport,
        policy=policy,
        trust_root=trust_root,
        attestation_ttl=attestation_ttl,
        verify_signatures=verify_signatures,
        require_stream_binding=require_stream_binding,
        aci=aci,
        verifier=verifier,
    )
    return openai.AsyncOpenAI(
        **_sdk_arguments(httpx.AsyncClient, enclaved, base_url, api_key, openai_kwargs),
        **openai_kwargs,
    )


def _sdk_arguments(
    client_class: Callable[..., httpx.Client | httpx.AsyncClient],
    transport: EnclavedTransport | AsyncEnclavedTransport,
    base_url: str | None,
    api_key: str | None,
    openai_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """What both builders give the SDK besides ``openai_kwargs``: an httpx client over ``transport``, the URL, the key.

    ``openai_kwargs`` is read (its ``timeout``), not merged: the builders pass it
    on beside these, so a caller's ``http_client=`` still fails loudly.
    """
    http_client = client_class(
        transport=transport,
        timeout=openai_kwargs.get("timeout", httpx.Timeout(600.0, connect=10.0)),
        follow_redirects=False,
    )
    return {
        "base_url": base_url or default_base_url(),
        "api_key": _api_key(api_key),
        # The SDK accepts an httpx client (openai 1.x types it so; 2.x+ types
        # httpx2 but still takes httpx at run time).
        "http_client": http_client,
    }


def _api_key(api_key: str | None) -> str:
    return (
        api_key or os.environ.get("ENCLAVED_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
    )


def transport_of(client: Any) -> EnclavedTransport | AsyncEnclavedTransport:
    """The enclaved transport under an SDK client, an httpx client, or itself."""
    if isinstance(client, (EnclavedTransport, AsyncEnclavedTransport)):
        return client
    http = getattr(client, "_client", client)  # openai.OpenAI keeps its httpx client there
    transport = getattr(http, "_transport", None)
    if isinstance(transport, (EnclavedTransport, AsyncEnclavedTransport)):
        return transport
    raise TypeError("not a client made by enclaved.OpenAI / enclaved.AsyncOpenAI")


def last_attestation(client: Any) -> Any:
    """The last :class:`~enclaved.client.AttestedNode` the client verified, or ``None``.

    ``node.describe()`` gives ``"<tee_hardware>, <signing_address>"``;
    ``node.verdict.table()`` every check.
    """
    return transport_of(client).last_attestation


def last_signature(client: Any) -> Any:
    """The last :class:`~enclaved.client.SignatureCheck` the client made, or ``None``."""
    return transport_of(client).last_signature


def last_receipt(client: Any) -> Any:
    """The last ``aci/1`` :class:`~enclaved.client.ReceiptCheck` the client made
    (``aci=``), or ``None``: ``.receipt`` is the signed document to keep,
    ``.verdict.table()`` every row."""
    return transport_of(client).last_receipt


def last_keyset(client: Any) -> Any:
    """The last ``aci/1`` :class:`~enclaved.client.EstablishedKeyset` (``aci=``), or ``None``."""
    return transport_of(client).last_keyset


__all__ = [
    "DEFAULT_BASE_URL",
    "AsyncOpenAI",
    "OpenAI",
    "default_base_url",
    "last_attestation",
    "last_keyset",
    "last_receipt",
    "last_signature",
    "transport_of",
]
