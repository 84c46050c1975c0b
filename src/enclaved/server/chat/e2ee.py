"""The E2EE request/response layer (PROTOCOL.md, "E2EE").

Request side, in this order (the chat pipeline calls the steps):

1. :func:`parse_headers`: the three ``X-Venice-TEE-*`` headers are all there
   or all absent (a header that is present with an empty value counts as
   present, so a half-configured client never falls back to plaintext); the
   algorithm is ``ecdsa``; the client key is 130 hex characters, ``04``, on
   secp256k1.
2. :func:`check_model_key`: the pinned model key is this node's key, else
   421 so the client refreshes its attestation.
3. :func:`check_features`: no function calling, web search, files, images,
   audio or logprobs under E2EE (each would put content in the clear or
   outside the enclave).
4. :class:`RequestDecryptor`: every ``user`` / ``system`` (and ``developer``,
   OpenAI's new name for system) content, string or text parts, is an
   envelope to the node key. Hex first, then decryption, then UTF-8, each
   with its own fixed message. Decryption failures never say which check
   failed.

Response side: :func:`new_sealer` makes one :class:`~enclaved.crypto.Sealer`
per response (one ephemeral key per response by default, a fresh IV per
chunk); the pipeline seals every non-empty ``delta.content`` and
``delta.reasoning_content`` with it, and signs that key's binding to the
request into the response headers (:func:`.rewrite.binding_headers`;
docs/server.md, "Authenticated E2EE streams").

Nothing here logs, and no message contains content.
"""

from __future__ import annotations

import dataclasses
import hmac
import re
from collections.abc import Mapping
from typing import Any

from coincurve import PublicKey

from ...crypto import KeyPair, Opener, Sealer
from ...crypto._primitives import parse_public_key
from ...errors import DecryptionError, InvalidKeyError
from ...protocol.errors import (
    CODE_STALE_KEY,
    MSG_BAD_ALGO,
    MSG_BAD_PUBLIC_KEY,
    MSG_DECRYPT_FAILED,
    MSG_HEADERS_TOGETHER,
    MSG_NOT_HEX,
    MSG_NOT_UTF8,
    MSG_STALE_KEY,
)
from ...protocol.headers import ALGO as ALGO_HEADER
from ...protocol.headers import CLIENT_KEY as CLIENT_KEY_HEADER
from ...protocol.headers import E2EE_HEADERS, ECDSA
from ...protocol.headers import MODEL_KEY as MODEL_KEY_HEADER
from ..errors import HTTPError

_HEADERS = tuple(h.lower() for h in E2EE_HEADERS)

_CLIENT_KEY = re.compile(r"04[0-9a-fA-F]{128}")

#: Roles whose content the client must encrypt.
ENCRYPTED_ROLES = frozenset({"user", "system", "developer"})


def _strict_unhex(value: Any) -> bytes | None:
    """The bytes of a string of hex digit pairs and nothing else, else ``None``.

    ``bytes.fromhex`` also skips whitespace between pairs: a result of
    exactly half the length proves it skipped nothing. (One C call: a
    regex over a prompt-sized envelope cost ~10 us per message.)
    """
    if not isinstance(value, str):
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return None
    return raw if 2 * len(raw) == len(value) else None


def _error(status: int, message: str, code: str, param: str | None = None) -> HTTPError:
    return HTTPError(status, message, code=code, param=param)


@dataclasses.dataclass(frozen=True)
class E2EEHeaders:
    """Validated E2EE request headers."""

    #: The client's session key, 65 bytes, uncompressed, on the curve.
    client_public_key: bytes
    #: The same key parsed (once: the response sealer needs the point).
    client_point: PublicKey = dataclasses.field(repr=False, compare=False)
    #: The model key the client pinned, as sent.
    model_public_key: str


def requested(headers: Mapping[str, str]) -> bool:
    """Whether any E2EE header is present (with any value, even empty)."""
    return any(h in headers for h in _HEADERS)


def parse_headers(headers: Mapping[str, str]) -> E2EEHeaders | None:
    """Steps 1a-1c. ``None`` when no E2EE header is present (plain TEE use).

    ``headers`` must look names up case-insensitively (Starlette's ``Headers``).
    """
    client, model, algo = (headers.get(h) for h in _HEADERS)
    present = [v is not None for v in (client, model, algo)]
    if not any(present):
        return None
    if not all(present):
        raise _error(400, MSG_HEADERS_TOGETHER, "e2ee_invalid_headers")
    assert client is not None and model is not None and algo is not None
    # 1b. Only ECDSA (secp256k1) exists in this protocol; case is not significant.
    if algo.strip().lower() != ECDSA:
        raise _error(400, MSG_BAD_ALGO, "e2ee_invalid_signing_algo", ALGO_HEADER)
    # 1c. Exactly the 130-hex uncompressed form the seed document prescribes, on the curve.
    client = client.strip()
    if not _CLIENT_KEY.fullmatch(client):
        raise _error(400, MSG_BAD_PUBLIC_KEY, "e2ee_invalid_public_key", CLIENT_KEY_HEADER)
    raw = bytes.fromhex(client)
    try:
        point = parse_public_key(raw)
    except InvalidKeyError:
        raise _error(
            400, MSG_BAD_PUBLIC_KEY, "e2ee_invalid_public_key", CLIENT_KEY_HEADER
        ) from None
    return E2EEHeaders(client_public_key=raw, model_public_key=model.strip(), client_point=point)


