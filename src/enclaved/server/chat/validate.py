"""Steps 3-5 of the chat pipeline: a request body in, a :class:`Prepared` request out.

3. E2EE headers: all three or none, algorithm, client key (:func:`.e2ee.parse_headers`).
4. JSON object; ``model`` present and served (404); ``messages`` well formed;
   ``stream``, ``n``, ``venice_parameters`` and sampling parameters typed.
5. Under E2EE: the model supports it, ``enable_e2ee`` is not false, the
   pinned model key is this node's (421), ``stream`` is true, no unsupported
   feature, then every user/system content is opened (:mod:`.e2ee`).
   Without E2EE: ``enable_e2ee: true`` is refused (it would silently send
   plaintext), features the model lacks are refused, and the operator's
   system prompt is prepended unless ``include_venice_system_prompt`` is false.

Pure: :func:`prepare` reads nothing but its arguments and raises
:class:`~enclaved.server.errors.HTTPError`, so a worker thread may run it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ...protocol.errors import MSG_STREAMING_REQUIRED
from ..backends.base import Backend, ChatRequest
from ..config import ModelConfig
from ..errors import HTTPError, invalid_parameter, missing_parameter, model_not_found
from ..node import Node
from . import e2ee

__all__ = ["PREPARE_INLINE_BYTES", "Prepared", "prepare"]

#: Request bodies up to this size are validated and decrypted on the event
#: loop (at most ~70 envelopes, a few milliseconds); larger ones on a thread.
PREPARE_INLINE_BYTES = 16 * 1024

_ROLES = ("system", "user", "assistant", "tool", "developer", "function")

#: Sampling parameters handed to the backend (everything else is dropped).
_NUMBER_PARAMS = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "min_p",
    "repetition_penalty",
)
_INT_PARAMS = ("max_tokens", "max_completion_tokens", "seed", "top_k", "top_logprobs")
_PASS_PARAMS = (
    "stop",
    "logit_bias",
    "logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
)


class Prepared:
    """A validated, decrypted chat request, ready for the backend."""

    __slots__ = (
        "api_key_sha256",
        "backend",
        "body",
        "e2ee",
        "endpoint",
        "engine_error",
        "model",
        "request",
        "stream",
        "usage",
    )

    def __init__(
        self,
        model: ModelConfig,
        backend: Backend,
        request: ChatRequest,
        stream: bool,
        e2ee_headers: e2ee.E2EEHeaders | None,
        body: bytes,
    ) -> None:
        self.model = model
        self.backend = backend
        self.request = request
        self.stream = stream
        self.e2ee = e2ee_headers
        self.body = body
        #: For the metrics: the answer's usage once it is known, and the code
        #: of an engine failure.
        self.usage: dict[str, int] | None = None
        self.engine_error: str | None = None
        #: What the answer's ACI receipt names and is bound to: the path the
        #: request came on, and the SHA-256 of its API key (none when the node
        #: needs none). Set by the route.
        self.endpoint = "/v1/chat/completions"
        self.api_key_sha256: str | None = None


def prepare(node: Node, headers: Mapping[str, str], body: bytes) -> Prepared:
    """Steps 3-5. Pure: reads nothing but its arguments, raises :class:`HTTPError`."""
    # 3. E2EE headers need no body: checked first.
    e2ee_headers = e2ee.parse_headers(headers)

    # 4. The body.
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HTTPError(400, "Request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "Request body must be a JSON object", code="invalid_body")
    model_id = data.get("model")
    if model_id is None or model_id == "":
        raise missing_parameter("model")
    if not isinstance(model_id, str):
        raise invalid_parameter("model", "'model' must be a string")
    model = node.model(model_id)
    backend = node.backends.get(model_id)
    if model is None or backend is None:
        raise model_not_found(model_id)

    messages = _validate_messages(data.get("messages"))
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid_parameter("stream", "'stream' must be true or false")
    n = data.get("n", 1)
    if n is not None and n != 1:
        raise HTTPError(400, "Only n=1 is supported", code="unsupported_parameter", param="n")
    venice = data.get("venice_parameters")
    if venice is None:
        venice = {}
    if not isinstance(venice, dict):
        raise invalid_parameter("venice_parameters", "'venice_parameters' must be an object")
    for key in ("enable_e2ee", "include_venice_system_prompt"):
        if venice.get(key) is not None and not isinstance(venice[key], bool):
            raise invalid_parameter(
                f"venice_parameters.{key}", f"'venice_parameters.{key}' must be true or false"
            )
    params = _sampling_params(data)

    # 5. E2EE, or plain TEE use.
    if e2ee_headers is not None:
        if not model.e2ee:
            raise HTTPError(
                400,
                f"Model {model.id} does not support E2EE",
                code="e2ee_not_supported",
                param="model",
            )
        if venice.get("enable_e2ee") is False:
            raise HTTPError(
                400,
                "E2EE headers were sent but venice_parameters.enable_e2ee is false",
                code="e2ee_invalid_headers",
                param="venice_parameters.enable_e2ee",
            )
        e2ee.check_model_key(e2ee_headers, node.key)
        if stream is not True:
            raise HTTPError(
                400, MSG_STREAMING_REQUIRED, code="e2ee_streaming_required", param="stream"
            )
        e2ee.check_features(data, venice)
        messages = e2ee.RequestDecryptor(node.key).open_messages(messages)
        # Under E2EE: no operator system prompt, no web search, no tools (PROTOCOL.md).
    else:
        if venice.get("enable_e2ee") is True:
            raise HTTPError(
                400,
                "venice_parameters.enable_e2ee is true but the E2EE headers "
                "(X-Venice-TEE-Client-Pub-Key, X-Venice-TEE-Model-Pub-Key, "
                "X-Venice-TEE-Signing-Algo) are missing",
                code="e2ee_invalid_headers",
                param="venice_parameters.enable_e2ee",
            )
        messages = _plain_messages(model, messages, data, venice)
        system_prompt = node.config.system_prompt
        if system_prompt and venice.get("include_venice_system_prompt", True) is not False:
            messages = [{"role": "system", "content": system_prompt}, *messages]

    return Prepared(
        model, backend, ChatRequest(messages=messages, params=params), stream, e2ee_headers, body
    )


def _validate_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise missing_parameter("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_parameter("messages", "'messages' must be a non-empty array")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise invalid_parameter(where, f"'{where}' must be an object")
        role = msg.get("role")
        if role not in _ROLES:
            raise invalid_parameter(
                f"{where}.role", f"'{where}.role' must be one of {', '.join(_ROLES)}"
            )
        content = msg.get("content")
        if content is None:
            if role == "assistant":  # an assistant turn that only called tools
                continue
            raise invalid_parameter(
                f"{where}.content", f"'{where}.content' is required for role '{role}'"
            )
        if isinstance(content, list):
            if not content:
                # No parts, hence no envelope: under E2EE it would be a
                # plaintext message. OpenAI refuses it as well.
                raise invalid_parameter(
                    f"{where}.content", f"'{where}.content' must not be an empty array"
                )
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise invalid_parameter(
                        f"{where}.content[{j}]",
                        f"'{where}.content[{j}]' must be an object with a 'type'",
                    )
        elif not isinstance(content, str):
            raise invalid_parameter(
                f"{where}.content", f"'{where}.content' must be a string or an array of parts"
            )
    return messages


def _plain_messages(
    model: ModelConfig,
    messages: list[dict[str, Any]],
    data: Mapping[str, Any],
    venice: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Plain TEE use: refuse what the model cannot do; text parts become one string."""
    caps = model.capabilities
    if not caps.supports_function_calling:
        for key in ("tools", "functions"):
            if data.get(key):
                raise HTTPError(
                    400,
                    f"Function calling is not supported by model {model.id}",
                    code="unsupported_feature",
                    param=key,
                )
    web = venice.get("enable_web_search")
    if web in (True, "on") and not caps.supports_web_search:
        raise HTTPError(
            400,
            f"Web search is not supported by model {model.id}",
            code="unsupported_feature",
            param="venice_parameters.enable_web_search",
        )
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if not isinstance(content, list):
            out.append(msg)
            continue
        texts: list[str] = []
        for j, part in enumerate(content):
            kind = part["type"]
            if kind != "text":
                feature = e2ee.PART_FEATURES.get(kind, f"Content part type {kind!r}")
                raise HTTPError(
                    400,
                    f"{feature} is not supported by model {model.id}",
                    code="unsupported_feature",
                    param=f"messages[{i}].content[{j}]",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid_parameter(
                    f"messages[{i}].content[{j}].text",
                    f"'messages[{i}].content[{j}].text' must be a string",
                )
            texts.append(text)
        out.append({**msg, "content": "\n".join(texts)})
    return out


def _sampling_params(data: Mapping[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key in _NUMBER_PARAMS:
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_parameter(key, f"'{key}' must be a number")
        params[key] = value
    for key in _INT_PARAMS:
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_parameter(key, f"'{key}' must be an integer")
        if key in ("max_tokens", "max_completion_tokens") and value < 1:
            raise invalid_parameter(key, f"'{key}' must be at least 1")
        params[key] = value
    stop = data.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise invalid_parameter("stop", "'stop' must be a string or an array of strings")
    for key in _PASS_PARAMS:
        if data.get(key) is not None:
            params[key] = data[key]
    return params
