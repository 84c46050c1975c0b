"""Reading one chat-completions stream: hash, decrypt, fail closed.

Sans-IO. :class:`ResponseDecoder` is fed the response body exactly as it
came off the network and returns, event by event, what the caller may see:

1. every byte is hashed as received (the response signature covers these
   bytes, ciphertext included);
2. the bytes are split into SSE events (:mod:`enclaved.protocol.sse`);
3. an ``error`` event raises :class:`~enclaved.errors.APIError`;
4. with E2EE, every non-empty ``delta.content`` / ``delta.reasoning_content``
   (/ ``delta.reasoning``) must be an envelope to the session key and is
   replaced by its plaintext. Anything else - plaintext where ciphertext
   belongs, a bad tag, a foreign key, plaintext tool calls or logprobs -
   raises :class:`~enclaved.errors.DecryptionError` ("failed to decrypt")
   before that event reaches the caller; and the fields that stay in the
   clear (``delta.role``, ``choices[].index``, ``finish_reason``, an error's
   ``type``) must hold the values :mod:`enclaved.protocol.clear_fields` allows, else
   :class:`~enclaved.errors.APIError` (code ``invalid_stream``);
   When the node bound the response's ephemeral key to this request
   (:meth:`ResponseDecoder.pin_response_key`, after the transport checked
   the binding's signature), an envelope under any other key, or one seen
   before in this stream, raises :class:`~enclaved.errors.VerificationError`
   before it is opened: a man in the middle can seal text to the session
   key (its public half travels in a request header), not under the key
   the attested node signed;
5. ``data: [DONE]`` is *not* passed on: the transport emits it only after
   the response signature has been checked, so a caller that sees
   ``[DONE]`` saw a verified answer. A stream that ends without it raises
   :class:`~enclaved.errors.NetworkError` (it may be truncated).

For a caller that asked for a non-streaming completion the decoder also
assembles the ``chat.completion`` document from the decrypted deltas.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from ..crypto import Opener, looks_like_envelope
from ..crypto.envelope import IV_LEN, PUB_LEN
from ..errors import APIError, DecryptionError, NetworkError, VerificationError
from ..protocol.assemble import CompletionAssembler
from ..protocol.clear_fields import choice_problem
from ..protocol.errors import ERROR_TYPES
from ..protocol.sse import DONE, DONE_DATA, SSEEvent, SSEParser, event_lines

#: The delta fields that carry model text, and so must be encrypted under E2EE.
TEXT_FIELDS = ("content", "reasoning_content", "reasoning")
#: The terminator the transport emits once the answer is verified.
DONE_EVENT = DONE


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


class ResponseDecoder:
    """One response body: feed bytes in, get caller-ready SSE bytes out.

    ``opener`` is the session key's :class:`~enclaved.crypto.Opener` for an
    E2EE response, ``None`` for a plain TEE one (nothing to decrypt, but the
    same hashing, error and ``[DONE]`` handling). :meth:`forget_key` drops
    it; the transport calls it as soon as the response is over.
    """

    def __init__(self, opener: Opener | None, *, assemble: bool = False) -> None:
        self._opener = opener
        self._e2ee = opener is not None
        self._parser = SSEParser()
        self._sha256 = hashlib.sha256()
        self._done = False
        self._finished = False
        #: The completion id (``id`` of the chunks): the signature's ``request_id``.
        self.completion_id: str | None = None
        self._assembler = CompletionAssembler(keep_empty_reasoning=True) if assemble else None
        #: The signed response key (130 lowercase hex), once pinned.
        self._response_key: str | None = None
        #: The IVs of the envelopes opened so far (a replayed envelope is refused).
        self._ivs: set[str] = set()

    def pin_response_key(self, response_key_hex: str) -> None:
        """Accept only envelopes under this ephemeral key (its binding was checked)."""
        self._response_key = response_key_hex.lower()

    @property
    def authenticated(self) -> bool:
        """Whether every envelope is checked against a signed response key as it arrives."""
        return self._response_key is not None

    # -- feeding --------------------------------------------------------------

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Bytes as received -> SSE bytes for the caller, one item per event.

        The bytes are hashed at once; events are checked (and decrypted) one
        at a time as the result is iterated, so an event that fails never
        holds back the good ones before it - nor is it ever yielded itself.
        Iterate the result to the end before feeding more.
        """
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._sha256.update(chunk)
        events = self._parser.feed(chunk)
        return (out for out in map(self._on_event, events) if out)

    def finish(self) -> bytes:
        """End of the body. Raises unless ``[DONE]`` arrived."""
        self._finished = True
        out = b"".join(self._on_event(event) for event in self._parser.close())
        if not self._done:
            raise NetworkError("the stream ended before [DONE]: the answer may be truncated")
        return out

    @property
    def done(self) -> bool:
        return self._done

    @property
    def response_sha256(self) -> str:
        """sha256 hex of every byte fed so far (the whole body once finished)."""
        return self._sha256.hexdigest()

    def forget_key(self) -> None:
        """Drop the session key (and the AES keys derived from it)."""
        if self._opener is not None:
            self._opener.clear()
        self._opener = None

    # -- the assembled non-streaming answer -------------------------------------

    def completion_body(self) -> bytes:
        """The ``chat.completion`` JSON a non-streaming caller expects."""
        if self._assembler is None or not self._done:
            raise RuntimeError("completion_body() needs assemble=True and a finished stream")
        return json.dumps(self._assembler.document(), ensure_ascii=False).encode("utf-8")

    # -- one event --------------------------------------------------------------

    def _on_event(self, event: SSEEvent) -> bytes:
        if not event.data:
            return b""
        if self._done:
            raise APIError("the server sent data after [DONE]", status=200, code="invalid_stream")
        if event.data.strip() == DONE_DATA.decode():
            self._done = True
            return b""
        try:
            chunk = json.loads(event.data)
        except ValueError:
            raise APIError(
                "the server sent an event that is not JSON", status=200, code="invalid_stream"
            ) from None
        if not isinstance(chunk, dict):
            raise APIError(
                "the server sent an event that is not a JSON object",
                status=200,
                code="invalid_stream",
            )
        if chunk.get("error") or event.event == "error":
            raise _stream_error(chunk, e2ee=self._e2ee)
        if self.completion_id is None and isinstance(chunk.get("id"), str):
            self.completion_id = chunk["id"]
        if self._e2ee:
            self._decrypt_chunk(chunk)
        if self._assembler is not None:
            self._assembler.add(chunk)
            return b""
        if self._e2ee:
            data = json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
        else:
            data = event.data  # untouched: nothing was decrypted
        return event_lines(data)

    def _open(self, envelope: str) -> str:
        """Decrypt one field; on failure raise a DecryptionError that holds no key.

        The opener's own error carries a traceback through
        :meth:`Opener.open`, whose frame holds the opener - and so the
        session key - and the derived AES key. A caller that keeps the
        exception (logs it, stores it) would keep the key alive after the
        response is over. So the error is replaced by a fresh one, raised
        outside the ``except`` block: no ``__context__``, no opener frame.
        """
        assert self._opener is not None
        try:
            return self._opener.open_text(envelope)
        except DecryptionError:
            pass  # dropped here, with its traceback
        raise DecryptionError()

    def _decrypt_chunk(self, chunk: dict[str, Any]) -> None:
        choices = chunk.get("choices")
        if choices is None:
            return
        if not isinstance(choices, list):
            raise DecryptionError()
        for choice in choices:
            if not isinstance(choice, dict):
                raise DecryptionError()
            # The fields that stay in the clear may hold only what clear_fields
            # allows: a role, index or finish reason that carries other text
            # is a channel around the encryption, and is refused.
            problem = choice_problem(choice)
            if problem is not None:
                raise _malformed(problem)
            # Token log-probabilities would be the answer in plaintext.
            if not _empty(choice.get("logprobs")):
                raise DecryptionError()
            if "message" in choice and not _empty(choice["message"]):
                raise DecryptionError()  # a non-stream message inside a stream: never encrypted
            delta = choice.get("delta")
            if delta is None:
                continue
            if not isinstance(delta, dict):
                raise DecryptionError()
            for key, value in delta.items():
                if key in TEXT_FIELDS:
                    if _empty(value):
                        continue
                    if not isinstance(value, str) or not looks_like_envelope(value):
                        raise DecryptionError()  # plaintext where ciphertext is expected
                    if self._response_key is not None:
                        self._check_bound(value)
                    assert self._opener is not None
                    delta[key] = self._open(value)
                elif key == "role":
                    continue
                elif not _empty(value):
                    # tool_calls, refusal, function_call...: not part of E2EE,
                    # so they could only be plaintext. Refuse rather than show.
                    raise DecryptionError()

    def _check_bound(self, envelope: str) -> None:
        """An envelope of an authenticated stream: under the signed key, and new."""
        assert self._response_key is not None
        eph = envelope[:_KEY_HEX].lower()
        iv = envelope[_KEY_HEX:_IV_END].lower()
        if eph != self._response_key or iv in self._ivs:
            raise VerificationError(UNBOUND_CHUNK)
        self._ivs.add(iv)


