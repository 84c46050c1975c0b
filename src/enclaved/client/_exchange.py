"""One chat request, rewritten for a verified node. Sans-IO.

:func:`plan_request` decides whether an outgoing request is a chat
completion for a TEE model (``tee-*``: attest and check the signature) or
an E2EE model (``e2ee-*``: also encrypt), or something to pass through.

An :class:`Exchange` is one attempt at one such request against one
:class:`~._attest.AttestedNode`. For E2EE it:

1. makes a fresh session :class:`~enclaved.crypto.KeyPair` (memory only);
2. seals the content of every ``user``, ``system`` and ``developer``
   message (a string, or each text part) to the attested key, a fresh
   ephemeral key each;
3. forces ``stream: true`` (E2EE requires it; a non-streaming caller gets
   the answer assembled from the decrypted stream);
4. adds the three ``X-Venice-TEE-*`` headers;
5. serializes the body once and remembers its sha256 - the bytes the
   response signature must cover.

:meth:`Exchange.close` drops the session key; the transport calls it as soon
as the response is over, whether it ended well or not.

Refused under E2EE, before anything is sent (:class:`~enclaved.errors.ConfigError`):
messages the protocol has no encryption for (``tool`` and ``function``
roles, image/audio/file parts), ``tools`` / ``functions``, and
a request that already carries E2EE headers. Assistant history is sent as
the caller gave it: the protocol encrypts only user and system content -
except with ``require_e2ee`` (the local proxy, whose callers are chat apps
that resend the whole conversation every turn): then the earlier turns are
folded into the encrypted system message (:func:`fold_history`), as
``enclaved chat`` does, so that no earlier answer leaves the machine in the
clear.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

import httpx

from ..crypto import KeyPair, Opener, Sealer, sha256_hex
from ..crypto.reserve import Reserve
from ..errors import ConfigError
from ..protocol import routes
from ..protocol.errors import CODE_STALE_KEY
from ..protocol.headers import ALGO, CLIENT_KEY, E2EE_HEADERS, ECDSA, MODEL_KEY
from ._aci import aci_query, receipt_path
from ._attest import AttestedNode, attestation_query, signature_query
from ._stream import ResponseDecoder

E2EE_PREFIX = routes.E2EE_MODEL_PREFIX
TEE_PREFIX = routes.TEE_MODEL_PREFIX
CHAT_PATH = routes.CHAT

HEADER_CLIENT_KEY = CLIENT_KEY
HEADER_MODEL_KEY = MODEL_KEY
HEADER_ALGO = ALGO

#: The error code some servers use instead of HTTP 421 for a stale model key.
STALE_CODE = CODE_STALE_KEY

#: ``developer`` is OpenAI's newer name for ``system``; enclaved servers decrypt
#: it too. Sealing it is the fail-closed choice for a server that does not.
_ENCRYPTED_ROLES = ("user", "system", "developer")
_UNENCRYPTABLE_ROLES = ("tool", "function")
_UNSUPPORTED_PARAMS = ("tools", "functions")


@dataclasses.dataclass(frozen=True)
class ChatPlan:
    """A chat-completions request that needs attestation."""

    #: The API root the request was sent to (``.../v1``): where ``/tee/*`` live.
    base_url: httpx.URL
    model: str
    e2ee: bool
    #: Did the caller ask for a stream? (E2EE streams underneath either way.)
    wants_stream: bool
    #: The caller's request (plaintext). Kept only for the request's lifetime.
    original: httpx.Request = dataclasses.field(repr=False)
    body: dict[str, Any] = dataclasses.field(repr=False)
    #: Fold assistant history into the encrypted system message (:func:`fold_history`).
    fold_history: bool = False

    @property
    def cache_key(self) -> str:
        return str(self.base_url)

    def attestation_request(self, nonce: bytes) -> httpx.Request:
        return self._side_request(routes.ATTESTATION, attestation_query(self.model, nonce))

    def signature_request(self, request_id: str) -> httpx.Request:
        return self._side_request(routes.SIGNATURE, signature_query(self.model, request_id))

    def aci_attestation_request(self, nonce: bytes) -> httpx.Request:
        """``GET {base}/aci/attestation?nonce=N``: the service's ``aci/1`` report."""
        return self._side_request(routes.ACI_ATTESTATION, aci_query(nonce))

    def receipt_request(self, receipt_id: str) -> httpx.Request:
        """``GET {base}/aci/receipts/{id}``, with the caller's key (the receipt is bound to it)."""
        return self._side_request(receipt_path(receipt_id))

    def _side_request(self, path: str, query: str = "") -> httpx.Request:
        """``GET {base}{path}?{query}`` with the caller's credentials and timeouts."""
        url = self.base_url.copy_with(path=self.base_url.path + path, query=query.encode())
        return httpx.Request(
            "GET", url, headers=_side_headers(self.original), extensions=_ext(self.original)
        )