def _normalize_model_key(value: str) -> str:
    text = value.lower()
    text = text.removeprefix("0x")
    if len(text) == 128:  # the form without the 04 prefix (PROTOCOL.md "Keys")
        text = "04" + text
    return text


def check_model_key(e2ee: E2EEHeaders, node_key: KeyPair) -> None:
    """Step 2. Anything other than this node's key (any case, with or
    without ``04``) is 421: the client's attestation is for another node or
    an earlier key, and must be refreshed.
    """
    sent = _normalize_model_key(e2ee.model_public_key).encode()
    if not hmac.compare_digest(sent, node_key.public_key_hex.encode()):
        raise _error(421, MSG_STALE_KEY, CODE_STALE_KEY, MODEL_KEY_HEADER)


def _unsupported(feature: str, param: str) -> HTTPError:
    return _error(400, f"{feature} is not supported with E2EE", "e2ee_unsupported_feature", param)


#: The feature a refused content part type is named by (E2EE and plaintext models alike).
PART_FEATURES = {
    "image_url": "Image input",
    "input_image": "Image input",
    "file": "File upload",
    "input_file": "File upload",
    "input_audio": "Audio input",
}


def check_features(body: Mapping[str, Any], venice: Mapping[str, Any]) -> None:
    """Step 3: refuse every feature that E2EE cannot keep private.

    Call after the generic body validation (``messages`` is a list of objects).
    """
    for key in ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls"):
        if body.get(key) not in (None, [], {}):
            raise _unsupported("Function calling", key)
    web = venice.get("enable_web_search")
    if web not in (None, False, "off"):
        raise _unsupported("Web search", "venice_parameters.enable_web_search")
    if body.get("logprobs") or body.get("top_logprobs"):
        # Log probabilities carry the generated tokens in the clear.
        raise _unsupported("Logprobs", "logprobs")
    for i, msg in enumerate(body["messages"]):
        role = msg.get("role")
        if role in ("tool", "function") or msg.get("tool_calls") or msg.get("function_call"):
            raise _unsupported("Function calling", f"messages[{i}]")
        content = msg.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    continue
                feature = PART_FEATURES.get(kind) if isinstance(kind, str) else None
                raise _unsupported(
                    feature or f"Content part type {kind!r}", f"messages[{i}].content[{j}]"
                )


class RequestDecryptor:
    """Step 4: opens the envelopes of one request with the node key."""

    __slots__ = ("_opener",)

    def __init__(self, node_key: KeyPair) -> None:
        # One Opener per request: its key cache is per ephemeral key, and
        # clients use a fresh ephemeral key per message anyway.
        self._opener = Opener(node_key, cache_size=8)

    def open_field(self, value: Any, param: str) -> str:
        """One envelope -> its UTF-8 plaintext, or the protocol's fixed 400s."""
        raw = _strict_unhex(value)
        if raw is None:
            raise _error(400, MSG_NOT_HEX, "e2ee_invalid_hex", param)
        try:
            plaintext = self._opener.open(raw)
        except DecryptionError:
            raise _error(400, MSG_DECRYPT_FAILED, "e2ee_decryption_failed", param) from None
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise _error(400, MSG_NOT_UTF8, "e2ee_invalid_utf8", param) from None

    def open_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A copy of ``messages`` with every user/system/developer content decrypted.

        Assistant history stays as sent (PROTOCOL.md: it may stay plaintext).
        A list of text parts becomes one string, the parts joined with newlines.
        """
        out: list[dict[str, Any]] = []
        for i, msg in enumerate(messages):
            if msg.get("role") not in ENCRYPTED_ROLES:
                out.append(msg)
                continue
            content = msg.get("content")
            if isinstance(content, list):
                texts = [
                    self.open_field(part.get("text"), f"messages[{i}].content[{j}].text")
                    for j, part in enumerate(content)
                ]
                plain = "\n".join(texts)
            else:
                plain = self.open_field(content, f"messages[{i}].content")
            out.append({**msg, "content": plain})
        return out


def new_sealer(e2ee: E2EEHeaders, *, per_chunk: bool) -> Sealer:
    """The response sealer: one ephemeral key per response unless ``per_chunk``."""
    return Sealer(e2ee.client_point, per_chunk=per_chunk)