#: The one message for an envelope the node's binding does not cover.
UNBOUND_CHUNK = "a response chunk is not sealed under the response key the attested node signed"
_KEY_HEX = 2 * PUB_LEN
_IV_END = _KEY_HEX + 2 * IV_LEN


def _malformed(field: str) -> APIError:
    """A chunk whose clear-text ``field`` breaks :mod:`enclaved.protocol.clear_fields` (never shows its value)."""
    return APIError(
        f"the server sent a malformed chunk ({field})", status=200, code="invalid_stream"
    )


def _stream_error(chunk: dict[str, Any], *, e2ee: bool = False) -> APIError:
    err = chunk.get("error")
    if e2ee and not (isinstance(err, dict) and err.get("type") in ERROR_TYPES):
        # Under E2EE the error's type must be a documented one: anything else
        # could be an engine's text relayed past the encryption.
        return _malformed("error.type")
    if isinstance(err, dict):
        message = err.get("message")
        return APIError(
            message if isinstance(message, str) else "the server reported an error",
            status=200,
            type=err.get("type") if isinstance(err.get("type"), str) else None,
            code=err.get("code") if isinstance(err.get("code"), str) else None,
            param=err.get("param") if isinstance(err.get("param"), str) else None,
            body=chunk,
        )
    text = err if isinstance(err, str) else "the server reported an error"
    return APIError(text, status=200, body=chunk)


__all__ = ["DONE_EVENT", "TEXT_FIELDS", "UNBOUND_CHUNK", "ResponseDecoder"]