def plan_request(request: httpx.Request, *, require_e2ee: bool = False) -> ChatPlan | None:
    """A :class:`ChatPlan` for a TEE / E2EE chat request; ``None`` to pass it through.

    A POST with a JSON body naming a TEE / E2EE model on any *other* route
    raises :class:`ConfigError`: nothing there is attested or encrypted.

    With ``require_e2ee`` a chat request for any other model raises
    :class:`ConfigError` instead of being passed through (the local proxy:
    plaintext must not leave the machine).
    """
    if request.method != "POST":
        return None
    if not request.url.path.rstrip("/").endswith(CHAT_PATH):
        _refuse_other_routes(request)
        return None
    content = request.read()
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(model, str):
        if require_e2ee:
            raise ConfigError("chat request without a model: refusing to send it unencrypted")
        return None
    e2ee = model.startswith(E2EE_PREFIX)
    if require_e2ee and not e2ee:
        raise ConfigError(
            f"model {model!r} is not an E2EE model (e2ee-*): refusing to send the prompt unencrypted"
        )
    if not e2ee and not model.startswith(TEE_PREFIX):
        return None
    path = request.url.path.rstrip("/")
    base = request.url.copy_with(path=path[: -len(CHAT_PATH)], query=None, fragment=None)
    return ChatPlan(
        base_url=base,
        model=model,
        e2ee=e2ee,
        wants_stream=body.get("stream") is True,
        original=request,
        body=body,
        fold_history=require_e2ee,
    )


def _refuse_other_routes(request: httpx.Request) -> None:
    """A prompt for a TEE / E2EE model on another route (legacy completions,
    responses, embeddings...) would go out unattested and in plaintext: refuse it.

    Only JSON bodies are looked at; the protocol has nothing but chat for
    these models.
    """
    if "json" not in request.headers.get("content-type", ""):
        return
    try:
        body = json.loads(request.read())
    except ValueError:
        return
    model = body.get("model") if isinstance(body, dict) else None
    if isinstance(model, str) and model.startswith((E2EE_PREFIX, TEE_PREFIX)):
        raise ConfigError(
            f"{request.url.path}: only chat completions are attested and encrypted by enclaved; "
            f"refusing to send a request for {model!r} there unverified and in plaintext"
        )


def _side_headers(original: httpx.Request) -> dict[str, str]:
    """Headers for ``/tee/*`` requests: the caller's credentials, nothing else."""
    headers = {"accept": "application/json", "accept-encoding": "identity"}
    for name in ("authorization", "user-agent"):
        if name in original.headers:
            headers[name] = original.headers[name]
    return headers


def _ext(original: httpx.Request) -> dict[str, Any]:
    """Carry the caller's timeouts over to our own requests."""
    return {k: v for k, v in original.extensions.items() if k == "timeout"}


def is_stale(status: int, body: bytes | None) -> bool:
    """Does this answer say the pinned model key is no longer valid? (421, or the error code.)"""
    if status == 421:
        return True
    if status < 400 or not body:
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    err = doc.get("error") if isinstance(doc, dict) else None
    return isinstance(err, dict) and err.get("code") == STALE_CODE


class Exchange:
    """One attempt at one chat request against one attested node."""

    def __init__(
        self,
        plan: ChatPlan,
        node: AttestedNode,
        *,
        keypair_factory: Callable[[], KeyPair] = KeyPair.generate,
    ) -> None:
        self.plan = plan
        self.node = node
        self._keypair: KeyPair | None = None
        headers = httpx.Headers(plan.original.headers)
        for name in ("content-length", "transfer-encoding"):
            headers.pop(name, None)
        # The signature covers the body as the server sent it: ask for it uncompressed.
        headers["accept-encoding"] = "identity"
        if plan.e2ee:
            if any(name in headers for name in E2EE_HEADERS):
                raise ConfigError(
                    "the request already carries E2EE headers: let enclaved encrypt it"
                )
            assert node.signing_key is not None and node.signing_key_text is not None
            for name in _UNSUPPORTED_PARAMS:
                if plan.body.get(name):
                    raise ConfigError(f"{name} are not supported with E2EE")
            # 2-3. Seal the prompt; stream underneath.
            body = dict(plan.body)
            messages = plan.body.get("messages")
            if plan.fold_history:
                messages = fold_history(messages)
            body["messages"] = seal_messages(messages, node.signing_key, sealers=node.sealers)
            body["stream"] = True
            # 1. The session key: in memory, for this request only.
            self._keypair = keypair_factory()
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers["content-type"] = "application/json"
            headers["accept"] = "text/event-stream"
            # 4. The headers, all three.
            headers[HEADER_CLIENT_KEY] = self._keypair.public_key_hex
            headers[HEADER_MODEL_KEY] = node.signing_key_text
            headers[HEADER_ALGO] = ECDSA
            opener: Opener | None = Opener(self._keypair)
        else:
            content = plan.original.read()  # a TEE request goes out byte for byte
            opener = None
        # 5. The exact bytes the signature must cover.
        self.content = content
        self.request_sha256 = sha256_hex(content)
        self.request = httpx.Request(
            plan.original.method,
            plan.original.url,
            headers=headers,
            content=content,
            extensions=plan.original.extensions,
        )
        #: What the answer's headers say of its ``aci/1`` receipt (hints, checked
        #: by the receipt itself): ``X-Receipt-Id`` and ``X-ACI-Keyset-Digest``.
        self.receipt_id: str | None = None
        self.keyset_digest: str | None = None
        #: Reads the response; ``None`` for a non-streaming TEE answer (read whole).
        self.decoder: ResponseDecoder | None = None
        if plan.e2ee or plan.wants_stream:
            self.decoder = ResponseDecoder(opener, assemble=not plan.wants_stream)

    @property
    def holds_key(self) -> bool:
        return self._keypair is not None

    def close(self) -> None:
        """Forget the session key; after a whole answer, make the next prompt's keys. Idempotent."""
        answered = self.decoder is not None and self.decoder.done
        if self.decoder is not None:
            self.decoder.forget_key()
        if answered and self._keypair is not None and self.node.sealers is not None:
            # Now rather than when the next prompt is sealed: off its path to a
            # first token. Not after a failure: a 421 means this node key is gone.
            self.node.sealers.refill()
        self._keypair = None


def seal_messages(
    messages: Any, model_key: bytes, *, sealers: Reserve[Sealer] | None = None
) -> list[Any]:
    """The messages with every user/system content sealed to ``model_key``.

    Each content (or text part) gets a sealer of its own, with a fresh
    ephemeral key: from ``sealers`` (made ahead of time for ``model_key``)
    when given, else made here.
    """
    new_sealer = sealers.take if sealers is not None else functools.partial(Sealer, model_key)
    if not isinstance(messages, list):
        raise ConfigError("messages must be a list")
    out: list[Any] = []
    for message in messages:
        if not isinstance(message, dict):
            raise ConfigError("each message must be an object")
        role = message.get("role")
        if role in _UNENCRYPTABLE_ROLES:
            raise ConfigError(f"messages with role {role!r} are not supported with E2EE")
        if role not in _ENCRYPTED_ROLES:
            if message.get("tool_calls") or message.get("function_call"):
                raise ConfigError("tool calls are not supported with E2EE")
            out.append(message)
            continue
        sealed = dict(message)
        sealed["content"] = _seal_content(message.get("content"), new_sealer)
        out.append(sealed)
    return out


def fold_history(messages: Any) -> Any:
    """The messages with every earlier turn moved into one system message.

    ``[system, user, assistant, ..., user]`` becomes ``[system, user]``: the
    system message holds the original system text, then "The conversation
    so far:" and one ``User: ...`` / ``Assistant: ...`` line per earlier
    message (the format of ``enclaved chat``); the last user message and
    what follows it stay as they are. Both are encrypted, so no earlier
    answer is sent in plaintext. Messages without assistant content are
    returned unchanged. An assistant message after the last user message
    (a "prefill") cannot be folded and raises :class:`ConfigError`.
    """
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return messages  # seal_messages says what is wrong
    if not any(m.get("role") == "assistant" and m.get("content") for m in messages):
        return messages
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    cut = users[-1] if users else len(messages)
    head, tail = messages[:cut], messages[cut:]
    if any(m.get("role") == "assistant" and m.get("content") for m in tail):
        raise ConfigError(
            "an assistant message after the last user message cannot be encrypted (E2EE encrypts "
            "only user and system content)"
        )
    system: list[str] = []
    transcript: list[str] = []
    for message in head:
        role = message.get("role")
        if (
            role in _UNENCRYPTABLE_ROLES
            or message.get("tool_calls")
            or message.get("function_call")
        ):
            raise ConfigError(
                f"messages with role {role!r} or tool calls are not supported with E2EE"
            )
        text = _text_of(message.get("content"))
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            transcript.append(f"User: {text}")
        elif role == "assistant":
            transcript.append(f"Assistant: {text}")
        else:
            raise ConfigError(f"messages with role {role!r} are not supported with E2EE")
    if transcript:
        system.append("The conversation so far:\n" + "\n".join(transcript))
    return [{"role": "system", "content": "\n\n".join(system)}, *tail]


def _text_of(content: Any) -> str:
    """A message's text: the string, or its text parts joined."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ConfigError(f"{kind} content parts are not supported with E2EE")
        return "\n".join(texts)
    raise ConfigError("message content must be a string or a list of text parts")


def _seal_content(content: Any, new_sealer: Callable[[], Sealer]) -> Any:
    if isinstance(content, str):
        return new_sealer().seal(content)
    if isinstance(content, list):
        parts = []
        for part in content:
            if (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                parts.append({**part, "text": new_sealer().seal(part["text"])})
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ConfigError(f"{kind} content parts are not supported with E2EE")
        return parts
    if content is None:
        raise ConfigError("a user or system message without content cannot be encrypted")
    raise ConfigError("message content must be a string or a list of text parts")


__all__ = [
    "CHAT_PATH",
    "E2EE_HEADERS",
    "E2EE_PREFIX",
    "HEADER_ALGO",
    "HEADER_CLIENT_KEY",
    "HEADER_MODEL_KEY",
    "STALE_CODE",
    "TEE_PREFIX",
    "ChatPlan",
    "Exchange",
    "fold_history",
    "is_stale",
    "plan_request",
    "seal_messages",
]
